package devcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"sort"
	"strings"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/node"
	shoalrt "github.com/shoalmesh/shoal/runtime"
)

// Config is what `shoal dev up` is asked for. DefaultConfig fills every
// field but Executable.
type Config struct {
	Name   string
	Nodes  int
	Subnet string
	// Dir holds the cluster's state, agent data and logs; empty is
	// DefaultDir(Name).
	Dir string
	// Containerd is the socket the agents use. Empty means the system
	// daemon if it answers at runtime.DefaultContainerdAddress, otherwise
	// a private one Up starts under Dir (and Down stops).
	Containerd string
	// PrivateContainerd starts a private containerd even when the system
	// one answers, so the cluster shares nothing with it.
	PrivateContainerd bool
	// Image is an OCI image archive loaded into every node. Empty means
	// examples/hello built from SourceDir, when that is a checkout and Go
	// is installed; otherwise no image is loaded.
	Image string
	// SourceDir is where examples/hello is looked for; empty is the
	// working directory.
	SourceDir string
	// AgentArgs are appended to every agent's command line, so they win
	// over Up's own flags.
	AgentArgs []string
	// Executable is the shoal binary the agents run.
	Executable string
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
	// AliveTimeout bounds the wait for every node to see every other.
	AliveTimeout time.Duration
}

// DefaultConfig is a 3-node cluster named dev on 10.98.0.0/24.
func DefaultConfig() Config {
	return Config{
		Name:         DefaultName,
		Nodes:        DefaultNodes,
		Subnet:       DefaultSubnet,
		AliveTimeout: 60 * time.Second,
	}
}

// Cluster is a running cluster as Up leaves it.
type Cluster struct {
	Plan Plan
	// Containerd is the socket the agents use; PrivateContainerd is set
	// when Up started that daemon.
	Containerd        string
	PrivateContainerd bool
	// EnvFile sets SHOAL_ADDR (node n1), SHOAL_TOKEN_FILE and SHOAL_CACERT
	// when sourced; Env is what it sets.
	EnvFile string
	Addr    string
	Env     Env
	// Images are the names of the images loaded into every node; empty
	// when none was.
	Images []string
	// ImageArchive is the archive they came from.
	ImageArchive string
}

// CheckHost fails unless this is Linux and the caller is root, which
// creating network namespaces needs.
func CheckHost(verb string) error {
	if goruntime.GOOS != "linux" {
		return fmt.Errorf("shoal dev %s needs Linux (network namespaces); this is %s", verb, goruntime.GOOS)
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("shoal dev %s needs root: it creates and removes network namespaces, links and processes", verb)
	}
	return nil
}

