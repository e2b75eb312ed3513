// Package e2e runs real shoal agents in network namespaces joined by a
// bridge that lives in a namespace of its own. Tests need root and the ip
// command; without root they are skipped.
package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/node"
	shoalrt "github.com/shoalmesh/shoal/runtime"
)

// nsPrefix marks namespaces made by this package; the owning test process's
// pid follows it so a later run can remove leftovers of a crashed one.
const nsPrefix = "se2e"

// Cluster is a set of agents, each in its own network namespace, joined by a
// bridge in a hub namespace. Everything is removed when the test ends,
// also when it fails.
type Cluster struct {
	t   *testing.T
	id  string
	hub string
	// Creds are the cluster's credential files, made like `shoal keygen
	// --dir` makes them; agents get them as files, never in argv. Key,
	// Token and ReadToken are their values, for tests to compare with.
	Creds     node.Credentials
	Key       string
	Token     string
	ReadToken string
	// CAFile is the cluster CA's certificate, which every client trusts.
	CAFile string
	caPool *x509.CertPool
	Binary string
	Nodes  []*Node
	// dir holds the nodes' data; removed by teardown after the agents are
	// dead (a t.TempDir would be removed before, while they still write).
	dir string

	mu       sync.Mutex
	closeOne sync.Once
}

// Node is one agent process and its namespace.
type Node struct {
	c       *Cluster
	Name    string
	NS      string
	IP      string
	DataDir string
	LogPath string
	Args    []string
	cmd     *exec.Cmd
	exited  chan struct{}
	exitErr error
}

// Binary returns the shoal binary under test: $SHOAL_BIN or one built once.
var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

func binary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("SHOAL_BIN"); b != "" {
		abs, err := filepath.Abs(b)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "shoal")
		out, err := exec.Command("go", "build", "-o", builtBin, "../cmd/shoal").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("build shoal: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// RequireRoot skips the test unless it can create namespaces.
func RequireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("e2e tests need root (network namespaces)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("e2e tests need the ip command (iproute2)")
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NewCluster creates the hub namespace and bridge. Nodes are added with
// AddNode.
func NewCluster(t *testing.T) *Cluster {
	t.Helper()
	RequireRoot(t)
	c := &Cluster{
		t:      t,
		id:     fmt.Sprintf("%s%d-%s", nsPrefix, os.Getpid(), randomHex(3)),
		Binary: binary(t),
	}
	c.hub = c.id + "-hub"
	dir, err := os.MkdirTemp("", "shoal-e2e-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	c.dir = dir
	t.Cleanup(c.Close)
	c.Creds, err = node.GenerateCredentials(filepath.Join(dir, "credentials"), false, time.Now())
	if err != nil {
		t.Fatalf("make the cluster's credentials: %v", err)
	}
	c.Key, c.Token, c.ReadToken = c.Creds.GossipKey, c.Creds.APIToken, c.Creds.APIReadToken
	c.CAFile = c.Creds.Path(node.CACertFile)
	if c.caPool, err = api.LoadCACert(c.CAFile); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{
		{"ip", "netns", "add", c.hub},
		{"ip", "-n", c.hub, "link", "set", "lo", "up"},
		{"ip", "-n", c.hub, "link", "add", "br0", "type", "bridge"},
		{"ip", "-n", c.hub, "link", "set", "br0", "up"},
		// The hub is also a client outside the cluster (node ports).
		{"ip", "-n", c.hub, "addr", "add", "10.99.0.1/24", "dev", "br0"},
	} {
		if err := run(cmd...); err != nil {
			t.Fatalf("create hub: %v", err)
		}
	}
	return c
}

// NodeOption changes how a node's agent is started.
type NodeOption func(*Node)

// WithArgs appends agent flags (later flags win over the defaults). A
// credential flag among them (--gossip-key, --api-token, ...) replaces the
// cluster's file for that credential.
func WithArgs(args ...string) NodeOption {
	return func(n *Node) { n.Args = append(n.Args, args...) }
}

// credentialArgs are the flags giving an agent the cluster's credential
// files, less those the options' own args give otherwise.
func (c *Cluster) credentialArgs(optArgs []string) []string {
	given := map[string]bool{}
	for _, a := range optArgs {
		name, _, _ := strings.Cut(a, "=")
		given[name] = true
	}
	var args []string
	for _, f := range []struct{ flag, alt, file string }{
		{"--gossip-key-file", "--gossip-key", node.GossipKeyFile},
		{"--api-token-file", "--api-token", node.APITokenFile},
		{"--api-read-token-file", "", node.APIReadTokenFile},
		{"--tls-ca", "", node.CACertFile},
		{"--tls-ca-key", "", node.CAKeyFile},
	} {
		if !given[f.flag] && (f.alt == "" || !given[f.alt]) {
			args = append(args, f.flag, c.Creds.Path(f.file))
		}
	}
	return args
}

// AddNode creates a namespace wired to the bridge and starts an agent in it.
// Every node after the first joins the first.
func (c *Cluster) AddNode(opts ...NodeOption) *Node {
	c.t.Helper()
	c.mu.Lock()
	i := len(c.Nodes) + 1
	n := &Node{
		c:       c,
		Name:    fmt.Sprintf("n%d", i),
		NS:      fmt.Sprintf("%s-n%d", c.id, i),
		IP:      fmt.Sprintf("10.99.0.%d", 10+i),
		DataDir: filepath.Join(c.dir, fmt.Sprintf("n%d", i), "data"),
	}
	c.Nodes = append(c.Nodes, n)
	c.mu.Unlock()
	n.LogPath = filepath.Join(filepath.Dir(n.DataDir), "agent.log")
	if err := os.MkdirAll(filepath.Dir(n.DataDir), 0o700); err != nil {
		c.t.Fatal(err)
	}
	hostVeth := fmt.Sprintf("h%d", i)
	for _, cmd := range [][]string{
		{"ip", "netns", "add", n.NS},
		{"ip", "-n", n.NS, "link", "set", "lo", "up"},
		{"ip", "-n", c.hub, "link", "add", hostVeth, "type", "veth", "peer", "name", "eth0", "netns", n.NS},
		{"ip", "-n", c.hub, "link", "set", hostVeth, "master", "br0", "up"},
		{"ip", "-n", n.NS, "addr", "add", n.IP + "/24", "dev", "eth0"},
		{"ip", "-n", n.NS, "link", "set", "eth0", "up"},
	} {
		if err := run(cmd...); err != nil {
			c.t.Fatalf("create node %s: %v", n.Name, err)
		}
	}
	base := []string{
		"agent", "--name", n.Name, "--bind", n.IP, "--data-dir", n.DataDir,
		"--api", "127.0.0.1:7700",
		"--load-interval", "1s", "--containerd-namespace", n.TaskNamespace(),
		"--containerd", ContainerdAddress,
	}
	var join []string
	if i > 1 {
		join = []string{"--join", c.Nodes[0].IP}
	}
	for _, o := range opts {
		o(n)
	}
	// --join stays last before the options' args: a test restarts a node
	// without it by dropping those two.
	optArgs := n.Args
	n.Args = append(append(append(base, c.credentialArgs(optArgs)...), join...), optArgs...)
	n.Start()
	return n
}

// atExit runs after every test (from TestMain), for what tests share.
var atExit []func()

// ContainerdAddress is the socket of the containerd every agent uses.
var ContainerdAddress string

// removeTasks removes the containers and exec tasks of the node's agent.
func (n *Node) removeTasks() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := shoalrt.CleanupContainerd(ctx, ContainerdAddress, n.TaskNamespace()); err != nil {
		return err
	}
	return shoalrt.Cleanup(n.TaskNamespace())
}

// TaskNamespace is the runtime namespace of the node's agent: the prefix
// of its tasks' network namespaces and cgroups.
func (n *Node) TaskNamespace() string { return n.c.id + "-" + n.Name }

// Start runs the agent (again) with n.Args.
func (n *Node) Start() {
	t := n.c.t
	t.Helper()
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	// nsenter enters only the network namespace; "ip netns exec" would also
	// remount /sys, hiding the cgroup mounts the agent's runtime needs.
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + n.NS, "--", n.c.Binary}, n.Args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a test's Ctrl-C does not race the teardown.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start agent %s: %v", n.Name, err)
	}
	n.cmd = cmd
	n.exited = make(chan struct{})
	go func() {
		n.exitErr = cmd.Wait()
		logf.Close()
		close(n.exited)
	}()
	n.WaitAPI()
}

