package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/client"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/devcluster"
	"github.com/shoalmesh/shoal/runtime/containerdtest"
)

func TestImageBuildRejectsBadInputWithClearErrors(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "app.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.tar")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"image", "build", "--ref", "x:1", "-o", out}, `"binary" not set`},
		{[]string{"image", "build", "--binary", filepath.Join(dir, "nope"), "--ref", "x:1", "-o", out}, "no such file or directory"},
		{[]string{"image", "build", "--binary", script, "--ref", "x:1", "-o", out}, "not an ELF executable"},
		{[]string{"image", "build", "--binary", "/bin/sh", "--ref", "x:1", "-o", out}, "dynamically linked"},
		{[]string{"image", "build", "--binary", script, "--ref", "no spaces:1", "-o", out}, `image reference "no spaces:1"`},
		{[]string{"image", "build", "--binary", script, "--ref", "x:1", "--env", "NOVALUE", "-o", out}, "want KEY=VALUE"},
		{[]string{"dev", "up", "--name", "Bad-Name"}, "use only lowercase letters and digits"},
		{[]string{"dev", "down", "--name", "waytoolongname"}, "longer than 8"},
	} {
		err := runCLI(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("shoal %s: got %v, want error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a failed build left an archive")
	}
}

// The tests below run the real `shoal dev` as root: namespaces, a private
// containerd, agents. Each cluster has a random name and subnet, and
// t.Cleanup runs `dev down` for it also when the test fails.

