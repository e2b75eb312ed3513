package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	shoalrt "github.com/shoalmesh/shoal/runtime"
)

// webService is the hello image behind a service: VIP port 80 to the
// replicas' 8080, node port 30080.
func webService(id string, replicas int, strategy string) api.Job {
	j := helloContainerJob(id, replicas)
	j.Service = &api.Service{Port: 80, NodePort: 30080, Strategy: strategy}
	return j
}

// serviceOf returns the service of job as n reports it.
func serviceOf(n *Node, name string) (api.ServiceStatus, bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	svcs, err := n.Client().Services(ctx)
	if err != nil {
		return api.ServiceStatus{}, false, err.Error()
	}
	for _, s := range svcs {
		if s.Name == name {
			return s, true, fmt.Sprintf("%+v", s)
		}
	}
	return api.ServiceStatus{}, false, fmt.Sprintf("%+v", svcs)
}

// waitHealthyEndpoints waits until every node programs n healthy
// endpoints for the service.
func waitHealthyEndpoints(t *testing.T, nodes []*Node, name string, n int) api.ServiceStatus {
	t.Helper()
	var svc api.ServiceStatus
	for _, node := range nodes {
		Eventually(t, 60*time.Second, fmt.Sprintf("%s programs %d healthy endpoints of %s", node.Name, n, name), func() (bool, string) {
			s, ok, detail := serviceOf(node, name)
			healthy := 0
			for _, ep := range s.Endpoints {
				if ep.Healthy {
					healthy++
				}
			}
			svc = s
			return ok && healthy == n && s.VIP != "", detail
		})
	}
	return svc
}

// hits sends count requests from nsPath to url and counts the answers by
// replica ("hello from web-N").
func hits(t *testing.T, nsPath, url string, count int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for i := 0; i < count; i++ {
		out, err := httpGetFrom(nsPath, url)
		if err != nil {
			t.Fatalf("request %d from %s to %s: %v", i, nsPath, url, err)
		}
		seen[strings.TrimSpace(out)]++
	}
	return seen
}

func TestServiceVIPNodePortAndDNS(t *testing.T) {
	c := startCluster(t, 4)
	c.LoadHello(t)
	ctx := context.Background()
	if _, err := c.Nodes[0].Client().PutJob(ctx, webService("web", 3, "round_robin")); err != nil {
		t.Fatal(err)
	}
	svc := waitHealthyEndpoints(t, c.Nodes, "web", 3)
	vipURL := "http://" + svc.VIP + ":80/"

	// From a container on node 1 and from node 2 itself, 30 requests reach
	// all 3 replicas.
	var n1task, clientTask string
	var clientNode *Node
	st, _ := c.Nodes[0].Client().Job(ctx, "web")
	for _, a := range st.Allocations {
		if a.State == "running" && clientNode == nil {
			clientNode, clientTask = c.node(a.Node), fmt.Sprintf("web-%d", a.Replica)
			n1task = clientNode.taskNetNS(clientTask)
		}
	}
	if clientNode == nil {
		t.Fatalf("no replica running: %+v", st.Allocations)
	}
	for _, from := range []struct{ what, ns string }{{"a container", n1task}, {"node n2", "/run/netns/" + c.Nodes[1].NS}} {
		seen := hits(t, from.ns, vipURL, 30)
		if len(seen) != 3 {
			t.Errorf("30 requests from %s to %s reached %d replicas: %v", from.what, vipURL, len(seen), seen)
		}
	}

	// The node port answers on every node, also on the one without a
	// replica, from outside the cluster (the hub).
	var without *Node
	running := map[string]bool{}
	for _, a := range st.Allocations {
		if a.State == "running" {
			running[a.Node] = true
		}
	}
	for _, n := range c.Nodes {
		if !running[n.Name] {
			without = n
		}
		out, err := httpGetFrom("/run/netns/"+c.hub, "http://"+n.IP+":30080/")
		if err != nil || !strings.Contains(out, "hello from web-") {
			t.Errorf("node port on %s: %q %v", n.Name, out, err)
		}
	}
	if without == nil {
		t.Errorf("every node runs a replica: %+v", st.Allocations)
	}

	// DNS from inside a container, at the nameserver its resolv.conf
	// names: the name, its SRV records, one replica.
	n1pid := clientNode.containers(t)[clientTask].PID
	conf, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/etc/resolv.conf", n1pid))
	if err != nil {
		t.Fatal(err)
	}
	var nameserver string
	for _, line := range strings.Split(string(conf), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "nameserver" {
			nameserver = f[1]
		}
	}
	if nameserver == "" {
		t.Fatalf("no nameserver in the container's resolv.conf:\n%s", conf)
	}
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		return shoalrt.DialInNetNS(ctx, n1task, network, net.JoinHostPort(nameserver, "53"))
	}}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addrs, err := resolver.LookupHost(dctx, "web.shoal")
	if err != nil || len(addrs) != 1 || addrs[0] != svc.VIP {
		t.Errorf("web.shoal from a container = %v, %v; want [%s]", addrs, err, svc.VIP)
	}
	_, srvs, err := resolver.LookupSRV(dctx, "http", "tcp", "web.shoal")
	if err != nil || len(srvs) != 3 {
		t.Errorf("_http._tcp.web.shoal SRV = %v, %v; want 3 records", srvs, err)
	}
	for _, s := range srvs {
		if s.Port != 8080 {
			t.Errorf("SRV %s port %d, want 8080", s.Target, s.Port)
		}
	}
	if ips, err := resolver.LookupHost(dctx, "replica-0.web.shoal"); err != nil || len(ips) != 1 {
		t.Errorf("replica-0.web.shoal = %v, %v", ips, err)
	}

	// source_hash: one client, one replica, every time.
	sticky := webService("sticky", 3, "source_hash")
	sticky.Service.NodePort = 30081
	if _, err := c.Nodes[0].Client().PutJob(ctx, sticky); err != nil {
		t.Fatal(err)
	}
	ssvc := waitHealthyEndpoints(t, c.Nodes[:1], "sticky", 3)
	seen := hits(t, "/run/netns/"+c.Nodes[1].NS, "http://"+ssvc.VIP+":80/", 20)
	if len(seen) != 1 {
		t.Errorf("source_hash sent one client to %d replicas: %v", len(seen), seen)
	}
}