// Up creates the cluster and returns once every node sees every other
// alive and the image, if any, is loaded into every node. On failure, and
// when ctx ends, it removes whatever it made with Down and returns the
// error.
func Up(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	say := progress(cfg.Progress)
	if err := CheckHost("up"); err != nil {
		return nil, err
	}
	subnet, err := ParseSubnet(cfg.Subnet)
	if err != nil {
		return nil, err
	}
	plan, err := NewPlan(cfg.Name, cfg.Nodes, subnet, cfg.Dir)
	if err != nil {
		return nil, err
	}
	if cfg.Executable == "" {
		return nil, errors.New("no shoal executable for the agents")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is not installed (make deps, or apt-get install iproute2 util-linux): %w", tool, err)
		}
	}
	if cfg.Containerd != "" && cfg.PrivateContainerd {
		return nil, errors.New("give --containerd or --private-containerd, not both")
	}
	if cfg.Containerd != "" && !containerdServing(ctx, cfg.Containerd) {
		return nil, fmt.Errorf("--containerd %s: no containerd answers there", cfg.Containerd)
	}
	if cfg.Image != "" {
		f, err := os.Open(cfg.Image)
		if err != nil {
			return nil, fmt.Errorf("image archive: %w", err)
		}
		f.Close()
	}
	unlock, err := lockBaseDir(say)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if err := checkNotUp(ctx, plan); err != nil {
		return nil, err
	}

	// From here on, whatever is made is removed again if Up fails.
	defer func() {
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("dev up interrupted: %w", err)
		}
		say("dev up failed; removing what it made")
		tctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, derr := down(tctx, plan.Name, plan.Dir, say); derr != nil {
			err = errors.Join(err, fmt.Errorf("clean up after the failed dev up: %w", derr))
		}
	}()
	st := state{Name: plan.Name, Subnet: plan.Subnet.String(), Nodes: len(plan.Nodes), Executable: cfg.Executable}
	if err := makeClusterDir(plan, st); err != nil {
		return nil, err
	}

	first, last := plan.Nodes[0], plan.Nodes[len(plan.Nodes)-1]
	nodes := fmt.Sprintf("node %s at %s", first.Namespace, first.IP)
	if len(plan.Nodes) > 1 {
		nodes = fmt.Sprintf("nodes %s..%s at %s..%s", first.Namespace, last.Name, first.IP, last.IP)
	}
	say("network: hub namespace %s with bridge br0; host link %s at %s/%d; %s",
		plan.Hub, plan.HostLink, plan.HostIP, plan.Subnet.Bits(), nodes)
	if err := createNetwork(ctx, plan); err != nil {
		return nil, err
	}

	sock, private, err := chooseContainerd(ctx, cfg, plan.Dir, &st, say)
	if err != nil {
		return nil, err
	}

	// The same credentials as `shoal keygen --dir`, in the cluster
	// directory: the agents get them as files, never on a command line.
	creds, err := node.GenerateCredentials(plan.Dir, false, time.Now())
	if err != nil {
		return nil, fmt.Errorf("generate the cluster's credentials: %w", err)
	}
	say("credentials: %s (gossip key, API tokens, cluster CA); the API serves HTTPS", plan.Dir)
	envPath := filepath.Join(plan.Dir, "env")
	addr := plan.Nodes[0].APIAddr()
	env := Env{Addr: addr, TokenFile: creds.Path(node.APITokenFile), CACert: creds.Path(node.CACertFile)}
	// 0600 although it holds no secret: it names where they are.
	if err := writeFileAtomic(envPath, []byte(EnvFile(plan.Name, env)), 0o600); err != nil {
		return nil, err
	}

	say("starting %s (logs %s/n*.log)", count(len(plan.Nodes), "agent"), plan.Dir)
	exited := map[string]<-chan struct{}{}
	for _, n := range plan.Nodes {
		done, err := startAgent(plan, n, cfg, sock)
		if err != nil {
			return nil, err
		}
		exited[n.Name] = done
	}

	timeout := cfg.AliveTimeout
	if timeout <= 0 {
		timeout = DefaultConfig().AliveTimeout
	}
	say("waiting for every node to see %s alive", count(len(plan.Nodes), "member"))
	took, err := waitAlive(ctx, plan, env, exited, timeout)
	if err != nil {
		return nil, err
	}
	say("%s alive after %s", count(len(plan.Nodes), "node"), took.Round(100*time.Millisecond))

	c := &Cluster{Plan: plan, Containerd: sock, PrivateContainerd: private, EnvFile: envPath, Addr: addr, Env: env}
	archive := cfg.Image
	if archive == "" {
		src := cfg.SourceDir
		if src == "" {
			src = "."
		}
		if canBuildHello(src) {
			say("building examples/hello (CGO_ENABLED=0) as image %s", HelloRef)
			if archive, err = buildHello(ctx, src, plan.Dir); err != nil {
				return nil, err
			}
		} else {
			say("no image loaded: this is not a Shoal checkout with Go installed (see below)")
		}
	}
	if archive != "" {
		say("loading %s into %s", archive, count(len(plan.Nodes), "node"))
		names, err := loadImage(ctx, plan, env, archive)
		if err != nil {
			return nil, err
		}
		c.Images, c.ImageArchive = names, archive
		st.Image = strings.Join(names, ",")
		if err := writeState(plan.Dir, st); err != nil {
			return nil, err
		}
		say("loaded %s on %s", strings.Join(names, ", "), nodeNames(plan))
	}
	return c, nil
}

func progress(w io.Writer) func(format string, args ...any) {
	if w == nil {
		w = io.Discard
	}
	return func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
}

