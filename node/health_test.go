package node

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/placement"
	"github.com/shoalmesh/shoal/runtime"
)

// fakeExecer records the commands a prober runs inside tasks.
type fakeExecer struct {
	out  string
	err  error
	runs []string
}

func (f *fakeExecer) ExecIn(_ context.Context, id string, argv []string) ([]byte, error) {
	f.runs = append(f.runs, id+": "+strings.Join(argv, " "))
	return []byte(f.out), f.err
}

func TestExecHealthChecksRunInsideTheTask(t *testing.T) {
	ex := &fakeExecer{}
	p := newProber(make(chan struct{}, 1), ex, nil)
	hc := api.HealthCheck{Exec: []string{"/check", "--quick"}}
	// No network namespace path: the check must not go near one.
	if err := p.probe(context.Background(), "web-0", "", hc); err != nil {
		t.Fatalf("passing check: %v", err)
	}
	if want := []string{"web-0: /check --quick"}; !reflect.DeepEqual(ex.runs, want) {
		t.Fatalf("ran %q, want %q", ex.runs, want)
	}
	ex.out, ex.err = "  database unreachable\n"+strings.Repeat("x", 500), &runtime.ExitError{Code: 2}
	err := p.probe(context.Background(), "web-0", "", hc)
	var ee *runtime.ExitError
	if !errors.As(err, &ee) || ee.Code != 2 || !strings.Contains(err.Error(), "exit status 2: database unreachable") || len(err.Error()) > 300 {
		t.Fatalf("failing check = %v, want the exit status and at most 200 bytes of output", err)
	}
}

func TestTaskSpecPassesPidsAndCapabilities(t *testing.T) {
	r := &reconciler{deps: reconcileDeps{self: "n1"}}
	job := api.Job{ID: "web", Task: api.Task{
		Driver: api.DriverContainerd, Image: "hello:1",
		Resources: api.Resources{CPUMillis: 100, MemoryMB: 64, Pids: 77},
		CapAdd:    []string{"NET_RAW"},
	}}
	spec, err := r.taskSpec(job, placement.Replica{Index: 2})
	if err != nil {
		t.Fatal(err)
	}
	if spec.Pids != 77 || !reflect.DeepEqual(spec.CapAdd, []string{"NET_RAW"}) || spec.ID != "web-2" {
		t.Fatalf("task spec %+v, want pids 77 and cap add NET_RAW", spec)
	}
}