// WaitAPI waits until the agent answers /healthz.
func (n *Node) WaitAPI() {
	t := n.c.t
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := n.Client().Health(ctx)
		cancel()
		if err == nil {
			return
		}
		select {
		case <-n.exited:
			t.Fatalf("agent %s exited: %v\n%s", n.Name, n.exitErr, n.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent %s API never answered: %v\n%s", n.Name, err, n.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill sends SIGKILL and waits for the process to go.
func (n *Node) Kill() { n.signal(syscall.SIGKILL) }

// Terminate sends SIGTERM (graceful leave) and waits; it returns the exit
// error (nil for a clean exit).
func (n *Node) Terminate() error {
	n.signal(syscall.SIGTERM)
	return n.exitErr
}

func (n *Node) signal(sig syscall.Signal) {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	select {
	case <-n.exited:
		return
	default:
	}
	_ = n.cmd.Process.Signal(sig)
	select {
	case <-n.exited:
	case <-time.After(20 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.exited
	}
}

// Running reports whether the agent process is alive.
func (n *Node) Running() bool {
	if n.exited == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// Log returns the agent's log so far.
func (n *Node) Log() string {
	raw, _ := os.ReadFile(n.LogPath)
	return string(raw)
}

// Client is an API client of the node's agent, over HTTPS verified with
// the cluster CA, whose connections are made inside the node's namespace.
func (n *Node) Client() *api.Client {
	return n.ClientWithToken(n.c.Token)
}

// ClientWithToken is Client with another bearer token.
func (n *Node) ClientWithToken(token string) *api.Client {
	return api.NewClientWithOptions("127.0.0.1:7700", api.ClientOptions{Token: token, RootCAs: n.c.caPool, Dial: DialInNamespace(n.NS)})
}

// Exec runs a command inside the node's namespace and returns its combined
// output. SHOAL_CACERT is set, so the shoal CLI trusts the cluster CA.
func (n *Node) Exec(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.NS}, args...)...)
	cmd.Env = cliEnv("SHOAL_CACERT=" + n.c.CAFile)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Shoal runs the shoal CLI inside the node's namespace against its agent,
// with the cluster's token and CA given as files.
func (n *Node) Shoal(args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.NS, n.c.Binary}, args...)...)
	cmd.Env = cliEnv("SHOAL_ADDR=127.0.0.1:7700",
		"SHOAL_TOKEN_FILE="+n.c.Creds.Path(node.APITokenFile), "SHOAL_CACERT="+n.c.CAFile)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// cliEnv is the test's environment without the CLI's variables, which a
// shell that talked to another cluster may have set, plus vars.
func cliEnv(vars ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHOAL_ADDR=") && !strings.HasPrefix(kv, "SHOAL_TOKEN") && !strings.HasPrefix(kv, "SHOAL_CACERT=") {
			env = append(env, kv)
		}
	}
	return append(env, vars...)
}