// checkNotUp refuses to make a cluster over one that exists, even in
// part, or over a subnet the host already routes.
func checkNotUp(ctx context.Context, p Plan) error {
	downHint := "remove it with 'shoal dev down"
	if p.Name != DefaultName {
		downHint += " --name " + p.Name
	}
	downHint += "'"
	nss, err := clusterNamespaces(p.Name)
	if err != nil {
		return err
	}
	if len(nss) > 0 {
		return fmt.Errorf("dev cluster %s is already up (namespaces %s); %s", p.Name, strings.Join(nss, ", "), downHint)
	}
	if linkExists(p.HostLink) {
		return fmt.Errorf("host link %s of dev cluster %s exists; %s", p.HostLink, p.Name, downHint)
	}
	for _, d := range []string{p.Dir, DefaultDir(p.Name)} {
		if _, err := os.Lstat(filepath.Join(d, stateFile)); err == nil {
			return fmt.Errorf("directory %s is left from an earlier dev cluster %s; %s", d, p.Name, downHint)
		}
	}
	if entries, err := os.ReadDir(p.Dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("directory %s exists and is not empty; choose another --dir", p.Dir)
	}
	if p.Dir != DefaultDir(p.Name) {
		if _, err := os.Lstat(DefaultDir(p.Name)); err == nil {
			return fmt.Errorf("%s exists (an earlier dev cluster %s?); %s", DefaultDir(p.Name), p.Name, downHint)
		}
	}
	return checkSubnetFree(ctx, p.Subnet)
}

// makeClusterDir creates the cluster directory with its state file, and
// for a directory outside BaseDir the symlink Down and Status find it by.
func makeClusterDir(p Plan, st state) error {
	if err := os.MkdirAll(BaseDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", BaseDir, err)
	}
	// 0755: exec tasks run as nobody in working directories below it.
	if err := os.MkdirAll(p.Dir, 0o755); err != nil {
		return fmt.Errorf("create cluster directory: %w", err)
	}
	if err := writeState(p.Dir, st); err != nil {
		return err
	}
	if p.Dir != DefaultDir(p.Name) {
		if err := os.Symlink(p.Dir, DefaultDir(p.Name)); err != nil {
			return fmt.Errorf("link cluster directory: %w", err)
		}
	}
	return nil
}

// chooseContainerd returns the socket the agents use: the one asked for,
// the system daemon if it answers, or a private daemon started now. The
// choice is recorded before a private daemon starts, so Down stops it
// whatever happens next.
func chooseContainerd(ctx context.Context, cfg Config, dir string, st *state, say func(string, ...any)) (sock string, private bool, err error) {
	asked := cfg.Containerd
	switch {
	case asked != "": // checked before anything was made
		sock = asked
		say("containerd: %s (given)", sock)
	case !cfg.PrivateContainerd && containerdServing(ctx, shoalrt.DefaultContainerdAddress):
		sock = shoalrt.DefaultContainerdAddress
		say("containerd: %s (the system daemon)", sock)
	default:
		pc := privateContainerdIn(dir)
		sock, private = pc.Socket, true
		st.Containerd, st.PrivateContainerd = sock, true
		if err := writeState(dir, *st); err != nil {
			return "", false, err
		}
		if cfg.PrivateContainerd {
			say("containerd: starting a private one at %s (log %s)", sock, pc.Log)
		} else {
			say("containerd: none answers at %s; starting a private one at %s (log %s)", shoalrt.DefaultContainerdAddress, sock, pc.Log)
		}
		if err := pc.start(ctx); err != nil {
			return "", false, err
		}
	}
	st.Containerd = sock
	if err := writeState(dir, *st); err != nil {
		return "", false, err
	}
	return sock, private, nil
}

