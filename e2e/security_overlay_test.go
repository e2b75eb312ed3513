package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/overlay"
	shoalrt "github.com/shoalmesh/shoal/runtime"
)

// rogueIP is a machine on the underlay that holds no key and is no member.
const rogueIP = "10.99.0.200"

// addRogue plugs a namespace into the hub bridge at rogueIP that routes
// the overlay range (and the service range) through via, as a neighbour of
// the cluster on the same network could. It is removed at cleanup.
func (c *Cluster) addRogue(t *testing.T, via *Node) string {
	t.Helper()
	name := c.id + "-rogue"
	t.Cleanup(func() {
		if err := run("ip", "netns", "del", name); err != nil {
			t.Errorf("remove rogue namespace: %v", err)
		}
	})
	for _, cmd := range [][]string{
		{"ip", "netns", "add", name},
		{"ip", "-n", name, "link", "set", "lo", "up"},
		{"ip", "-n", c.hub, "link", "add", "rogue", "type", "veth", "peer", "name", "eth0", "netns", name},
		{"ip", "-n", c.hub, "link", "set", "rogue", "master", "br0", "up"},
		{"ip", "-n", name, "addr", "add", rogueIP + "/24", "dev", "eth0"},
		{"ip", "-n", name, "link", "set", "eth0", "up"},
		{"ip", "-n", name, "route", "add", overlay.DefaultOverlayCIDR.String(), "via", via.IP},
	} {
		if err := run(cmd...); err != nil {
			t.Fatalf("create the rogue machine: %v", err)
		}
	}
	return "/run/netns/" + name
}

// noConnect reports an error if a TCP connection from the namespace at
// nsPath to addr succeeds within a short timeout.
func noConnect(nsPath, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	conn, err := shoalrt.DialInNetNS(ctx, nsPath, "tcp", addr)
	if err == nil {
		conn.Close()
		return fmt.Errorf("connected to %s", addr)
	}
	return nil
}

// nftOf runs nft in the node's namespace.
func (n *Node) nftOf(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.NS, "nft"}, args...)...).CombinedOutput()
	return string(out), err
}

var ipv4Re = regexp.MustCompile(`\b\d+\.\d+\.\d+\.\d+\b`)

// vxlanSources lists the underlay addresses n accepts VXLAN from.
func (n *Node) vxlanSources() ([]string, error) {
	out, err := n.nftOf("list", "set", "ip", "shoal_overlay_shoal0", "vxlan-sources")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	got := ipv4Re.FindAllString(out, -1)
	sort.Strings(got)
	return got, nil
}

// bridgeDrops is the packet count of the bridge table's final drop rule.
func (n *Node) bridgeDrops() (int, error) {
	out, err := n.nftOf("list", "chain", "bridge", "shoal_overlay_shoal0", "prerouting")
	if err != nil {
		return 0, fmt.Errorf("list bridge chain of %s: %v: %s", n.Name, err, out)
	}
	m := regexp.MustCompile(`counter packets (\d+) bytes \d+ drop`).FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no drop counter in %s's bridge chain:\n%s", n.Name, out)
	}
	return strconv.Atoi(m[1])
}