func TestDevUpRunsAClusterAndDownLeavesNothingBehind(t *testing.T) {
	d := newDevTest(t)
	archive := d.helloImage()

	out := d.up("--nodes", "2", "--image", archive)
	for _, want := range []string{"2 nodes alive after", "loaded shoal.dev/hello:1 on n1, n2", "started for this cluster", "source " + d.dir + "/env"} {
		if !strings.Contains(out, want) {
			t.Errorf("dev up output lacks %q:\n%s", want, out)
		}
	}

	fi, err := os.Stat(filepath.Join(d.dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("env file mode %v, want 0600 (it names the credentials)", fi.Mode().Perm())
	}
	for _, f := range []string{"gossip.key", "api.token", "api-read.token", "ca.key"} {
		if fi, err := os.Stat(filepath.Join(d.dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("credential %s: %v, mode %v; want a 0600 file", f, err, fi.Mode().Perm())
		}
	}
	raw, _ := os.ReadFile(filepath.Join(d.dir, "env"))
	env := devcluster.ParseEnvFile(string(raw))
	if env.Addr != d.nodeIP(1)+":7700" || env.TokenFile != filepath.Join(d.dir, "api.token") || env.CACert != filepath.Join(d.dir, "ca.pem") {
		t.Fatalf("env file: %+v\n%s", env, raw)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The API serves HTTPS only: plain HTTP is refused.
	if _, err := api.NewClient(env.Addr, "", nil).Health(ctx); !errors.Is(err, api.ErrAgentWantsHTTPS) {
		t.Errorf("plain HTTP to n1: got %v, want %v", err, api.ErrAgentWantsHTTPS)
	}
	for i := 1; i <= 2; i++ {
		cl, err := env.Client(d.nodeIP(i) + ":7700")
		if err != nil {
			t.Fatal(err)
		}
		nodes, err := cl.Nodes(ctx)
		if err != nil {
			t.Fatalf("node n%d API: %v", i, err)
		}
		alive := 0
		for _, n := range nodes {
			if n.Status == "alive" {
				alive++
			}
		}
		if alive != 2 {
			t.Errorf("node n%d sees %d alive members, want 2: %+v", i, alive, nodes)
		}
		imgs, err := cl.Images(ctx)
		if err != nil {
			t.Fatalf("images of n%d: %v", i, err)
		}
		if !slices.ContainsFunc(imgs, func(img api.Image) bool { return img.Name == "shoal.dev/hello:1" }) {
			t.Errorf("node n%d lacks shoal.dev/hello:1: %+v", i, imgs)
		}
	}

	// Replicas of both drivers, so down has containers, shims, task
	// namespaces and cgroups to remove.
	cl, err := env.Client(env.Addr)
	if err != nil {
		t.Fatal(err)
	}
	two := 2
	for _, j := range []api.Job{
		{ID: "hello", Replicas: &two, Task: api.Task{Driver: "containerd", Image: "shoal.dev/hello:1",
			Resources: api.Resources{CPUMillis: 50, MemoryMB: 32}}},
		{ID: "sleeper", Replicas: &two, Task: api.Task{Driver: "exec", Command: []string{"/bin/sleep", "1000"},
			Resources: api.Resources{CPUMillis: 50, MemoryMB: 16}}},
	} {
		j.ApplyDefaults()
		if _, err := cl.PutJob(ctx, j); err != nil {
			t.Fatalf("submit %s: %v", j.ID, err)
		}
	}
	for _, id := range []string{"hello", "sleeper"} {
		deadline := time.Now().Add(60 * time.Second)
		for {
			st, err := cl.Job(ctx, id)
			running := 0
			for _, a := range st.Allocations {
				if a.State == "running" {
					running++
				}
			}
			if err == nil && running == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("job %s: %d of 2 replicas running after 60s (err %v): %+v", id, running, err, st.Allocations)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if nss := d.namespaces(); len(nss) != 3+4 {
		t.Errorf("want 3 cluster and 4 task namespaces, got %v", nss)
	}

	status := d.shoal("dev", "status", "--name", d.name)
	for _, want := range []string{"shoal-" + d.name + "-hub", "shoal-" + d.name + "-n2", "(answering, started by dev up)", "alive"} {
		if !strings.Contains(status, want) {
			t.Errorf("dev status lacks %q:\n%s", want, status)
		}
	}
	if strings.Count(status, "running, pid") != 2 {
		t.Errorf("dev status does not show 2 running agents:\n%s", status)
	}

	if out, err := d.run("dev", "up", "--name", d.name, "--subnet", d.subnet); err == nil || !strings.Contains(out, "already up") {
		t.Errorf("a second dev up of the same cluster: err %v, output:\n%s", err, out)
	}

	down := d.shoal("dev", "down", "--name", d.name)
	if !strings.Contains(down, "dev cluster "+d.name+" removed") {
		t.Errorf("dev down output:\n%s", down)
	}
	d.assertNothingLeft()
	if again := d.shoal("dev", "down", "--name", d.name); !strings.Contains(again, "nothing to remove") {
		t.Errorf("second dev down:\n%s", again)
	}
}

func TestDevDownLeavesAContainerdItDidNotStart(t *testing.T) {
	d := newDevTest(t)
	daemon := containerdtest.Start(t)
	out := d.shoal("dev", "up", "--name", d.name, "--subnet", d.subnet, "--nodes", "1",
		"--containerd", daemon.Address, "--image", d.helloImage())
	if !strings.Contains(out, "containerd: "+daemon.Address+" (given)") {
		t.Errorf("dev up did not use the given containerd:\n%s", out)
	}
	ns := "shoal-" + d.name + "-n1"
	if !slices.Contains(containerdNamespaces(t, daemon.Address), ns) {
		t.Fatalf("namespace %s not in the given containerd", ns)
	}
	d.shoal("dev", "down", "--name", d.name)
	d.assertNothingLeft()
	// Still serving (down did not stop it), without the node's namespace.
	if nss := containerdNamespaces(t, daemon.Address); slices.Contains(nss, ns) {
		t.Errorf("namespace %s left in the given containerd: %v", ns, nss)
	}
}

func containerdNamespaces(t *testing.T, sock string) []string {
	t.Helper()
	cl, err := client.New(sock, client.WithTimeout(5*time.Second))
	if err != nil {
		t.Fatalf("connect to containerd at %s: %v", sock, err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nss, err := cl.NamespaceService().List(ctx)
	if err != nil {
		t.Fatalf("list containerd namespaces: %v", err)
	}
	return nss
}

func TestDevUpThatFailsRemovesWhatItMade(t *testing.T) {
	d := newDevTest(t)
	// Every agent refuses the flag and exits: Up fails after making the
	// network, a containerd and the agents.
	out, err := d.run("dev", "up", "--name", d.name, "--subnet", d.subnet, "--nodes", "2",
		"--private-containerd", "--agent-arg=--no-such-flag")
	if err == nil {
		t.Fatalf("dev up with a bad agent flag succeeded:\n%s", out)
	}
	for _, want := range []string{"exited", "no-such-flag", "removing what it made"} {
		if !strings.Contains(out, want) {
			t.Errorf("dev up output lacks %q:\n%s", want, out)
		}
	}
	d.assertNothingLeft()
}

func TestDevDownRemovesAnUpKilledHalfway(t *testing.T) {
	d := newDevTest(t)
	cmd := exec.Command(d.bin, "dev", "up", "--name", d.name, "--subnet", d.subnet, "--nodes", "2",
		"--private-containerd")
	logf, err := os.Create(filepath.Join(t.TempDir(), "up.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Kill it (no chance to clean up) once the agents run: namespaces, a
	// containerd and agents are left for down to find.
	deadline := time.Now().Add(60 * time.Second)
	for !fileExists(filepath.Join(d.dir, "n2.pid")) {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			raw, _ := os.ReadFile(logf.Name())
			t.Fatalf("dev up never started its agents:\n%s", raw)
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
	if nss := d.namespaces(); len(nss) == 0 {
		t.Fatal("the killed dev up left no namespaces: the test did not interrupt it")
	}
	out := d.shoal("dev", "down", "--name", d.name)
	if !strings.Contains(out, "removed") {
		t.Errorf("dev down output:\n%s", out)
	}
	d.assertNothingLeft()
}

// devTest is one randomly named cluster and the shoal binary to drive it.
type devTest struct {
	t      *testing.T
	bin    string
	name   string
	subnet string
	third  int // the subnet's third octet
	dir    string
}

func newDevTest(t *testing.T) *devTest {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("shoal dev needs root (network namespaces)")
	}
	for _, tool := range []string{"ip", "nsenter", "containerd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("shoal dev needs %s", tool)
		}
	}
	d := &devTest{t: t, bin: shoalBinary(t)}
	// A name and subnet nobody uses: concurrent runs pick others.
	for {
		d.name = fmt.Sprintf("t%04d", rand.IntN(10000))
		d.third = rand.IntN(256)
		d.subnet = fmt.Sprintf("10.97.%d.0/24", d.third)
		if !fileExists(devcluster.DefaultDir(d.name)) && !routed(d.subnet) {
			break
		}
	}
	d.dir = devcluster.DefaultDir(d.name)
	t.Cleanup(func() {
		out, err := d.run("dev", "down", "--name", d.name)
		if err != nil {
			t.Errorf("cleanup: dev down: %v\n%s", err, out)
		}
	})
	return d
}

func (d *devTest) nodeIP(i int) string { return fmt.Sprintf("10.97.%d.%d", d.third, 10+i) }

// run runs the shoal binary and returns its combined output.
func (d *devTest) run(args ...string) (string, error) {
	out, err := exec.Command(d.bin, args...).CombinedOutput()
	return string(out), err
}

// shoal runs the shoal binary and fails the test if it fails.
func (d *devTest) shoal(args ...string) string {
	d.t.Helper()
	out, err := d.run(args...)
	if err != nil {
		d.t.Fatalf("shoal %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (d *devTest) up(args ...string) string {
	d.t.Helper()
	return d.shoal(append([]string{"dev", "up", "--name", d.name, "--subnet", d.subnet, "--private-containerd"}, args...)...)
}

// helloImage builds examples/hello and packages it with `shoal image build`.
func (d *devTest) helloImage() string {
	d.t.Helper()
	dir := d.t.TempDir()
	bin := filepath.Join(dir, "hello")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "../../examples/hello")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		d.t.Fatalf("build examples/hello: %v\n%s", err, out)
	}
	archive := filepath.Join(dir, "hello.tar")
	d.shoal("image", "build", "--binary", bin, "--ref", "shoal.dev/hello:1", "-o", archive)
	return archive
}

// namespaces lists every network namespace of the cluster, its tasks' too.
func (d *devTest) namespaces() []string {
	d.t.Helper()
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		d.t.Fatalf("ip netns list: %v", err)
	}
	var found []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && (strings.HasPrefix(f[0], "shoal-"+d.name+"-") || strings.HasPrefix(f[0], "shoal-shoal-"+d.name+"-")) {
			found = append(found, f[0])
		}
	}
	return found
}

// assertNothingLeft checks that no trace of the cluster is on the machine.
func (d *devTest) assertNothingLeft() {
	t := d.t
	t.Helper()
	if nss := d.namespaces(); len(nss) > 0 {
		t.Errorf("namespaces left: %v", nss)
	}
	if _, err := net.InterfaceByName("shoal-" + d.name + "0"); err == nil {
		t.Errorf("host link shoal-%s0 left", d.name)
	}
	if routed(d.subnet) {
		t.Errorf("a route to %s is left", d.subnet)
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		cmd := strings.ReplaceAll(string(raw), "\x00", " ")
		if strings.Contains(cmd, d.dir) || strings.Contains(cmd, "shoal-"+d.name+"-n") {
			t.Errorf("process %d left: %s", pid, cmd)
		}
	}
	if _, err := os.Lstat(d.dir); err == nil {
		t.Errorf("cluster directory %s left", d.dir)
	}
	cgroups, _ := filepath.Glob("/sys/fs/cgroup/*/shoal/shoal-" + d.name + "-*")
	if len(cgroups) > 0 {
		t.Errorf("cgroups left: %v", cgroups)
	}
	raw, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(raw), d.dir) {
		t.Errorf("mounts under %s left", d.dir)
	}
}

// routed reports whether the host has a route into subnet.
func routed(subnet string) bool {
	out, _ := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	prefix := strings.TrimSuffix(subnet, "0/24")
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		for _, w := range f {
			if strings.HasPrefix(w, prefix) {
				return true
			}
		}
	}
	return false
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// shoalBinary is $SHOAL_BIN (make test sets it) or a fresh build.
func shoalBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("SHOAL_BIN"); b != "" {
		abs, err := filepath.Abs(b)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	bin := filepath.Join(t.TempDir(), "shoal")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build shoal: %v\n%s", err, out)
	}
	return bin
}
