package lb

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

var (
	webVIP  = netip.MustParseAddr("10.43.0.10")
	echoVIP = netip.MustParseAddr("10.43.0.11")
)

const (
	webNodePort  = 30080
	echoNodePort = 30053
)

// lbServices is the test's desired state: a TCP service "web" and a UDP
// service "echo" on the three backends, of which healthy[i] says whether
// be(i+1) gets traffic.
func lbServices(tp *topology, strategy string, healthy ...bool) []Service {
	var web, echo []Endpoint
	for i, ip := range tp.backendIPs {
		ok := len(healthy) == 0 || healthy[i]
		web = append(web, Endpoint{Node: "a", Replica: i, IP: ip, Port: webPort, Healthy: ok})
		echo = append(echo, Endpoint{Node: "a", Replica: i, IP: ip, Port: echoPort, Healthy: ok})
	}
	return []Service{
		{Name: "web", VIP: webVIP, Port: 80, NodePort: webNodePort, Strategy: strategy, Endpoints: web},
		{Name: "echo", VIP: echoVIP, Port: 5353, Protocol: ProtocolUDP, NodePort: echoNodePort, Strategy: strategy, Endpoints: echo},
	}
}

func newTestTable(t *testing.T, ns string) *Table {
	t.Helper()
	tb, err := NewTable(Config{
		NetNS:       ns,
		ServiceCIDR: netip.MustParsePrefix("10.43.0.0/16"),
		OverlayCIDR: netip.MustParsePrefix(overlayNS),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tb.Teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
		tb.Close()
	})
	return tb
}

func syncAll(t *testing.T, services []Service, tables ...*Table) {
	t.Helper()
	for _, tb := range tables {
		st, err := tb.Sync(services)
		if err != nil {
			t.Fatalf("sync: %v", err)
		}
		if len(st.Invalid) > 0 {
			t.Fatalf("sync left out %v", st.Invalid)
		}
	}
}

func wantEven(t *testing.T, what string, got map[string]int, names ...string) {
	t.Helper()
	total := 0
	for _, n := range got {
		total += n
	}
	want := map[string]int{}
	for _, n := range names {
		want[n] = total / len(names)
	}
	if !maps.Equal(got, want) {
		t.Fatalf("%s: %v, want %v", what, got, want)
	}
}