// PID is the agent's process id (nsenter execs the agent in place).
func (n *Node) PID() int {
	if n.cmd == nil || n.cmd.Process == nil {
		return 0
	}
	return n.cmd.Process.Pid
}

// DialInNamespace returns a dialer whose sockets are created in the named
// network namespace.
func DialInNamespace(name string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		return shoalrt.DialInNetNS(ctx, "/run/netns/"+name, network, addr)
	}
}

// Close stops every agent and removes the namespaces. It runs at test
// cleanup on its own; calling it earlier is allowed.
func (c *Cluster) Close() { c.closeOne.Do(c.teardown) }

func (c *Cluster) teardown() {
	for _, n := range c.Nodes {
		n.Kill()
	}
	if c.t.Failed() {
		for _, n := range c.Nodes {
			c.t.Logf("---- log of %s ----\n%s", n.Name, tail(n.Log(), 60))
		}
	}
	for _, n := range c.Nodes {
		// Tasks outlive their agent by design (adoption); remove them.
		if err := n.removeTasks(); err != nil {
			c.t.Errorf("teardown tasks of %s: %v", n.Name, err)
		}
		if err := run("ip", "netns", "del", n.NS); err != nil {
			c.t.Errorf("teardown: %v", err)
		}
	}
	if err := run("ip", "netns", "del", c.hub); err != nil {
		c.t.Errorf("teardown: %v", err)
	}
	if err := os.RemoveAll(c.dir); err != nil {
		c.t.Errorf("teardown: %v", err)
	}
}

func tail(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// RemoveStaleNamespaces deletes namespaces left by e2e processes that no
// longer exist (a crashed or killed test run).
func RemoveStaleNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		name := fields[0]
		// Task namespaces are "shoal-<runtime namespace>-<task>".
		owner := strings.TrimPrefix(name, "shoal-")
		if !strings.HasPrefix(owner, nsPrefix) {
			continue
		}
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(owner, nsPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue
		}
		if pids, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
			for _, p := range strings.Fields(string(pids)) {
				if pid, err := strconv.Atoi(p); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
		_ = run("ip", "netns", "del", name)
	}
}

// Eventually polls cond until it holds or the timeout passes, and returns
// how long it took.
func Eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	last := ""
	for {
		ok, detail := cond()
		if ok {
			return time.Since(start)
		}
		last = detail
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %s waiting for %s; last: %s", timeout, what, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// KillMachine simulates the node's machine dying: the agent gets SIGKILL
// and every task it started dies with it.
func (n *Node) KillMachine() {
	n.Kill()
	if err := n.removeTasks(); err != nil {
		n.c.t.Errorf("kill tasks of %s: %v", n.Name, err)
	}
}

// Hello builds examples/hello once and returns its path, in a directory
// the tasks' user (nobody) can read.
var (
	helloOnce sync.Once
	helloBin  string
	helloErr  error
)

func Hello(t *testing.T) string {
	t.Helper()
	helloOnce.Do(func() {
		dir, err := os.MkdirTemp("", "shoal-e2e-hello-")
		if err != nil {
			helloErr = err
			return
		}
		atExit = append(atExit, func() { os.RemoveAll(dir) })
		if err := os.Chmod(dir, 0o755); err != nil {
			helloErr = err
			return
		}
		helloBin = filepath.Join(dir, "hello")
		cmd := exec.Command("go", "build", "-o", helloBin, "./examples/hello")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			helloErr = fmt.Errorf("build hello: %v\n%s", err, out)
		}
	})
	if helloErr != nil {
		t.Fatal(helloErr)
	}
	return helloBin
}

// TaskGet sends GET path to a task's port from inside the task's own
// network namespace.
func (n *Node) TaskGet(task string, port int, path string) (string, error) {
	nsPath := "/run/netns/shoal-" + n.TaskNamespace() + "-" + task
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return shoalrt.DialInNetNS(ctx, nsPath, network, addr)
		},
	}}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", port, path))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return string(raw), err
}
