package runtime

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// helperAgentEnv makes the test binary act as a short-lived agent: it
// opens a driver, starts tasks and exits without closing the driver, the
// way a crashed or upgraded agent leaves its tasks behind.
const helperAgentEnv = "SHOAL_RUNTIME_TEST_AGENT"

type helperAgentArgs struct {
	StateDir, Namespace string
	Tasks               []TaskSpec
}

func TestMain(m *testing.M) {
	if raw := os.Getenv(helperAgentEnv); raw != "" {
		os.Exit(runHelperAgent(raw))
	}
	os.Exit(m.Run())
}

func runHelperAgent(raw string) int {
	var args helperAgentArgs
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	e, err := NewExec(ExecConfig{StateDir: args.StateDir, Namespace: args.Namespace})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for _, spec := range args.Tasks {
		if _, err := e.Start(context.Background(), spec); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	return 0 // no Close: the process just ends
}

func TestTasksOutliveTheirAgentAndAreAdopted(t *testing.T) {
	ns := testNamespace(t)
	dir := t.TempDir()
	raw, err := json.Marshal(helperAgentArgs{StateDir: dir, Namespace: ns, Tasks: []TaskSpec{
		sleepSpec("keep-0"),
		// Runs until the test creates "go" in its working directory.
		shSpec("brief-0", "while [ ! -e go ]; do sleep 0.05; done"),
	}})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperAgentEnv+"="+string(raw))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper agent: %v\n%s", err, out)
	}

	d := openDriver(t, ns, dir, time.Second)
	keep, err := d.Status(context.Background(), "keep-0")
	if err != nil || keep.State != StateRunning {
		t.Fatalf("keep-0 after its agent exited: %+v, %v; want running", keep, err)
	}
	st, err := readProcStat(keep.PID)
	if err != nil {
		t.Fatal(err)
	}
	if st.PPID == os.Getpid() || st.PPID == cmd.Process.Pid {
		t.Fatalf("keep-0's parent is %d; want it reparented away from its dead agent", st.PPID)
	}
	// brief-0 ends while adopted: the driver notices without being its
	// parent, so the code is unknown.
	brief, err := d.Status(context.Background(), "brief-0")
	if err != nil || brief.State != StateRunning {
		t.Fatalf("brief-0 after its agent exited: %+v, %v; want running", brief, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "work", "brief-0", "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if brief := d.waitState("brief-0", StateExited); brief.ExitCode != -1 {
		t.Fatalf("brief-0 exit code %d, want -1 (not our child)", brief.ExitCode)
	}
	if err := d.Stop(context.Background(), "keep-0"); err != nil {
		t.Fatal(err)
	}
	if !pidGone(keep.PID) || exists(keep.NetNS) {
		t.Fatal("Stop of an adopted task left its process or netns")
	}
	if err := d.Stop(context.Background(), "brief-0"); err != nil {
		t.Fatal(err)
	}
}
