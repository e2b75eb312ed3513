package placement

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Constraint operators.
const (
	// OpEqual holds when the node has the label with exactly Value.
	OpEqual = "="
	// OpNotEqual holds when the node lacks the label or has another value,
	// as Kubernetes' NotIn does.
	OpNotEqual = "!="
	// OpIn holds when the node has the label with one of the comma-separated
	// values in Value (spaces around each value are ignored).
	OpIn = "in"
)

// ErrInvalidConstraint is wrapped by Constraint.Validate errors.
var ErrInvalidConstraint = errors.New("invalid constraint")

// ErrInvalidJob is wrapped by Job.Validate errors.
var ErrInvalidJob = errors.New("invalid job")

// Constraint restricts a job to nodes whose labels match.
type Constraint struct {
	// Label is the node label to test.
	Label string
	// Op is OpEqual, OpNotEqual or OpIn.
	Op string
	// Value is the value to compare; for OpIn, a comma-separated list.
	Value string
}

// Validate reports whether the constraint can be evaluated: a non-empty
// label, a known operator and, for OpIn, a list with no empty value. Errors
// wrap ErrInvalidConstraint.
func (c Constraint) Validate() error {
	if c.Label == "" {
		return fmt.Errorf("%w: empty label", ErrInvalidConstraint)
	}
	switch c.Op {
	case OpEqual, OpNotEqual:
		return nil
	case OpIn:
		if strings.TrimSpace(c.Value) == "" {
			return fmt.Errorf("%w: %s: %q needs at least one value", ErrInvalidConstraint, c.Label, OpIn)
		}
		for _, v := range strings.Split(c.Value, ",") {
			if strings.TrimSpace(v) == "" {
				return fmt.Errorf("%w: %s in %q: empty value in list", ErrInvalidConstraint, c.Label, c.Value)
			}
		}
		return nil
	}
	return fmt.Errorf("%w: %s: unknown operator %q (want %q, %q or %q)",
		ErrInvalidConstraint, c.Label, c.Op, OpEqual, OpNotEqual, OpIn)
}

// String renders the constraint as an operator would write it:
// "zone=a", "zone!=a" or "zone in a,b".
func (c Constraint) String() string {
	if c.Op == OpIn {
		return c.Label + " in " + c.Value
	}
	return c.Label + c.Op + c.Value
}

// Matches reports whether a node with these labels satisfies the constraint.
// An invalid constraint matches nothing.
func (c Constraint) Matches(labels map[string]string) bool {
	m, err := compileConstraint(c)
	return err == nil && m.matches(labels)
}

// Validate reports whether the job can be placed at all: a non-empty ID, 0 to
// MaxReplicas replicas, non-negative resources and valid constraints. Errors wrap
// ErrInvalidJob (and ErrInvalidConstraint for a bad constraint).
func (j Job) Validate() error {
	if j.ID == "" {
		return fmt.Errorf("%w: empty ID", ErrInvalidJob)
	}
	if j.Replicas < 0 || j.Replicas > MaxReplicas {
		return fmt.Errorf("%w: %s: replicas %d not in 0..%d", ErrInvalidJob, j.ID, j.Replicas, MaxReplicas)
	}
	if j.CPUMillis < 0 {
		return fmt.Errorf("%w: %s: cpu %d millis is negative", ErrInvalidJob, j.ID, j.CPUMillis)
	}
	if j.MemoryMB < 0 {
		return fmt.Errorf("%w: %s: memory %d MB is negative", ErrInvalidJob, j.ID, j.MemoryMB)
	}
	for i, c := range j.Constraints {
		if err := c.Validate(); err != nil {
			return fmt.Errorf("%w: %s: constraint %d: %w", ErrInvalidJob, j.ID, i, err)
		}
	}
	return nil
}

// matcher is a validated constraint, ready to test node labels.
type matcher struct {
	label  string
	op     string
	values []string // sorted, deduplicated; one value for = and !=
}

func compileConstraint(c Constraint) (matcher, error) {
	if err := c.Validate(); err != nil {
		return matcher{}, err
	}
	m := matcher{label: c.Label, op: c.Op, values: []string{c.Value}}
	if c.Op == OpIn {
		vals := strings.Split(c.Value, ",")
		for i := range vals {
			vals[i] = strings.TrimSpace(vals[i])
		}
		slices.Sort(vals)
		m.values = slices.Compact(vals)
	}
	return m, nil
}

func (m matcher) matches(labels map[string]string) bool {
	v, ok := labels[m.label]
	switch m.op {
	case OpEqual:
		return ok && v == m.values[0]
	case OpNotEqual:
		return !ok || v != m.values[0]
	default: // OpIn
		return ok && slices.Contains(m.values, v)
	}
}

// key is a canonical, unambiguous encoding (every part quoted): two
// matchers with equal keys select the same nodes.
func (m matcher) key() string {
	var b strings.Builder
	b.WriteString(strconv.Quote(m.label))
	b.WriteString(m.op)
	for _, v := range m.values {
		b.WriteString(strconv.Quote(v))
	}
	return b.String()
}

// constraintSet is a job's compiled constraints in canonical order.
type constraintSet struct {
	matchers []matcher
	key      string // "" for no constraints
}

func compileConstraints(cs []Constraint) (constraintSet, error) {
	if len(cs) == 0 {
		return constraintSet{}, nil
	}
	ms := make([]matcher, 0, len(cs))
	for _, c := range cs {
		m, err := compileConstraint(c)
		if err != nil {
			return constraintSet{}, err
		}
		ms = append(ms, m)
	}
	slices.SortFunc(ms, func(a, b matcher) int { return strings.Compare(a.key(), b.key()) })
	ms = slices.CompactFunc(ms, func(a, b matcher) bool { return a.key() == b.key() })
	keys := make([]string, len(ms))
	for i, m := range ms {
		keys[i] = m.key()
	}
	return constraintSet{matchers: ms, key: strings.Join(keys, ";")}, nil
}

func (s constraintSet) matches(labels map[string]string) bool {
	for _, m := range s.matchers {
		if !m.matches(labels) {
			return false
		}
	}
	return true
}
