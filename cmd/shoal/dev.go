package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalmesh/shoal/devcluster"
)

func newDevCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a multi-node cluster on this machine, one network namespace per node",
		Long: `A real Shoal cluster on one Linux machine, for trying Shoal and developing
it: every node is an agent in its own network namespace, joined to the others
by a bridge, and the host reaches every node's API through a link of its own.
Needs root.`,
	}
	cmd.AddCommand(newDevUpCmd(), newDevDownCmd(), newDevStatusCmd(), newDevKillCmd())
	return cmd
}

// downCommand is how to remove cluster name, for messages.
func downCommand(name string) string {
	if name == devcluster.DefaultName {
		return "shoal dev down"
	}
	return "shoal dev down --name " + name
}

func newDevUpCmd() *cobra.Command {
	cfg := devcluster.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a cluster: namespaces, a containerd, one agent per node, an image on every node",
		Long: `Creates a hub namespace with a bridge, a host link at the subnet's .1, and
per node a namespace at .10+I running 'shoal agent'. Uses the containerd given
with --containerd, else the system one if it answers (unless
--private-containerd), else starts a private one under the cluster directory.
Loads --image into every node; without it, run from a Shoal checkout with Go
installed, it builds examples/hello as shoal.dev/hello:1. Agents run detached
and outlive this command; 'shoal dev down' removes everything. On failure, or
Ctrl-C, it removes what it made.`,
		Example: `  shoal dev up
  shoal dev up --nodes 5 --name big --subnet 10.97.0.0/24
  shoal dev up --image hello.tar --agent-arg=--load-interval=1s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the shoal executable for the agents: %w", err)
			}
			cfg.Executable = exe
			out := cmd.OutOrStdout()
			cfg.Progress = out
			// Ctrl-C ends the wait; Up then removes what it made.
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			c, err := devcluster.Up(ctx, cfg)
			if err != nil {
				return err
			}
			printUp(out, c)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, fmt.Sprintf("number of nodes (1-%d)", devcluster.MaxNodes))
	f.StringVar(&cfg.Name, "name", cfg.Name, "cluster name: lowercase letters and digits, at most 8")
	f.StringVar(&cfg.Subnet, "subnet", cfg.Subnet, "private IPv4 subnet: the host gets .1, node I gets .10+I")
	f.StringVar(&cfg.Dir, "dir", "", "cluster directory: state, agent data and logs (default "+devcluster.BaseDir+"/NAME)")
	f.StringVar(&cfg.Containerd, "containerd", "", "containerd socket (default: the system one if it answers, else a private one)")
	f.BoolVar(&cfg.PrivateContainerd, "private-containerd", false, "start a private containerd even if the system one answers")
	f.StringVar(&cfg.Image, "image", "", "OCI image archive to load into every node (default: examples/hello, when run from a checkout)")
	f.StringArrayVar(&cfg.AgentArgs, "agent-arg", nil, "extra agent flag, e.g. --agent-arg=--load-interval=1s (repeatable)")
	f.DurationVar(&cfg.AliveTimeout, "timeout", cfg.AliveTimeout, "how long to wait for every node to see every other alive")
	return cmd
}

func printUp(out io.Writer, c *devcluster.Cluster) {
	p := c.Plan
	last := p.Nodes[len(p.Nodes)-1]
	nss := p.Nodes[0].Namespace
	if len(p.Nodes) > 1 {
		nss += ".." + last.Name
	}
	fmt.Fprintf(out, "\nShoal dev cluster %s is up: %d node(s) (namespaces %s) on %s.\n", p.Name, len(p.Nodes), nss, p.Subnet)
	if c.PrivateContainerd {
		fmt.Fprintf(out, "containerd: %s, started for this cluster (log %s/containerd.log)\n", c.Containerd, p.Dir)
	} else {
		fmt.Fprintf(out, "containerd: %s\n", c.Containerd)
	}
	if len(c.Images) > 0 {
		fmt.Fprintf(out, "image: %s, on every node\n", strings.Join(c.Images, ", "))
	} else {
		ips := make([]string, len(p.Nodes))
		for i, n := range p.Nodes {
			ips[i] = n.IP.String()
		}
		fmt.Fprintf(out, "image: none loaded. Images are per node: after 'source %s', load an OCI archive into each:\n", c.EnvFile)
		fmt.Fprintf(out, "  for ip in %s; do SHOAL_ADDR=$ip:%d shoal image load FILE.tar; done\n", strings.Join(ips, " "), devcluster.APIPort)
		fmt.Fprintf(out, "  ('shoal image build' makes one from a static binary; 'shoal dev up --image FILE' loads it at start)\n")
	}
	fmt.Fprintf(out, `
Talk to it (any node answers):
  source %s        # SHOAL_ADDR=%s, SHOAL_TOKEN_FILE, SHOAL_CACERT
  shoal nodes
  shoal ps
  SHOAL_ADDR=%s shoal nodes
Logs: %s/n*.log    Status: shoal dev status%s    Tear down: %s
`, c.EnvFile, c.Addr, last.APIAddr(), p.Dir, nameFlag(p.Name), downCommand(p.Name))
}

func nameFlag(name string) string {
	if name == devcluster.DefaultName {
		return ""
	}
	return " --name " + name
}

func newDevDownCmd() *cobra.Command {
	var name, dir string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove a cluster: agents, containers, tasks, namespaces, links, its containerd and directory",
		Long: `Stops every agent (SIGTERM, then SIGKILL after 5s), removes the containers,
tasks, cgroups and network namespaces of its nodes, the hub and the host link,
stops the containerd 'dev up' started (never one it did not start) and removes
the cluster directory. Running it when nothing is up succeeds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			// Not cancelled by Ctrl-C: a teardown cut short leaves more to
			// clean up. Running down again finishes it.
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
			defer cancel()
			found, err := devcluster.Down(ctx, name, dir, out)
			if err != nil {
				return err
			}
			if !found {
				fmt.Fprintf(out, "no dev cluster %s on this machine; nothing to remove\n", name)
				return nil
			}
			fmt.Fprintf(out, "dev cluster %s removed\n", name)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", devcluster.DefaultName, "cluster name")
	cmd.Flags().StringVar(&dir, "dir", "", "cluster directory, if 'dev up' was given one (default: found by name)")
	return cmd
}