func TestServiceSurvivesANodeKill(t *testing.T) {
	c := startCluster(t, 3)
	c.LoadHello(t)
	ctx := context.Background()
	if _, err := c.Nodes[0].Client().PutJob(ctx, webService("web", 3, "round_robin")); err != nil {
		t.Fatal(err)
	}
	svc := waitHealthyEndpoints(t, c.Nodes, "web", 3)
	url := "http://" + svc.VIP + ":80/"
	from := "/run/netns/" + c.Nodes[0].NS

	// A steady request loop from n1 while n3 dies with its replica.
	type result struct {
		at  time.Time
		err error
	}
	results := make(chan result, 100000)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_, err := httpGetFrom(from, url)
			results <- result{time.Now(), err}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	time.Sleep(time.Second)
	killed := time.Now()
	c.Nodes[2].KillMachine()
	for _, n := range c.Nodes[:2] {
		Eventually(t, 60*time.Second, n.Name+" programs 3 healthy endpoints on the survivors", func() (bool, string) {
			s, _, detail := serviceOf(n, "web")
			healthy := 0
			for _, ep := range s.Endpoints {
				if ep.Node == c.Nodes[2].Name {
					return false, detail
				}
				if ep.Healthy {
					healthy++
				}
			}
			return healthy == 3, detail
		})
	}
	// Requests still in flight to the dead node end within their timeout.
	time.Sleep(4 * time.Second)
	close(stop)
	<-done
	close(results)
	var total, failed int
	var lastFail time.Time
	for r := range results {
		total++
		if r.err != nil {
			failed++
			lastFail = r.at
			t.Logf("failure %s after the kill: %v", r.at.Sub(killed).Round(time.Millisecond), r.err)
		}
	}
	recovered := time.Duration(0)
	if !lastFail.IsZero() {
		recovered = lastFail.Sub(killed)
	}
	t.Logf("MEASURE vip_under_node_kill requests=%d failed=%d last_failure_after_kill=%s", total, failed, recovered.Round(time.Millisecond))
	// The last seconds of the loop ran after the replacement was healthy
	// and the dead endpoint gone: nothing may fail there.
	if !lastFail.IsZero() && time.Since(lastFail) < time.Second {
		t.Errorf("requests still failing at the end: last failure %s ago", time.Since(lastFail))
	}
	var after []string
	if s, ok, _ := serviceOf(c.Nodes[0], "web"); ok {
		for _, ep := range s.Endpoints {
			after = append(after, ep.Node)
		}
	}
	sort.Strings(after)
	for _, n := range after {
		if n == c.Nodes[2].Name {
			t.Errorf("the dead node's endpoint is still programmed: %v", after)
		}
	}
}

func TestUserspaceProxyServesNodePorts(t *testing.T) {
	c := NewCluster(t)
	n1 := c.AddNode(WithArgs("--lb", "userspace"))
	n2 := c.AddNode(WithArgs("--lb", "userspace"))
	c.LoadHello(t)
	if _, err := n1.Client().PutJob(context.Background(), webService("web", 2, "round_robin")); err != nil {
		t.Fatal(err)
	}
	waitHealthyEndpoints(t, c.Nodes, "web", 2)
	for _, n := range []*Node{n1, n2} {
		Eventually(t, 10*time.Second, "node port via the proxy on "+n.Name, func() (bool, string) {
			out, err := httpGetFrom("/run/netns/"+c.hub, "http://"+n.IP+":30080/")
			return err == nil && strings.Contains(out, "hello from web-"), fmt.Sprint(out, err)
		})
	}
	tables, _ := exec.Command("ip", "netns", "exec", n1.NS, "nft", "list", "tables").CombinedOutput()
	if strings.Contains(string(tables), "table ip shoal\n") {
		t.Errorf("userspace mode programmed nftables: %s", tables)
	}
}
