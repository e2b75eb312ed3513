package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/node"
	"github.com/shoalmesh/shoal/runtime"
)

func newAgentCmd() *cobra.Command {
	cfg := node.DefaultConfig()
	var (
		configFile string
		secrets    agentSecrets
		labels     string
		join       []string
		logLevel   string
	)
	hostname, _ := os.Hostname()
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the Shoal agent on this machine",
		Long: `Run the Shoal agent. Every machine runs the same agent; join them by address.

Outside --dev, a gossip key and an API token are required. Write a cluster's
credentials once with 'shoal keygen --dir DIR' and give every agent the same
files: --gossip-key-file, --api-token-file, --api-read-token-file, and the
cluster CA (--tls-ca, --tls-ca-key), with which each agent issues itself the
certificate its HTTPS API serves. Without a CA the API serves plain HTTP, on
loopback only unless --api-insecure.

The environment variables SHOAL_GOSSIP_KEY, SHOAL_API_TOKEN and
SHOAL_API_READ_TOKEN are read when no flag gives the secret. Secrets given as
flag values (--gossip-key, --api-token) are readable by every local user in
the process list: prefer the files.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				if err := applyConfigFile(cmd.Flags(), configFile); err != nil {
					return err
				}
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: want debug, info, warn or error", logLevel)
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			if err := secrets.apply(&cfg, log); err != nil {
				return err
			}
			l, err := gossip.ParseLabels(labels)
			if err != nil {
				return fmt.Errorf("--labels: %w", err)
			}
			cfg.Labels = l
			for _, j := range join {
				for _, a := range strings.Split(j, ",") {
					if a = strings.TrimSpace(a); a != "" {
						cfg.Join = append(cfg.Join, a)
					}
				}
			}
			if cfg.Gossip.DataDir == "" {
				cfg.Gossip.DataDir = "/var/lib/shoal/" + cfg.Gossip.NodeName
			}

			agent, err := node.New(cfg, log)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return agent.Run(ctx)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "YAML or JSON file whose keys mirror these flags (flags win)")
	f.StringVar(&cfg.Gossip.NodeName, "name", hostname, "unique node name")
	f.StringVar(&cfg.Gossip.BindAddr, "bind", "127.0.0.1", "IP for gossip and p2p traffic, reachable by peers")
	f.IntVar(&cfg.Gossip.GossipPort, "gossip-port", cfg.Gossip.GossipPort, "gossip port (tcp+udp)")
	f.IntVar(&cfg.Gossip.P2PPort, "p2p-port", cfg.Gossip.P2PPort, "libp2p port (tcp)")
	f.StringSliceVar(&join, "join", nil, "peer gossip addresses ADDR[:PORT][,ADDR...], retried with backoff until one answers")
	f.StringVar(&cfg.Gossip.DataDir, "data-dir", "", "state directory (default /var/lib/shoal/NAME)")
	f.StringVar(&cfg.APIAddr, "api", cfg.APIAddr, "API listen address: HTTPS with --tls-ca, else plain HTTP on loopback only (see --api-insecure)")
	// Secret flags have no default: one taken from the environment would
	// be printed by --help.
	f.StringVar(&secrets.gossipKeyFile, "gossip-key-file", "", "file holding the base64 gossip key (16/24/32 bytes) shared by all agents, e.g. DIR/"+node.GossipKeyFile+" from 'shoal keygen --dir'")
	f.StringVar(&secrets.apiTokenFile, "api-token-file", "", "file holding the bearer token the API requires for every call, e.g. DIR/"+node.APITokenFile)
	f.StringVar(&secrets.readTokenFile, "api-read-token-file", "", "file holding a read-only API token: GET calls (lists, logs, events, metrics) only, writes get 403; e.g. DIR/"+node.APIReadTokenFile)
	f.StringVar(&secrets.gossipKey, "gossip-key", "", "the gossip key itself (discouraged: every local user can read a command line; use --gossip-key-file or env SHOAL_GOSSIP_KEY)")
	f.StringVar(&secrets.apiToken, "api-token", "", "the API token itself (discouraged: every local user can read a command line; use --api-token-file or env SHOAL_API_TOKEN)")
	f.StringVar(&cfg.TLS.CAFile, "tls-ca", "", "cluster CA certificate (PEM, DIR/"+node.CACertFile+"): the API serves HTTPS with a certificate issued from it")
	f.StringVar(&cfg.TLS.CAKeyFile, "tls-ca-key", "", "cluster CA private key (PEM, DIR/"+node.CAKeyFile+"), needed with --tls-ca")
	f.StringSliceVar(&cfg.TLS.ExtraNames, "tls-san", nil, "extra DNS names or IPs for the API certificate (it always names the node, the bind and API addresses and localhost)")
	f.DurationVar(&cfg.TLS.CertLifetime, "tls-cert-lifetime", cfg.TLS.CertLifetime, "life of the API certificate; it is renewed two thirds into it")
	f.BoolVar(&cfg.APIInsecure, "api-insecure", false, "allow plain HTTP on a non-loopback --api (lab networks only: tokens cross the network in clear)")
	f.BoolVar(&cfg.Drain, "drain", false, "on SIGTERM/SIGINT, move every replica to other nodes and stop it before leaving (default: leave replicas running for the restarted agent to adopt)")
	f.BoolVar(&cfg.Dev, "dev", false, "allow running without gossip key and API token, and plain HTTP on any --api (local testing only)")
	f.StringVar(&cfg.Containerd, "containerd", cfg.Containerd, "containerd socket")
	f.StringVar(&cfg.ContainerdNamespace, "containerd-namespace", cfg.ContainerdNamespace, "containerd namespace for this agent's containers and images; also names its network namespaces and cgroups")
	f.DurationVar(&cfg.PullTimeout, "pull-timeout", cfg.PullTimeout, "give up pulling a replica's image after this long")
	f.Var(uidRangeValue{&cfg.TaskUIDs}, "task-uids", "user ids given to exec tasks, one per task (FIRST-LAST; none may be 0 or 65534)")
	f.IntVar(&cfg.ProxyMaxSessions, "proxy-max-sessions", cfg.ProxyMaxSessions, "userspace proxy: TCP connections plus UDP sessions per node port")
	f.DurationVar(&cfg.ProxyTCPIdle, "proxy-tcp-idle", cfg.ProxyTCPIdle, "userspace proxy: close a TCP connection idle this long")
	f.Int64Var(&cfg.LogMaxBytes, "log-max-bytes", cfg.LogMaxBytes, "rotate a replica's log file beyond this size")
	f.IntVar(&cfg.LogKeep, "log-keep", cfg.LogKeep, "rotated log files kept per replica")
	f.StringVar(&labels, "labels", "", "node labels k=v[,k=v] for placement constraints")
	f.Int64Var(&cfg.CPUMillis, "cpu-millis", 0, "override detected CPU capacity (millicores)")
	f.Int64Var(&cfg.MemoryMB, "memory-mb", 0, "override detected memory capacity (MB)")
	f.DurationVar(&cfg.Gossip.ProbeInterval, "probe-interval", cfg.Gossip.ProbeInterval, "failure detection: interval between probes")
	f.DurationVar(&cfg.Gossip.ProbeTimeout, "probe-timeout", cfg.Gossip.ProbeTimeout, "failure detection: wait for a probe ack")
	f.IntVar(&cfg.Gossip.SuspicionMult, "suspicion-mult", cfg.Gossip.SuspicionMult, "failure detection: suspicion timeout multiplier")
	f.DurationVar(&cfg.Gossip.GossipInterval, "gossip-interval", cfg.Gossip.GossipInterval, "interval between gossip rounds")
	f.DurationVar(&cfg.Gossip.PushPullInterval, "push-pull-interval", cfg.Gossip.PushPullInterval, "interval between full state exchanges")
	f.DurationVar(&cfg.Sync.AntiEntropyInterval, "anti-entropy-interval", cfg.Sync.AntiEntropyInterval, "state: interval between anti-entropy rounds with a random peer")
	f.DurationVar(&cfg.TombstoneTTL, "tombstone-ttl", cfg.TombstoneTTL, "state: how long deletions are remembered (longer than any node stays away)")
	f.BoolVar(&cfg.Gossip.Compression, "gossip-compression", false, "compress gossip packets (fewer bytes, more CPU)")
	f.DurationVar(&cfg.LoadInterval, "load-interval", cfg.LoadInterval, "interval between load updates in gossip")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&cfg.OverlayEnabled, "overlay", cfg.OverlayEnabled, "connect replicas to the VXLAN overlay (one IP per replica, reachable from every node)")
	f.Var(prefixValue{&cfg.Overlay.OverlayCIDR}, "overlay-cidr", "overlay range shared by the cluster; every node claims a subnet of it")
	f.IntVar(&cfg.Overlay.SubnetBits, "overlay-subnet-bits", cfg.Overlay.SubnetBits, "prefix length of each node's subnet")
	f.Var(prefixValue{&cfg.OverlaySubnet}, "overlay-subnet", "claim this subnet when the node has no claim yet (default: proposed from the node name)")
	f.IntVar(&cfg.Overlay.VNI, "vxlan-vni", cfg.Overlay.VNI, "VXLAN network identifier")
	f.IntVar(&cfg.Overlay.VXLANPort, "vxlan-port", cfg.Overlay.VXLANPort, "VXLAN UDP port")
	f.IntVar(&cfg.Overlay.MTU, "overlay-mtu", cfg.Overlay.MTU, "MTU of the bridge, VXLAN device and replica veths (0: underlay MTU - 50)")
	f.StringVar(&cfg.Overlay.BridgeName, "overlay-bridge", cfg.Overlay.BridgeName, "name of the node's bridge (its gateway address is the replicas' DNS)")
	f.StringVar(&cfg.Overlay.VXLANName, "overlay-vxlan", cfg.Overlay.VXLANName, "name of the node's VXLAN device")
	f.StringVar(&cfg.LB, "lb", cfg.LB, "service load balancing: nftables (VIPs and node ports in one atomic table), userspace (a proxy for node ports) or off")
	f.StringVar(&cfg.LBTable, "lb-table", cfg.LBTable, "name of the nftables table of the load balancer")
	f.Var(prefixValue{&cfg.ServiceCIDR}, "service-cidr", "range of the services' virtual IPs (same on every node)")
	f.BoolVar(&cfg.DNS, "dns", cfg.DNS, "answer DNS for NAME.shoal. on the overlay gateway, port 53 (replicas' resolver)")
	f.BoolVar(&cfg.Cleanup, "cleanup", false, "on SIGTERM/SIGINT, stop every replica and remove the overlay's links, routes and rules (an agent retired for good)")
	return cmd
}

// agentSecrets are the agent's secrets as the command line gave them: by
// file, by value (discouraged) or, for neither, from the environment.
type agentSecrets struct {
	gossipKey, gossipKeyFile string
	apiToken, apiTokenFile   string
	readTokenFile            string
}

// apply resolves every secret into cfg and warns about secret files other
// users can read. No error or log line carries a secret's value.
func (s agentSecrets) apply(cfg *node.Config, log *slog.Logger) error {
	key, err := resolveSecret(s.gossipKey, s.gossipKeyFile, "--gossip-key", "SHOAL_GOSSIP_KEY", log)
	if err != nil {
		return err
	}
	if key != "" {
		if cfg.Gossip.GossipKey, err = gossip.ParseKey(key); err != nil {
			return err
		}
	}
	if cfg.APIToken, err = resolveSecret(s.apiToken, s.apiTokenFile, "--api-token", "SHOAL_API_TOKEN", log); err != nil {
		return err
	}
	if cfg.APIReadToken, err = resolveSecret("", s.readTokenFile, "--api-read-token", "SHOAL_API_READ_TOKEN", log); err != nil {
		return err
	}
	if cfg.TLS.CAKeyFile != "" {
		warnIfShared(cfg.TLS.CAKeyFile, log)
	}
	return nil
}

// resolveSecret returns a secret given by value or by file (not both), or
// else the environment variable env (empty when unset).
func resolveSecret(value, file, flag, env string, log *slog.Logger) (string, error) {
	switch {
	case value != "" && file != "":
		return "", fmt.Errorf("give %s or %s-file, not both", flag, flag)
	case file != "":
		v, err := node.ReadSecretFile(file)
		if err != nil {
			return "", fmt.Errorf("%s-file: %w", flag, err)
		}
		warnIfShared(file, log)
		return v, nil
	case value != "":
		return value, nil
	}
	return os.Getenv(env), nil
}

func warnIfShared(path string, log *slog.Logger) {
	if mode, shared := node.OthersCanRead(path); shared {
		log.Warn("a secret file is readable by other users; chmod 600 it", "file", path, "mode", fmt.Sprintf("%#o", mode))
	}
}

// applyConfigFile sets every flag the command line left unset from a YAML
// or JSON file whose keys are flag names (dashes or underscores).
func applyConfigFile(flags *pflag.FlagSet, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(raw, &values); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	for key, v := range values {
		name := strings.ReplaceAll(key, "_", "-")
		fl := flags.Lookup(name)
		if fl == nil || name == "config" {
			return fmt.Errorf("config file %s: unknown key %q", path, key)
		}
		if fl.Changed {
			continue
		}
		var s string
		switch v := v.(type) {
		case []any:
			parts := make([]string, len(v))
			for i, p := range v {
				parts[i] = fmt.Sprint(p)
			}
			s = strings.Join(parts, ",")
		case map[string]any:
			parts := make([]string, 0, len(v))
			for k, p := range v {
				parts = append(parts, fmt.Sprintf("%s=%v", k, p))
			}
			s = strings.Join(parts, ",")
		case float64:
			s = strings.TrimSuffix(fmt.Sprintf("%f", v), ".000000")
		default:
			s = fmt.Sprint(v)
		}
		if err := fl.Value.Set(s); err != nil {
			return fmt.Errorf("config file %s: key %q: %w", path, key, err)
		}
	}
	return nil
}

// prefixValue is a pflag.Value for a netip.Prefix; empty means unset.
// uidRangeValue is a FIRST-LAST range of user ids as a flag.
type uidRangeValue struct{ r *runtime.UIDRange }

func (v uidRangeValue) String() string {
	if v.r == nil {
		return ""
	}
	return v.r.String()
}

func (v uidRangeValue) Set(s string) error {
	r, err := runtime.ParseUIDRange(s)
	if err != nil {
		return err
	}
	*v.r = r
	return nil
}

func (uidRangeValue) Type() string { return "range" }

type prefixValue struct{ p *netip.Prefix }

func (v prefixValue) String() string {
	if v.p == nil || !v.p.IsValid() {
		return ""
	}
	return v.p.String()
}

func (v prefixValue) Set(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return fmt.Errorf("want an IPv4 prefix such as 10.42.0.0/16: %w", err)
	}
	*v.p = p
	return nil
}

func (prefixValue) Type() string { return "prefix" }