// agentArgv is the command that starts node n's agent. It names the
// credential files in the cluster directory; a secret itself is never on
// a command line, which every user of the machine can read.
func agentArgv(p Plan, n NodePlan, exe, sock string, extra []string) []string {
	cred := func(file string) string { return filepath.Join(p.Dir, file) }
	argv := []string{
		// nsenter, not "ip netns exec": the latter remounts /sys and hides
		// the cgroup mounts the agent's runtime uses.
		"nsenter", "--net=" + filepath.Join(netnsDir, n.Namespace), "--",
		exe, "agent",
		"--name", n.Name,
		"--bind", n.IP.String(),
		"--api", n.APIAddr(),
		"--data-dir", n.DataDir,
		"--containerd", sock,
		"--containerd-namespace", n.Namespace,
		"--gossip-key-file", cred(node.GossipKeyFile),
		"--api-token-file", cred(node.APITokenFile),
		"--api-read-token-file", cred(node.APIReadTokenFile),
		"--tls-ca", cred(node.CACertFile),
		"--tls-ca-key", cred(node.CAKeyFile),
	}
	if n.Index > 1 {
		argv = append(argv, "--join", p.Nodes[0].IP.String())
	}
	return append(argv, extra...)
}

// startAgent starts node n's agent detached and writes its pid file.
func startAgent(p Plan, n NodePlan, cfg Config, sock string) (<-chan struct{}, error) {
	pid, exited, err := startDetached(agentArgv(p, n, cfg.Executable, sock, cfg.AgentArgs), os.Environ(), n.LogPath)
	if err != nil {
		return nil, fmt.Errorf("start agent %s: %w", n.Name, err)
	}
	if err := writePIDFile(n.PIDPath, pid); err != nil {
		return nil, fmt.Errorf("start agent %s: %w", n.Name, err)
	}
	return exited, nil
}

// waitAlive polls every node's API until each lists every node alive. An
// agent that exits ends the wait at once, with the end of its log.
func waitAlive(ctx context.Context, p Plan, env Env, exited map[string]<-chan struct{}, timeout time.Duration) (time.Duration, error) {
	clients := map[string]*api.Client{}
	for _, n := range p.Nodes {
		c, err := env.Client(n.APIAddr())
		if err != nil {
			return 0, err
		}
		clients[n.Name] = c
	}
	start := time.Now()
	deadline := start.Add(timeout)
	want := len(p.Nodes)
	seen := map[string]string{}
	for {
		ready := 0
		for _, n := range p.Nodes {
			select {
			case <-exited[n.Name]:
				return 0, fmt.Errorf("agent %s exited; its log %s ends:\n%s", n.Name, n.LogPath, tailFile(n.LogPath, 20))
			default:
			}
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			nodes, err := clients[n.Name].Nodes(cctx)
			cancel()
			if err != nil {
				seen[n.Name] = "its API does not answer: " + err.Error()
				continue
			}
			alive := 0
			for _, m := range nodes {
				if m.Status == "alive" {
					alive++
				}
			}
			seen[n.Name] = fmt.Sprintf("sees %d of %d alive", alive, want)
			if alive == want {
				ready++
			}
		}
		if ready == want {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			var lines []string
			for _, n := range p.Nodes {
				lines = append(lines, fmt.Sprintf("  %s %s (log %s)", n.Name, seen[n.Name], n.LogPath))
			}
			return 0, fmt.Errorf("nodes did not all see each other alive within %s:\n%s", timeout, strings.Join(lines, "\n"))
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return 0, fmt.Errorf("wait for agents: %w", err)
		}
	}
}

// loadImage uploads the archive to every node (images are per node) and
// returns the names of the images it held.
func loadImage(ctx context.Context, p Plan, env Env, archive string) ([]string, error) {
	var names []string
	for _, n := range p.Nodes {
		c, err := env.Client(n.APIAddr())
		if err != nil {
			return nil, err
		}
		f, err := os.Open(archive)
		if err != nil {
			return nil, fmt.Errorf("load image: %w", err)
		}
		lctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		imgs, err := c.LoadImage(lctx, f)
		cancel()
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("load image %s into %s: %w", archive, n.Name, err)
		}
		if names == nil {
			for _, img := range imgs {
				names = append(names, img.Name)
			}
			sort.Strings(names)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("load image %s: the archive names no image", archive)
	}
	return names, nil
}

// count is "1 node", "3 nodes".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

func nodeNames(p Plan) string {
	names := make([]string, len(p.Nodes))
	for i, n := range p.Nodes {
		names[i] = n.Name
	}
	return strings.Join(names, ", ")
}
