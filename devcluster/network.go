package devcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns` keeps named network namespaces.
const netnsDir = "/run/netns"

// ip runs the ip command and returns its output; errors carry the command
// line and what ip printed.
func ip(ctx context.Context, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// clusterNamespaces lists the existing network namespaces of cluster
// name: its hub and node namespaces, sorted by name.
func clusterNamespaces(name string) ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	var out []string
	for _, e := range entries {
		if _, ok := ClusterNamespace(name, e.Name()); ok {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out, nil
}

// linkExists reports whether the host has a network interface of that name.
func linkExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

// checkSubnetFree fails if any route on the host, in any table, overlaps
// subnet: the cluster's on-link route would shadow it or be shadowed.
func checkSubnetFree(ctx context.Context, subnet netip.Prefix) error {
	out, err := exec.CommandContext(ctx, "ip", "-j", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return fmt.Errorf("list host routes: %w", err)
	}
	route, found, err := overlappingRoute(out, subnet)
	if err != nil {
		return err
	}
	if found {
		return fmt.Errorf("subnet %s is already routed on this host (%s); pick another with --subnet", subnet, route)
	}
	return nil
}

// createNetwork makes the hub with its bridge, the host's link to it and
// one namespace per node plugged into the bridge.
func createNetwork(ctx context.Context, p Plan) error {
	bits := strconv.Itoa(p.Subnet.Bits())
	steps := [][]string{
		{"netns", "add", p.Hub},
		{"-n", p.Hub, "link", "set", "lo", "up"},
		{"-n", p.Hub, "link", "add", "br0", "type", "bridge"},
		{"-n", p.Hub, "link", "set", "br0", "up"},
		// Created in the host and its peer moved at once, so no half of
		// the pair is ever left unnamed in the wrong namespace.
		{"link", "add", p.HostLink, "type", "veth", "peer", "name", "host", "netns", p.Hub},
		{"-n", p.Hub, "link", "set", "host", "master", "br0", "up"},
		{"addr", "add", p.HostIP.String() + "/" + bits, "dev", p.HostLink},
		{"link", "set", p.HostLink, "up"},
	}
	for _, n := range p.Nodes {
		steps = append(steps,
			[]string{"netns", "add", n.Namespace},
			[]string{"-n", n.Namespace, "link", "set", "lo", "up"},
			[]string{"-n", p.Hub, "link", "add", n.HubVeth, "type", "veth", "peer", "name", "eth0", "netns", n.Namespace},
			[]string{"-n", p.Hub, "link", "set", n.HubVeth, "master", "br0", "up"},
			[]string{"-n", n.Namespace, "addr", "add", n.IP.String() + "/" + bits, "dev", "eth0"},
			[]string{"-n", n.Namespace, "link", "set", "eth0", "up"},
		)
	}
	for _, s := range steps {
		if _, err := ip(ctx, s...); err != nil {
			return fmt.Errorf("create network: %w", err)
		}
	}
	return nil
}

// removeNamespace kills whatever still runs in a network namespace and
// deletes it (its links go with it). A process would keep the namespace
// alive after its name is gone, with nothing left to find it by.
func removeNamespace(ctx context.Context, ns string) error {
	out, err := ip(ctx, "netns", "pids", ns)
	if err == nil {
		var pids []int
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = unix.Kill(pid, unix.SIGKILL)
				pids = append(pids, pid)
			}
		}
		waitGone(pids, 5*time.Second)
	}
	if _, err := ip(ctx, "netns", "del", ns); err != nil {
		if _, serr := os.Stat(netnsDir + "/" + ns); errors.Is(serr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("delete network namespace %s: %w", ns, err)
	}
	return nil
}
