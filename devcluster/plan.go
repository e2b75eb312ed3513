// Package devcluster runs a real multi-node Shoal cluster on one Linux
// machine: one network namespace per node, joined by a bridge in a hub
// namespace, with a veth from the host to that bridge so the CLI on the host
// reaches every node's API. It is what `shoal dev up|down|status` run; every
// resource it makes is named after the cluster so Down can find and remove
// it again, also after a failed or interrupted Up.
package devcluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/node"
)

// BaseDir holds every cluster's directory (or, for a cluster whose --dir
// is elsewhere, a symlink to it), so `dev down --name N` finds it.
const BaseDir = "/var/lib/shoal-dev"

// Defaults of `shoal dev up`.
const (
	DefaultName   = "dev"
	DefaultNodes  = 3
	DefaultSubnet = "10.98.0.0/24"
	// MaxNodes keeps a dev cluster within what one machine runs comfortably.
	MaxNodes = 50
	// maxNameLen keeps the host link "shoal-NAME0" within IFNAMSIZ (15).
	maxNameLen = 8
	// firstNodeOffset is where node addresses start in the subnet (node i
	// gets .10+i), leaving .1 for the host and room below for later use.
	firstNodeOffset = 10
	// APIPort is the port every agent's API listens on, at its node's IP.
	APIPort = 7700
)

var validName = regexp.MustCompile(`^[a-z0-9]+$`)

// ValidateName checks a cluster name: lowercase letters and digits, at
// most 8 characters. The restriction is what makes every derived name
// unambiguous (no '-', so cluster "a" never matches cluster "a-b") and
// short enough for a network interface.
func ValidateName(name string) error {
	switch {
	case name == "":
		return errors.New("cluster name is empty")
	case len(name) > maxNameLen:
		return fmt.Errorf("cluster name %q is longer than %d characters (it names the host link shoal-NAME0, at most 15)", name, maxNameLen)
	case !validName.MatchString(name):
		return fmt.Errorf("cluster name %q: use only lowercase letters and digits", name)
	}
	return nil
}

// ParseSubnet parses and checks a cluster subnet: a private IPv4 network
// address (a route to it is added on the host, so a public range would
// shadow real destinations).
func ParseSubnet(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("subnet %q: want an IPv4 network such as %s: %w", s, DefaultSubnet, err)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("subnet %q: only IPv4 is supported", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("subnet %q is not a network address (did you mean %s?)", s, p.Masked())
	}
	if !p.Addr().IsPrivate() {
		return netip.Prefix{}, fmt.Errorf("subnet %q is not a private range (10/8, 172.16/12, 192.168/16); its route on the host would shadow real addresses", s)
	}
	return p, nil
}

// Plan is every name and address of a cluster, derived from its name,
// subnet, node count and directory alone: Down and Status recompute it,
// and nothing in it depends on the machine.
type Plan struct {
	Name   string
	Subnet netip.Prefix
	Dir    string
	// Hub is the namespace holding the bridge every node is plugged into.
	Hub string
	// HostLink is the host's end of the veth to the hub's bridge.
	HostLink string
	// HostIP is the host's address on HostLink (the subnet's .1).
	HostIP netip.Addr
	Nodes  []NodePlan
}

// NodePlan is one node of a Plan.
type NodePlan struct {
	Index int
	// Name is the agent's node name, n1, n2, ...
	Name string
	// Namespace names both the node's network namespace and the agent's
	// --containerd-namespace (so its tasks' namespaces and cgroups carry
	// the cluster's name too).
	Namespace string
	// HubVeth is the node's veth end in the hub, plugged into the bridge.
	HubVeth string
	IP      netip.Addr
	DataDir string
	LogPath string
	PIDPath string
}

// APIAddr is the node's API address as host:port.
func (n NodePlan) APIAddr() string {
	return netip.AddrPortFrom(n.IP, APIPort).String()
}

// NewPlan checks the inputs and lays out the cluster.
func NewPlan(name string, nodes int, subnet netip.Prefix, dir string) (Plan, error) {
	if err := ValidateName(name); err != nil {
		return Plan{}, err
	}
	if nodes < 1 || nodes > MaxNodes {
		return Plan{}, fmt.Errorf("--nodes %d: want 1 to %d", nodes, MaxNodes)
	}
	if !subnet.IsValid() || !subnet.Addr().Is4() {
		return Plan{}, fmt.Errorf("subnet %s: want an IPv4 network", subnet)
	}
	// Addresses .1 (host) and .10+N must fit below the broadcast address.
	if size := uint64(1) << (32 - subnet.Bits()); uint64(firstNodeOffset+nodes) > size-2 {
		return Plan{}, fmt.Errorf("subnet %s is too small for %d nodes (they use .%d to .%d)", subnet, nodes, firstNodeOffset+1, firstNodeOffset+nodes)
	}
	if dir == "" {
		dir = DefaultDir(name)
	}
	if !filepath.IsAbs(dir) {
		return Plan{}, fmt.Errorf("cluster directory %q must be absolute", dir)
	}
	dir = filepath.Clean(dir)
	p := Plan{
		Name:     name,
		Subnet:   subnet,
		Dir:      dir,
		Hub:      hubNamespace(name),
		HostLink: "shoal-" + name + "0",
		HostIP:   offset(subnet.Addr(), 1),
	}
	for i := 1; i <= nodes; i++ {
		n := "n" + strconv.Itoa(i)
		p.Nodes = append(p.Nodes, NodePlan{
			Index:     i,
			Name:      n,
			Namespace: nodeNamespace(name, i),
			HubVeth:   "h" + strconv.Itoa(i),
			IP:        offset(subnet.Addr(), firstNodeOffset+i),
			DataDir:   filepath.Join(dir, n),
			LogPath:   filepath.Join(dir, n+".log"),
			PIDPath:   filepath.Join(dir, n+".pid"),
		})
	}
	return p, nil
}