// nftConn opens nftables in namespace ns for the test's own checks.
func nftConn(t *testing.T, ns string) *nftables.Conn {
	t.Helper()
	h, err := netns.GetFromPath(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// tableChains lists the chains of the table in namespace ns.
func tableChains(t *testing.T, ns string) []string {
	t.Helper()
	chains, err := nftConn(t, ns).ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range chains {
		if c.Table.Name == DefaultTable {
			names = append(names, c.Name)
		}
	}
	slices.Sort(names)
	return names
}

func TestIntegrationNFTables(t *testing.T) {
	tp := newTopology(t)
	tableA, tableB := newTestTable(t, tp.a), newTestTable(t, tp.b)
	// Processes on node A reach VIPs through a route to the bridge.
	route := VIPRoute{NetNS: tp.a, CIDR: netip.MustParsePrefix("10.43.0.0/16"), Link: "br0", Src: netip.MustParseAddr(ipA)}
	if err := EnsureVIPRoute(route); err != nil {
		t.Fatal(err)
	}
	if err := EnsureVIPRoute(route); err != nil {
		t.Fatalf("second EnsureVIPRoute: %v", err)
	}
	t.Cleanup(func() {
		if err := RemoveVIPRoute(route); err != nil {
			t.Errorf("remove VIP route: %v", err)
		}
	})
	c1, c2, ext, nodeA := newClient(t, tp.c1), newClient(t, tp.c2), newClient(t, tp.ext), newClient(t, tp.a)
	be1 := newClient(t, tp.backends[0])
	webAddr := netip.AddrPortFrom(webVIP, 80).String()
	echoAddr := netip.AddrPortFrom(echoVIP, 5353).String()
	all := []string{"be1", "be2", "be3"}

	syncAll(t, lbServices(tp, StrategyRoundRobin), tableA, tableB)

	t.Run("round robin from a container reaches every backend in turn", func(t *testing.T) {
		wantEven(t, "c1 -> VIP", c1.askN(t, 30, "tcp", webAddr), all...)
	})
	t.Run("a process on the node reaches the VIP", func(t *testing.T) {
		wantEven(t, "node A -> VIP", nodeA.askN(t, 30, "tcp", webAddr), all...)
	})
	t.Run("a backend reaches its own service (hairpin)", func(t *testing.T) {
		// Routed (our masquerade) and, where br_netfilter exists, bridged
		// (the port's hairpin mode) paths.
		modes := []string{"0"}
		if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil {
			modes = append(modes, "1")
		}
		for _, mode := range modes {
			sysctl(t, tp.a, "net.bridge.bridge-nf-call-iptables", mode)
			if mode == "0" && len(modes) == 1 {
				t.Log("br_netfilter is not loaded; only the routed path is tested")
			}
			wantEven(t, "be1 -> VIP, bridge-nf-call-iptables="+mode, be1.askN(t, 30, "tcp", webAddr), all...)
			wantEven(t, "c1 -> VIP, bridge-nf-call-iptables="+mode, c1.askN(t, 30, "tcp", webAddr), all...)
		}
	})
	t.Run("node port on a node without backends (routing mesh)", func(t *testing.T) {
		wantEven(t, "ext -> B:nodeport", ext.askN(t, 30, "tcp", fmt.Sprintf("%s:%d", ipBExt, webNodePort)), all...)
		wantEven(t, "c1 -> A:nodeport", c1.askN(t, 30, "tcp", fmt.Sprintf("%s:%d", ipA, webNodePort)), all...)
	})
	t.Run("UDP through the VIP and a node port", func(t *testing.T) {
		wantEven(t, "c1 -> UDP VIP", c1.askN(t, 30, "udp", echoAddr), all...)
		wantEven(t, "ext -> B:udp nodeport", ext.askN(t, 30, "udp", fmt.Sprintf("%s:%d", ipBExt, echoNodePort)), all...)
	})

	t.Run("source hash keeps a client on the backend the kernel's jhash picks", func(t *testing.T) {
		syncAll(t, lbServices(tp, StrategySourceHash), tableA, tableB)
		for _, c := range []struct {
			cl *client
			ip string
		}{{c1, ipC1}, {c2, ipC2}} {
			want := all[addrBucket(netip.MustParseAddr(c.ip), 3, DefaultHashSeed)]
			if got := c.cl.askN(t, 15, "tcp", webAddr); !maps.Equal(got, map[string]int{want: 15}) {
				t.Fatalf("client %s: %v, want all on %s", c.ip, got, want)
			}
		}
	})

	t.Run("maglev follows its table and keeps clients when another backend leaves", func(t *testing.T) {
		syncAll(t, lbServices(tp, StrategyMaglev), tableA, tableB)
		predict := func(ip string, replicas ...int) string {
			ids := make([]string, len(replicas))
			for i, r := range replicas {
				ids[i] = fmt.Sprintf("a/%d", r)
			}
			table, err := Maglev(ids, DefaultMaglevTableSize)
			if err != nil {
				t.Fatal(err)
			}
			return all[replicas[table[addrBucket(netip.MustParseAddr(ip), DefaultMaglevTableSize, DefaultHashSeed)]]]
		}
		before := map[string]string{}
		for _, c := range []struct {
			cl *client
			ip string
		}{{c1, ipC1}, {c2, ipC2}} {
			want := predict(c.ip, 0, 1, 2)
			if got := c.cl.askN(t, 10, "tcp", webAddr); !maps.Equal(got, map[string]int{want: 10}) {
				t.Fatalf("client %s: %v, want all on %s", c.ip, got, want)
			}
			before[c.ip] = want
		}
		// Take away a backend that serves neither client.
		gone := -1
		for i, name := range all {
			if name != before[ipC1] && name != before[ipC2] {
				gone = i
			}
		}
		healthy := []bool{true, true, true}
		healthy[gone] = false
		syncAll(t, lbServices(tp, StrategyMaglev, healthy...), tableA)
		for ip, cl := range map[string]*client{ipC1: c1, ipC2: c2} {
			if got := cl.askN(t, 10, "tcp", webAddr); !maps.Equal(got, map[string]int{before[ip]: 10}) {
				t.Fatalf("after %s left, client %s: %v, want it to stay on %s", all[gone], ip, got, before[ip])
			}
		}
	})

	t.Run("an unhealthy endpoint gets no traffic", func(t *testing.T) {
		syncAll(t, lbServices(tp, StrategyRoundRobin, true, false, true), tableA, tableB)
		wantEven(t, "c1 -> VIP without be2", c1.askN(t, 30, "tcp", webAddr), "be1", "be3")
		wantEven(t, "ext -> B:nodeport without be2", ext.askN(t, 30, "tcp", fmt.Sprintf("%s:%d", ipBExt, webNodePort)), "be1", "be3")
		wantEven(t, "c1 -> UDP VIP without be2", c1.askN(t, 30, "udp", echoAddr), "be1", "be3")
	})

	t.Run("no healthy endpoint, unknown VIP port: refused at once", func(t *testing.T) {
		syncAll(t, lbServices(tp, StrategyRoundRobin, false, false, false), tableA, tableB)
		for _, tc := range []struct {
			cl            *client
			network, addr string
		}{
			{c1, "tcp", webAddr},
			{nodeA, "tcp", webAddr},
			{c1, "tcp", netip.AddrPortFrom(webVIP, 81).String()},
			{c1, "tcp", "10.43.9.9:80"},
			{c1, "tcp", fmt.Sprintf("%s:%d", ipA, webNodePort)},
			{ext, "tcp", fmt.Sprintf("%s:%d", ipBExt, webNodePort)},
			{c1, "udp", echoAddr},
		} {
			start := time.Now()
			name, err := tc.cl.ask(tc.network, tc.addr)
			if !errors.Is(err, unix.ECONNREFUSED) {
				t.Fatalf("%s %s: answer %q, error %v; want connection refused", tc.network, tc.addr, name, err)
			}
			if el := time.Since(start); el > time.Second {
				t.Fatalf("%s %s: refused after %v", tc.network, tc.addr, el)
			}
		}
	})

	t.Run("a rejected batch leaves the previous rules working", func(t *testing.T) {
		services := lbServices(tp, StrategyRoundRobin)
		syncAll(t, services, tableA)
		before := tableChains(t, tp.a)
		rs, err := Program(tableA.Config(), services[:1])
		if err != nil {
			t.Fatal(err)
		}
		// The kernel refuses a jump to a chain that does not exist; the
		// whole batch, table flush included, must be rolled back.
		rs.rules = append(rs.rules, &ruleSpec{chain: chainServices, text: "goto nowhere", exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictGoto, Chain: "nowhere"}}})
		if err := tableA.Apply(rs, nil); err == nil {
			t.Fatal("the kernel accepted a jump to a missing chain")
		}
		if after := tableChains(t, tp.a); !slices.Equal(before, after) {
			t.Fatalf("chains changed by a rejected batch:\n%v\n%v", before, after)
		}
		wantEven(t, "c1 -> VIP after a rejected sync", c1.askN(t, 30, "tcp", webAddr), all...)
		wantEven(t, "c1 -> UDP VIP after a rejected sync", c1.askN(t, 30, "udp", echoAddr), all...)
	})

	t.Run("sync is idempotent and deletes what went away", func(t *testing.T) {
		services := lbServices(tp, StrategyRoundRobin)
		syncAll(t, services, tableA)
		first := tableChains(t, tp.a)
		syncAll(t, services, tableA)
		if again := tableChains(t, tp.a); !slices.Equal(first, again) {
			t.Fatalf("a second identical sync changed the chains:\n%v\n%v", first, again)
		}
		st, err := tableA.Sync(services[:1]) // echo leaves
		if err != nil {
			t.Fatal(err)
		}
		if st.Deleted != 1 || st.Replaced {
			t.Fatalf("stats %+v, want the chain of echo deleted", st)
		}
		for _, c := range tableChains(t, tp.a) {
			if strings.Contains(c, "echo") {
				t.Fatalf("chain %s left after its service went away", c)
			}
		}
		if _, err := c1.ask("udp", echoAddr); !errors.Is(err, unix.ECONNREFUSED) {
			t.Fatalf("removed UDP service: %v, want refused", err)
		}
		wantEven(t, "c1 -> VIP", c1.askN(t, 30, "tcp", webAddr), all...)
	})

	t.Run("a table in an incompatible state is replaced whole", func(t *testing.T) {
		// As an older version might leave it: service-ips keyed by address
		// only, and a chain this version does not know.
		conn := nftConn(t, tp.b)
		tbl := &nftables.Table{Name: DefaultTable, Family: nftables.TableFamilyIPv4}
		conn.AddTable(tbl)
		conn.DelTable(tbl)
		conn.AddTable(tbl)
		if err := conn.AddSet(&nftables.Set{Table: tbl, Name: setServiceIPs, KeyType: nftables.TypeIPAddr}, nil); err != nil {
			t.Fatal(err)
		}
		conn.AddChain(&nftables.Chain{Table: tbl, Name: "from-an-older-version"})
		if err := conn.Flush(); err != nil {
			t.Fatal(err)
		}
		st, err := tableB.Sync(lbServices(tp, StrategyRoundRobin))
		if err != nil {
			t.Fatal(err)
		}
		if !st.Replaced {
			t.Fatalf("stats %+v: the update should have been refused and the table replaced", st)
		}
		if slices.Contains(tableChains(t, tp.b), "from-an-older-version") {
			t.Fatal("the old chain survived the replacement")
		}
		wantEven(t, "ext -> B:nodeport after the replacement", ext.askN(t, 30, "tcp", fmt.Sprintf("%s:%d", ipBExt, webNodePort)), all...)
	})

	t.Run("userspace proxy in node B's namespace", func(t *testing.T) {
		proxy, err := NewProxy(ProxyConfig{NetNS: tp.b, Addresses: []netip.Addr{netip.MustParseAddr(ipBExt)}, Logf: t.Logf})
		if err != nil {
			t.Fatal(err)
		}
		defer proxy.Close()
		services := lbServices(tp, StrategyRoundRobin)
		services[0].NodePort, services[1].NodePort = 31080, 31053 // beside the nftables node ports
		if err := proxy.Update(services); err != nil {
			t.Fatal(err)
		}
		wantEven(t, "ext -> B proxy tcp", ext.askN(t, 30, "tcp", fmt.Sprintf("%s:31080", ipBExt)), all...)
		wantEven(t, "ext -> B proxy udp", ext.askN(t, 30, "udp", fmt.Sprintf("%s:31053", ipBExt)), all...)
	})

	t.Run("DNS on the bridge gateway answers a container", func(t *testing.T) {
		d, err := NewDNS(DNSConfig{NetNS: tp.a, Listen: []string{ipA + ":53"}, Upstreams: []string{}})
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		d.Update(lbServices(tp, StrategyRoundRobin))
		for _, network := range []string{"udp", "tcp"} {
			conn, err := c1.socks.dial(t.Context(), network, netip.MustParseAddrPort(ipA+":53"))
			if err != nil {
				t.Fatal(err)
			}
			m := new(dns.Msg)
			m.SetQuestion("web.shoal.", dns.TypeA)
			r, _, err := (&dns.Client{Net: network, Timeout: 2 * time.Second}).ExchangeWithConn(m, &dns.Conn{Conn: conn})
			conn.Close()
			if err != nil {
				t.Fatalf("%s: %v", network, err)
			}
			if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != webVIP.String() {
				t.Fatalf("%s: web.shoal. A: %v", network, r)
			}
		}
	})

	t.Run("teardown removes the table", func(t *testing.T) {
		if err := tableB.Teardown(); err != nil {
			t.Fatal(err)
		}
		if err := tableB.Teardown(); err != nil {
			t.Fatalf("second teardown: %v", err)
		}
		if chains := tableChains(t, tp.b); len(chains) != 0 {
			t.Fatalf("chains left: %v", chains)
		}
	})
}
