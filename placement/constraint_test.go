package placement

import (
	"errors"
	"testing"
)

func TestConstraintMatches(t *testing.T) {
	labels := map[string]string{"zone": "a", "disk": "ssd", "empty": ""}
	tests := []struct {
		c    Constraint
		want bool
	}{
		{Constraint{"zone", OpEqual, "a"}, true},
		{Constraint{"zone", OpEqual, "b"}, false},
		{Constraint{"rack", OpEqual, "a"}, false}, // absent label never equals
		{Constraint{"empty", OpEqual, ""}, true},
		{Constraint{"rack", OpEqual, ""}, false}, // absent is not empty
		{Constraint{"zone", OpNotEqual, "a"}, false},
		{Constraint{"zone", OpNotEqual, "b"}, true},
		{Constraint{"rack", OpNotEqual, "a"}, true}, // absent label is "not a"
		{Constraint{"zone", OpIn, "a"}, true},
		{Constraint{"zone", OpIn, "b,a"}, true},
		{Constraint{"zone", OpIn, " b , a "}, true}, // spaces around values ignored
		{Constraint{"zone", OpIn, "b,c"}, false},
		{Constraint{"rack", OpIn, "a,b"}, false}, // absent label is in no list
		{Constraint{"zone", "==", "a"}, false},   // invalid matches nothing
		{Constraint{"", OpNotEqual, "a"}, false},
	}
	for _, tt := range tests {
		if got := tt.c.Matches(labels); got != tt.want {
			t.Errorf("%q.Matches(%v) = %v, want %v", tt.c, labels, got, tt.want)
		}
	}
}

func TestConstraintValidate(t *testing.T) {
	tests := []struct {
		c     Constraint
		valid bool
	}{
		{Constraint{"zone", OpEqual, "a"}, true},
		{Constraint{"zone", OpEqual, ""}, true}, // labels may have empty values
		{Constraint{"zone", OpNotEqual, "a"}, true},
		{Constraint{"zone", OpIn, "a"}, true},
		{Constraint{"zone", OpIn, "a, b,c"}, true},
		{Constraint{"", OpEqual, "a"}, false},
		{Constraint{"zone", "", "a"}, false},
		{Constraint{"zone", "==", "a"}, false},
		{Constraint{"zone", "IN", "a"}, false},
		{Constraint{"zone", "not_in", "a"}, false},
		{Constraint{"zone", OpIn, ""}, false},
		{Constraint{"zone", OpIn, " "}, false},
		{Constraint{"zone", OpIn, "a,,b"}, false},
		{Constraint{"zone", OpIn, "a,"}, false},
	}
	for _, tt := range tests {
		err := tt.c.Validate()
		if (err == nil) != tt.valid {
			t.Errorf("%+v.Validate() = %v, want valid=%v", tt.c, err, tt.valid)
		}
		if err != nil && !errors.Is(err, ErrInvalidConstraint) {
			t.Errorf("%+v.Validate() = %v, does not wrap ErrInvalidConstraint", tt.c, err)
		}
	}
}

func TestConstraintStringReadsLikeTheSpec(t *testing.T) {
	for c, want := range map[Constraint]string{
		{"zone", OpEqual, "a"}:    "zone=a",
		{"zone", OpNotEqual, "a"}: "zone!=a",
		{"zone", OpIn, "a,b"}:     "zone in a,b",
	} {
		if got := c.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
}

func TestJobValidate(t *testing.T) {
	ok := Job{ID: "web", Replicas: 2, CPUMillis: 100, MemoryMB: 64}
	tests := []struct {
		name   string
		mutate func(*Job)
		is     []error
	}{
		{"valid", func(*Job) {}, nil},
		{"zero replicas is valid", func(j *Job) { j.Replicas = 0 }, nil},
		{"zero resources are valid", func(j *Job) { j.CPUMillis, j.MemoryMB = 0, 0 }, nil},
		{"empty ID", func(j *Job) { j.ID = "" }, []error{ErrInvalidJob}},
		{"negative replicas", func(j *Job) { j.Replicas = -1 }, []error{ErrInvalidJob}},
		{"negative cpu", func(j *Job) { j.CPUMillis = -1 }, []error{ErrInvalidJob}},
		{"negative memory", func(j *Job) { j.MemoryMB = -1 }, []error{ErrInvalidJob}},
		{"bad constraint", func(j *Job) { j.Constraints = []Constraint{{"zone", "~", "a"}} },
			[]error{ErrInvalidJob, ErrInvalidConstraint}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := ok
			tt.mutate(&j)
			err := j.Validate()
			if (err == nil) != (tt.is == nil) {
				t.Fatalf("Validate() = %v, want error %v", err, tt.is)
			}
			for _, target := range tt.is {
				if !errors.Is(err, target) {
					t.Errorf("Validate() = %v, does not wrap %v", err, target)
				}
			}
		})
	}
}

func TestConstraintOrderAndDuplicatesDoNotChangeTheGroup(t *testing.T) {
	a, err := compileConstraints([]Constraint{{"zone", OpIn, "b,a"}, {"disk", OpEqual, "ssd"}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := compileConstraints([]Constraint{{"disk", OpEqual, "ssd"}, {"zone", OpIn, "a, b, a"}, {"disk", OpEqual, "ssd"}})
	if err != nil {
		t.Fatal(err)
	}
	if a.key != b.key {
		t.Errorf("keys differ for equivalent constraint sets:\n%q\n%q", a.key, b.key)
	}
	c, _ := compileConstraints([]Constraint{{"zone", OpIn, "a,b"}, {"disk", OpEqual, "hdd"}})
	if a.key == c.key {
		t.Errorf("different constraint sets share key %q", a.key)
	}
}