func newDevStatusCmd() *cobra.Command {
	var name, dir string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a cluster's namespaces, agents, containerd and nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			s, err := devcluster.GetStatus(cmd.Context(), name, dir)
			if err != nil {
				return err
			}
			if !s.Up() {
				fmt.Fprintf(out, "no dev cluster %s on this machine\n", name)
				return nil
			}
			printStatus(out, s)
			if s.Env.Addr == "" {
				return nil
			}
			fmt.Fprintf(out, "\nshoal nodes (asked of %s):\n", s.Env.Addr)
			nodes := newNodesCmd(&clientFlags{addr: s.Env.Addr, token: s.Env.Token, tokenFile: s.Env.TokenFile, cacert: s.Env.CACert})
			nodes.SetContext(cmd.Context())
			if err := nodes.RunE(nodes, nil); err != nil {
				fmt.Fprintf(out, "the API does not answer: %v\n", err)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", devcluster.DefaultName, "cluster name")
	cmd.Flags().StringVar(&dir, "dir", "", "cluster directory, if 'dev up' was given one (default: found by name)")
	return cmd
}

func printStatus(out io.Writer, s devcluster.Status) {
	fmt.Fprintf(out, "dev cluster %s (directory %s", s.Name, s.Dir)
	if s.Subnet != "" {
		fmt.Fprintf(out, ", subnet %s", s.Subnet)
	}
	fmt.Fprintln(out, ")")
	if !s.Recorded {
		fmt.Fprintf(out, "  no state file: a leftover of a failed run? '%s' removes it\n", downCommand(s.Name))
	}
	if len(s.Namespaces) > 0 {
		fmt.Fprintf(out, "namespaces: %s\n", strings.Join(s.Namespaces, " "))
	} else {
		fmt.Fprintln(out, "namespaces: none")
	}
	link := "absent"
	if s.HostLinkUp {
		link = "present"
	}
	fmt.Fprintf(out, "host link:  %s (%s)\n", s.HostLink, link)
	if len(s.Agents) > 0 {
		fmt.Fprintln(out, "agents:")
		for _, a := range s.Agents {
			state := "not running"
			if a.Running {
				state = fmt.Sprintf("running, pid %d", a.PID)
			}
			fmt.Fprintf(out, "  %-4s %-20s log %s\n", a.Name, state, a.Log)
		}
	}
	if s.Containerd != "" {
		how := ""
		if s.PrivateContainerd {
			how = ", started by dev up"
		}
		serving := "not answering"
		if s.ContainerdServing {
			serving = "answering"
		}
		fmt.Fprintf(out, "containerd: %s (%s%s)\n", s.Containerd, serving, how)
	}
	if s.Image != "" {
		fmt.Fprintf(out, "image:      %s\n", s.Image)
	}
}

func newDevKillCmd() *cobra.Command {
	var name, dir string
	cmd := &cobra.Command{
		Use:   "kill NODE",
		Short: "Make one node fail like a machine: SIGKILL its agent and kill its replicas",
		Long: `Kills the node's agent with SIGKILL (no graceful leave) and every container and
task it ran, as if the machine had lost power. The other nodes declare it
failed within a few seconds and start its replicas again among themselves.
'dev down' removes what is left of it.`,
		Example: "  shoal dev kill n3",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Minute)
			defer cancel()
			return devcluster.Kill(ctx, name, dir, args[0], cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&name, "name", devcluster.DefaultName, "cluster name")
	cmd.Flags().StringVar(&dir, "dir", "", "cluster directory, if 'dev up' was given one (default: found by name)")
	return cmd
}
