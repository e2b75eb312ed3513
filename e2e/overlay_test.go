package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/overlay"
	shoalrt "github.com/shoalmesh/shoal/runtime"
)

// subnets returns each node's overlay subnet as n's gossip shows it.
func subnets(n *Node) (map[string]netip.Prefix, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nodes, err := n.Client().Nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string]netip.Prefix{}
	for _, m := range nodes {
		if m.Status != "alive" {
			continue
		}
		adv, err := overlay.ParseTag(m.Tags[overlay.TagKey])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.Name, err)
		}
		out[m.Name] = adv.Subnet
	}
	return out, nil
}

// httpGetFrom sends GET url from inside the network namespace at nsPath.
func httpGetFrom(nsPath, url string) (string, error) {
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return shoalrt.DialInNetNS(ctx, nsPath, network, addr)
		},
	}}
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	return string(raw), err
}

// taskNetNS is the network namespace of a task of n.
func (n *Node) taskNetNS(task string) string {
	return "/run/netns/shoal-" + n.TaskNamespace() + "-" + task
}

// replicaIPs returns replica -> (node, IP) of job's running replicas.
func replicaIPs(n *Node, job string) (map[int]api.Allocation, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := n.Client().Job(ctx, job)
	if err != nil {
		return nil, err.Error()
	}
	out := map[int]api.Allocation{}
	for _, a := range st.Allocations {
		if a.State == "running" && a.IP != "" {
			out[a.Replica] = a
		}
	}
	return out, fmt.Sprintf("%+v", st.Allocations)
}

func TestOverlayConnectsReplicasAcrossNodes(t *testing.T) {
	c := startCluster(t, 3)
	c.LoadHello(t)
	ctx := context.Background()

	var nets map[string]netip.Prefix
	Eventually(t, 20*time.Second, "three distinct subnets", func() (bool, string) {
		var err error
		nets, err = subnets(c.Nodes[0])
		if err != nil {
			return false, err.Error()
		}
		seen := map[netip.Prefix]bool{}
		for _, p := range nets {
			seen[p] = true
		}
		return len(nets) == 3 && len(seen) == 3, fmt.Sprint(nets)
	})

	job := helloContainerJob("web", 3)
	if _, err := c.Nodes[0].Client().PutJob(ctx, job); err != nil {
		t.Fatal(err)
	}
	var ips map[int]api.Allocation
	Eventually(t, 60*time.Second, "3 replicas with overlay IPs", func() (bool, string) {
		var detail string
		ips, detail = replicaIPs(c.Nodes[1], "web")
		return len(ips) == 3, detail
	})
	for r, a := range ips {
		ip := netip.MustParseAddr(a.IP)
		if !nets[a.Node].Contains(ip) {
			t.Errorf("replica %d on %s has %s, outside its node's subnet %s", r, a.Node, ip, nets[a.Node])
		}
	}

	// From every replica's container to every other replica, over TCP,
	// and from every node to every replica.
	reach := func(what, nsPath string, targets map[int]api.Allocation) {
		t.Helper()
		for r, a := range targets {
			want := fmt.Sprintf("hello from web-%d", r)
			Eventually(t, 10*time.Second, fmt.Sprintf("%s reaches replica %d at %s", what, r, a.IP), func() (bool, string) {
				out, err := httpGetFrom(nsPath, "http://"+a.IP+":8080/")
				if err != nil {
					return false, err.Error()
				}
				return strings.Contains(out, want), out
			})
		}
	}
	for r, a := range ips {
		reach(fmt.Sprintf("container of replica %d", r), c.node(a.Node).taskNetNS(fmt.Sprintf("web-%d", r)), ips)
	}
	for _, n := range c.Nodes {
		reach("node "+n.Name, "/run/netns/"+n.NS, ips)
	}

	// Plain processes (the exec driver) are on the overlay too.
	plain := api.Job{ID: "plain", Task: api.Task{
		Driver: "exec", Command: []string{Hello(t)}, Env: map[string]string{"PORT": "8081"},
		Resources: api.Resources{CPUMillis: 50, MemoryMB: 32},
	}}
	if _, err := c.Nodes[0].Client().PutJob(ctx, plain); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 30*time.Second, "exec replica reachable by its overlay IP from every node", func() (bool, string) {
		got, detail := replicaIPs(c.Nodes[0], "plain")
		a, ok := got[0]
		if !ok {
			return false, detail
		}
		for _, n := range c.Nodes {
			out, err := httpGetFrom("/run/netns/"+n.NS, "http://"+a.IP+":8081/")
			if err != nil || !strings.Contains(out, "hello from plain-0") {
				return false, fmt.Sprintf("from %s: %q %v", n.Name, out, err)
			}
		}
		return true, detail
	})

	// A node that dies leaves every other node's forwarding entries.
	victim := c.Nodes[2]
	victimNet := nets[victim.Name]
	for _, n := range c.Nodes[:2] {
		out, err := exec.Command("ip", "-n", n.NS, "route", "show").CombinedOutput()
		if err != nil || !strings.Contains(string(out), victimNet.String()+" via") {
			t.Fatalf("%s has no route to %s before the kill: %s %v", n.Name, victimNet, out, err)
		}
	}
	victim.KillMachine()
	for _, n := range c.Nodes[:2] {
		Eventually(t, 20*time.Second, n.Name+" drops the route to "+victimNet.String(), func() (bool, string) {
			out, err := exec.Command("ip", "-n", n.NS, "route", "show").CombinedOutput()
			return err == nil && !strings.Contains(string(out), victimNet.String()), string(out)
		})
	}

	// A new node is reachable from the existing containers without
	// restarting anything.
	n4 := c.AddNode(WithArgs("--labels", "role=new"))
	probe := helloContainerJob("probe", 1)
	probe.Constraints = []api.Constraint{{Label: "role", Op: "=", Value: "new"}}
	n4.LoadHello(t)
	if _, err := c.Nodes[0].Client().PutJob(ctx, probe); err != nil {
		t.Fatal(err)
	}
	var probeIP string
	Eventually(t, 60*time.Second, "probe running on n4 with an IP", func() (bool, string) {
		got, detail := replicaIPs(c.Nodes[0], "probe")
		if a, ok := got[0]; ok && a.Node == n4.Name {
			probeIP = a.IP
			return true, detail
		}
		return false, detail
	})
	// Every container that ran before the join reaches it, unrestarted.
	now, _ := replicaIPs(c.Nodes[0], "web")
	for r, a := range now {
		n := c.node(a.Node)
		if n == n4 {
			continue
		}
		task := fmt.Sprintf("web-%d", r)
		before := n.containers(t)[task].PID
		Eventually(t, 20*time.Second, "container "+task+" on "+n.Name+" reaches the new node's replica", func() (bool, string) {
			out, err := httpGetFrom(n.taskNetNS(task), "http://"+probeIP+":8080/")
			if err != nil {
				return false, err.Error()
			}
			return strings.Contains(out, "hello from probe-0"), out
		})
		if after := n.containers(t)[task].PID; after != before {
			t.Errorf("container %s restarted (pid %d -> %d) while a node joined", task, before, after)
		}
	}
}