func TestSecurityOverlayClosedToTheUnderlay(t *testing.T) {
	c := startCluster(t, 3)
	c.LoadHello(t)
	ctx := context.Background()
	n1 := c.Nodes[0]
	if _, err := n1.Client().PutJob(ctx, webService("web", 3, "round_robin")); err != nil {
		t.Fatal(err)
	}
	// Replicas without a health check or service, one of which turns
	// rogue later.
	probe := helloContainerJob("probe", 2)
	probe.Health = nil
	if _, err := n1.Client().PutJob(ctx, probe); err != nil {
		t.Fatal(err)
	}
	svc := waitHealthyEndpoints(t, c.Nodes, "web", 3)
	vipURL := "http://" + svc.VIP + ":80/"
	var web, probes map[int]api.Allocation
	Eventually(t, 60*time.Second, "3 web and 2 probe replicas with overlay IPs", func() (bool, string) {
		var d1, d2 string
		web, d1 = replicaIPs(n1, "web")
		probes, d2 = replicaIPs(n1, "probe")
		return len(web) == 3 && len(probes) == 2, d1 + " " + d2
	})
	webNS := func(r int) string { return c.node(web[r].Node).taskNetNS(fmt.Sprintf("web-%d", r)) }

	t.Run("replicas on different nodes reach each other", func(t *testing.T) {
		for from := range web {
			for to, a := range web {
				if from == to {
					continue
				}
				out, err := httpGetFrom(webNS(from), "http://"+a.IP+":8080/")
				if err != nil || !strings.Contains(out, fmt.Sprintf("hello from web-%d", to)) {
					t.Errorf("web-%d on %s -> web-%d on %s: %q %v", from, web[from].Node, to, a.Node, out, err)
				}
			}
		}
	})
	t.Run("VIP from a replica and from every node", func(t *testing.T) {
		if seen := hits(t, webNS(0), vipURL, 12); len(seen) != 3 {
			t.Errorf("12 requests from web-0 to %s reached %v", vipURL, seen)
		}
		for _, n := range c.Nodes {
			if seen := hits(t, "/run/netns/"+n.NS, vipURL, 12); len(seen) != 3 {
				t.Errorf("12 requests from %s to %s reached %v", n.Name, vipURL, seen)
			}
		}
	})

	rogue := c.addRogue(t, n1)
	t.Run("an underlay host routing the overlay through a node reaches no replica", func(t *testing.T) {
		for _, job := range []map[int]api.Allocation{web, probes} {
			for r, a := range job {
				if err := noConnect(rogue, net.JoinHostPort(a.IP, "8080")); err != nil {
					t.Errorf("rogue -> replica %d on %s: %v", r, a.Node, err)
				}
			}
		}
	})
	t.Run("node ports answer the underlay host", func(t *testing.T) {
		for _, n := range c.Nodes {
			out, err := httpGetFrom(rogue, "http://"+n.IP+":30080/")
			if err != nil || !strings.Contains(out, "hello from web-") {
				t.Errorf("rogue -> node port of %s: %q %v", n.Name, out, err)
			}
		}
	})

	t.Run("a replica that takes another's address reaches nothing and hijacks nothing", func(t *testing.T) {
		// The probe replica that shares a node with a web replica takes
		// that replica's address.
		var spoofer, victim int
		var node *Node
		for p, pa := range probes {
			for w, wa := range web {
				if pa.Node == wa.Node {
					spoofer, victim, node = p, w, c.node(pa.Node)
				}
			}
		}
		if node == nil {
			t.Fatalf("no node runs both a probe and a web replica: web %v, probe %v", web, probes)
		}
		victimIP := web[victim].IP
		ownIP := probes[spoofer].IP
		task := fmt.Sprintf("probe-%d", spoofer)
		ns := "shoal-" + node.TaskNamespace() + "-" + task
		nsPath := node.taskNetNS(task)
		subnet, err := netip.ParsePrefix(ownIP + "/24")
		if err != nil {
			t.Fatal(err)
		}
		gw := overlay.Gateway(subnet.Masked()).String()
		readdress := func(ip string) {
			t.Helper()
			for _, cmd := range [][]string{
				{"ip", "-n", ns, "addr", "flush", "dev", "eth0"},
				{"ip", "-n", ns, "neigh", "flush", "dev", "eth0"},
				{"ip", "-n", ns, "addr", "add", ip + "/24", "dev", "eth0"},
				{"ip", "-n", ns, "route", "replace", "default", "via", gw, "dev", "eth0", "onlink"},
			} {
				if err := run(cmd...); err != nil {
					t.Fatal(err)
				}
			}
		}
		t.Cleanup(func() { readdress(ownIP) })
		if out, err := httpGetFrom(nsPath, vipURL); err != nil || !strings.Contains(out, "hello from web-") {
			t.Fatalf("%s -> VIP before the change: %q %v", task, out, err)
		}
		drops, dropsErr := node.bridgeDrops()

		readdress(victimIP)
		targets := []string{net.JoinHostPort(svc.VIP, "80"), net.JoinHostPort(node.IP, "30080"), net.JoinHostPort(gw, "53")}
		for _, a := range web {
			if a.IP != victimIP {
				targets = append(targets, net.JoinHostPort(a.IP, "8080"))
			}
		}
		for _, to := range targets {
			if err := noConnect(nsPath, to); err != nil {
				t.Errorf("%s with web-%d's address %s: %v", task, victim, victimIP, err)
			}
		}
		if after, err := node.bridgeDrops(); err != nil || dropsErr != nil || after <= drops {
			t.Errorf("%s's bridge dropped nothing (%d -> %d): %v %v", node.Name, drops, after, dropsErr, err)
		}
		// The node keeps sending the victim's traffic to the victim: the
		// spoofer's ARP did not teach it otherwise.
		want := fmt.Sprintf("hello from web-%d", victim)
		for i := 0; i < 5; i++ {
			out, err := httpGetFrom("/run/netns/"+node.NS, "http://"+victimIP+":8080/")
			if err != nil || !strings.Contains(out, want) {
				t.Fatalf("%s -> %s while %s claims it: %q %v", node.Name, victimIP, task, out, err)
			}
		}
		neigh, _ := exec.Command("ip", "-n", node.NS, "neigh", "show", victimIP).CombinedOutput()
		if mac := overlayMAC(ownIP); strings.Contains(string(neigh), mac) {
			t.Errorf("%s maps %s to the spoofer's MAC %s: %s", node.Name, victimIP, mac, neigh)
		}

		// Its own address works again.
		readdress(ownIP)
		Eventually(t, 10*time.Second, task+" reaches the VIP again with its own address", func() (bool, string) {
			out, err := httpGetFrom(nsPath, vipURL)
			return err == nil && strings.Contains(out, "hello from web-"), fmt.Sprintf("%q %v", out, err)
		})
	})

	t.Run("VXLAN is accepted from the members that have not left", func(t *testing.T) {
		n2, n3 := c.Nodes[1], c.Nodes[2]
		expect := func(n *Node, want ...string) {
			t.Helper()
			sort.Strings(want)
			Eventually(t, 30*time.Second, fmt.Sprintf("%s accepts VXLAN from %v", n.Name, want), func() (bool, string) {
				got, err := n.vxlanSources()
				if err != nil {
					return false, err.Error()
				}
				return strings.Join(got, " ") == strings.Join(want, " "), fmt.Sprint(got)
			})
		}
		expect(n1, n2.IP, n3.IP)
		expect(n2, n1.IP, n3.IP)
		// A member that leaves is dropped; one that fails is kept, for it
		// may come back.
		if err := n3.Terminate(); err != nil {
			t.Fatalf("stop %s: %v", n3.Name, err)
		}
		expect(n1, n2.IP)
		n2.Kill()
		waitStatuses(t, c.Nodes[:1], map[string]string{"n1": "alive", "n2": "failed", "n3": "left"}, 30*time.Second)
		// Past the membership change and a periodic resync of the overlay.
		time.Sleep(6 * time.Second)
		expect(n1, n2.IP)
	})
}

// overlayMAC is the MAC the overlay gives the container at ip.
func overlayMAC(ip string) string {
	a := netip.MustParseAddr(ip).As4()
	return fmt.Sprintf("0a:58:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3])
}