// DefaultDir is a cluster's directory unless --dir says otherwise.
func DefaultDir(name string) string { return filepath.Join(BaseDir, name) }

func hubNamespace(name string) string { return "shoal-" + name + "-hub" }

func nodeNamespace(name string, i int) string { return fmt.Sprintf("shoal-%s-n%d", name, i) }

// offset returns a+n for an IPv4 address.
func offset(a netip.Addr, n int) netip.Addr {
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += uint32(n)
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// ClusterNamespace reports whether a network namespace belongs to cluster
// name (its hub or one of its nodes) and, for a node, its index. Task
// namespaces (shoal-shoal-NAME-nI-TASK) do not match: runtime.Cleanup
// removes those.
func ClusterNamespace(name, ns string) (index int, ok bool) {
	rest, found := strings.CutPrefix(ns, "shoal-"+name+"-")
	if !found {
		return 0, false
	}
	if rest == "hub" {
		return 0, true
	}
	digits, found := strings.CutPrefix(rest, "n")
	if !found || digits == "" || digits[0] == '0' {
		return 0, false
	}
	i, err := strconv.Atoi(digits)
	if err != nil || i < 1 {
		return 0, false
	}
	return i, true
}

// Env is what a cluster's env file sets for the CLI.
type Env struct {
	// Addr is node n1's API address.
	Addr string
	// TokenFile is the API token's file, CACert the cluster CA's
	// certificate: the file holds no secret itself.
	TokenFile string
	CACert    string
	// Token is the token itself, as env files of clusters made before the
	// API served HTTPS held it.
	Token string
}

// EnvFile is the content of DIR/env: what a shell sources to talk to the
// cluster through its first node. It unsets SHOAL_TOKEN, which would
// otherwise win over the token file (and name another cluster's token).
func EnvFile(clusterName string, e Env) string {
	return fmt.Sprintf("# Shoal dev cluster %s: source this file to talk to it through node n1.\nunset SHOAL_TOKEN\nexport SHOAL_ADDR=%s\nexport SHOAL_TOKEN_FILE=%s\nexport SHOAL_CACERT=%s\n",
		clusterName, e.Addr, e.TokenFile, e.CACert)
}

// ParseEnvFile reads the variables of an EnvFile back.
func ParseEnvFile(content string) Env {
	var e Env
	for _, line := range strings.Split(content, "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(strings.TrimSpace(line), "export "), "=")
		if !ok {
			continue
		}
		switch k {
		case "SHOAL_ADDR":
			e.Addr = v
		case "SHOAL_TOKEN":
			e.Token = v
		case "SHOAL_TOKEN_FILE":
			e.TokenFile = v
		case "SHOAL_CACERT":
			e.CACert = v
		}
	}
	return e
}

// Client returns a client of the API at addr with the env file's token
// and CA.
func (e Env) Client(addr string) (*api.Client, error) {
	o := api.ClientOptions{Token: e.Token}
	if e.TokenFile != "" {
		tok, err := node.ReadSecretFile(e.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("the cluster's API token: %w", err)
		}
		o.Token = tok
	}
	if e.CACert != "" {
		pool, err := api.LoadCACert(e.CACert)
		if err != nil {
			return nil, fmt.Errorf("the cluster's CA: %w", err)
		}
		o.RootCAs = pool
	}
	return api.NewClientWithOptions(addr, o), nil
}

// readEnv reads the env file of the cluster in dir.
func readEnv(dir string) (Env, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		return Env{}, fmt.Errorf("read the cluster's env file: %w", err)
	}
	return ParseEnvFile(string(raw)), nil
}

// overlappingRoute returns the first route of `ip -j route show table
// all` output whose destination overlaps subnet; default routes are
// skipped, since they overlap everything and are shadowed by a more
// specific route anyway.
func overlappingRoute(ipJSON []byte, subnet netip.Prefix) (string, bool, error) {
	var routes []struct {
		Dst   string `json:"dst"`
		Dev   string `json:"dev"`
		Table string `json:"table"`
	}
	if err := json.Unmarshal(ipJSON, &routes); err != nil {
		return "", false, fmt.Errorf("parse ip route output: %w", err)
	}
	for _, r := range routes {
		if r.Dst == "" || r.Dst == "default" {
			continue
		}
		dst, err := netip.ParsePrefix(r.Dst)
		if err != nil {
			a, aerr := netip.ParseAddr(r.Dst)
			if aerr != nil {
				continue // not an address we understand (e.g. a multicast keyword)
			}
			dst = netip.PrefixFrom(a, a.BitLen())
		}
		if dst.Overlaps(subnet) {
			desc := r.Dst
			if r.Dev != "" {
				desc += " dev " + r.Dev
			}
			if r.Table != "" {
				desc += " table " + r.Table
			}
			return desc, true, nil
		}
	}
	return "", false, nil
}