func TestOverlaySubnetConflictIsResolved(t *testing.T) {
	c := NewCluster(t)
	const forced = "10.42.77.0/24"
	n1 := c.AddNode(WithArgs("--overlay-subnet", forced))
	// n2 claims the same subnet later, so its claim is the younger.
	time.Sleep(50 * time.Millisecond)
	n2 := c.AddNode(WithArgs("--overlay-subnet", forced, "--labels", "role=second"))
	Eventually(t, 30*time.Second, "n1 keeps the subnet, n2 moves", func() (bool, string) {
		nets, err := subnets(n1)
		if err != nil {
			return false, err.Error()
		}
		return len(nets) == 2 && nets["n1"].String() == forced && nets["n2"].IsValid() && nets["n2"] != nets["n1"], fmt.Sprint(nets)
	})
	n2.LoadHello(t)
	job := helloContainerJob("moved", 1)
	job.Constraints = []api.Constraint{{Label: "role", Op: "=", Value: "second"}}
	if _, err := n1.Client().PutJob(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	nets, _ := subnets(n1)
	Eventually(t, 60*time.Second, "n2's replica reachable from n1 in n2's new subnet", func() (bool, string) {
		got, detail := replicaIPs(n1, "moved")
		a, ok := got[0]
		if !ok {
			return false, detail
		}
		if !nets["n2"].Contains(netip.MustParseAddr(a.IP)) {
			return false, "ip outside n2's subnet: " + detail
		}
		out, err := httpGetFrom("/run/netns/"+n1.NS, "http://"+a.IP+":8080/")
		if err != nil {
			return false, err.Error()
		}
		return strings.Contains(out, "hello from moved-0"), out
	})
}

func TestCleanupOnShutdownRemovesTheOverlay(t *testing.T) {
	c := NewCluster(t)
	n := c.AddNode(WithArgs("--cleanup"))
	n.LoadHello(t)
	if _, err := n.Client().PutJob(context.Background(), helloContainerJob("gone", 2)); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 60*time.Second, "2 replicas with IPs", func() (bool, string) {
		got, detail := replicaIPs(n, "gone")
		return len(got) == 2, detail
	})
	links := func() string {
		out, _ := exec.Command("ip", "-n", n.NS, "-o", "link", "show").CombinedOutput()
		return string(out)
	}
	if l := links(); !strings.Contains(l, "shoal0") || !strings.Contains(l, "vsh") {
		t.Fatalf("overlay devices missing while running:\n%s", l)
	}
	if err := n.Terminate(); err != nil {
		t.Fatalf("agent exit: %v", err)
	}
	if l := links(); strings.Contains(l, "shoal0") || strings.Contains(l, "shoal.vx") || strings.Contains(l, "vsh") {
		t.Errorf("overlay devices left after --cleanup shutdown:\n%s", l)
	}
	tables, err := exec.Command("ip", "netns", "exec", n.NS, "nft", "list", "tables").CombinedOutput()
	if err != nil || strings.TrimSpace(string(tables)) != "" {
		t.Errorf("nftables tables left: %q %v", tables, err)
	}
	if left := n.containers(t); len(left) != 0 {
		t.Errorf("containers left: %v", left)
	}
}
