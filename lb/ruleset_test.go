package lb

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
)

var (
	testVIP  = netip.MustParseAddr("10.43.0.10")
	testVIP2 = netip.MustParseAddr("10.43.0.11")
)

// eps returns n healthy endpoints 10.96.1.11.. on port 8080, on node "a".
func eps(n int) []Endpoint {
	out := make([]Endpoint, n)
	for i := range out {
		out[i] = Endpoint{Node: "a", Replica: i, IP: netip.AddrFrom4([4]byte{10, 96, 1, byte(11 + i)}), Port: 8080, Healthy: true}
	}
	return out
}

func web(strategy string, endpoints []Endpoint) Service {
	return Service{Name: "web", VIP: testVIP, Port: 80, Strategy: strategy, Endpoints: endpoints}
}

func mustProgram(t *testing.T, cfg Config, services ...Service) *Ruleset {
	t.Helper()
	rs, err := Program(cfg, services)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestProgramFixedChains(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want map[string][]string
	}{
		{
			name: "defaults: node ports on every local address",
			cfg:  Config{},
			want: map[string][]string{
				chainNATPrerouting: {"jump services"},
				chainNATOutput:     {"jump services"},
				chainServices: {
					"ip daddr 10.43.0.0/16 ip saddr != 10.42.0.0/16 meta mark set meta mark | 0x00002000",
					"ip daddr . meta l4proto . th dport vmap @service-ips",
					"fib daddr type local ip daddr != 127.0.0.0/8 jump nodeports",
				},
				chainNodePorts: {
					"meta l4proto . th dport @nodeport-keys meta mark set meta mark | 0x00002000",
					"meta l4proto . th dport vmap @service-nodeports",
				},
				chainFilterPrerouting: {"ct state new ct status dnat ct original ip daddr 10.43.0.0/16 fib daddr . iif oif != 0 meta mark set meta mark | 0x00002000"},
				chainNATPostrouting: {
					"meta mark & 0x00002000 == 0 return",
					"meta mark set meta mark & 0xffffdfff",
					"masquerade fully-random",
				},
				chainFilterInput:   {"fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport @no-endpoint-nodeports goto reject"},
				chainFilterForward: {"ip daddr 10.43.0.0/16 goto reject"},
				chainFilterOutput:  {"ip daddr 10.43.0.0/16 goto reject"},
				chainReject:        {"meta l4proto tcp reject with tcp reset", "reject with icmp port-unreachable"},
			},
		},
		{
			name: "node IPs, another service range and mark",
			cfg: Config{
				NodeIPs:        []netip.Addr{netip.MustParseAddr("192.0.2.7")},
				ServiceCIDR:    netip.MustParsePrefix("10.50.0.0/20"),
				MasqueradeMark: 0x100,
			},
			want: map[string][]string{
				chainServices: {
					"ip daddr 10.50.0.0/20 ip saddr != 10.42.0.0/16 meta mark set meta mark | 0x00000100",
					"ip daddr . meta l4proto . th dport vmap @service-ips",
					"ip daddr @nodeport-ips jump nodeports",
				},
				chainFilterPrerouting: {"ct state new ct status dnat ct original ip daddr 10.50.0.0/20 fib daddr . iif oif != 0 meta mark set meta mark | 0x00000100"},
				chainNATPostrouting:   {"meta mark & 0x00000100 == 0 return", "meta mark set meta mark & 0xfffffeff", "masquerade fully-random"},
				chainFilterInput:      {"ip daddr @nodeport-ips meta l4proto . th dport @no-endpoint-nodeports goto reject"},
				chainFilterForward:    {"ip daddr 10.50.0.0/20 goto reject"},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := mustProgram(t, tc.cfg)
			for chain, want := range tc.want {
				if got := rs.chainRules(chain); !slices.Equal(got, want) {
					t.Errorf("chain %s:\n got %q\nwant %q", chain, got, want)
				}
			}
		})
	}
}

func TestProgramDNATsWithTheServicesStrategy(t *testing.T) {
	three := "{ 0 : 10.96.1.11 . 8080, 1 : 10.96.1.12 . 8080, 2 : 10.96.1.13 . 8080 }"
	for _, tc := range []struct {
		name, strategy string
		endpoints      []Endpoint
		want           string
	}{
		{"round robin is the default", "", eps(3), "dnat to numgen inc mod 3 map " + three},
		{"round robin", StrategyRoundRobin, eps(3), "dnat to numgen inc mod 3 map " + three},
		{"random", StrategyRandom, eps(3), "dnat to numgen random mod 3 map " + three},
		{"source hash", StrategySourceHash, eps(3), "dnat to jhash ip saddr mod 3 seed 0x5ca1ab1e map " + three},
		{"one endpoint needs no map", StrategyMaglev, eps(1), "dnat to 10.96.1.11:8080"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := mustProgram(t, Config{}, web(tc.strategy, tc.endpoints))
			want := []string{tc.want}
			if got := rs.chainRules("svc-web-tcp-80"); !slices.Equal(got, want) {
				t.Fatalf("\n got %q\nwant %q", got, want)
			}
		})
	}
}

func TestProgramMaglevMapFollowsTheMaglevTable(t *testing.T) {
	endpoints := eps(3)
	rs := mustProgram(t, Config{}, web(StrategyMaglev, endpoints))
	rules := rs.chainRules("svc-web-tcp-80")
	prefix := "dnat to jhash ip saddr mod 1021 seed 0x5ca1ab1e map { "
	if len(rules) != 1 || !strings.HasPrefix(rules[0], prefix) {
		t.Fatalf("rules %q", rules)
	}
	var anon *setSpec
	for _, r := range rs.rules {
		if r.anon != nil {
			anon = r.anon
		}
	}
	table, err := Maglev([]string{"a/0", "a/1", "a/2"}, DefaultMaglevTableSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(anon.elements) != len(table) {
		t.Fatalf("map has %d elements, want %d", len(anon.elements), len(table))
	}
	for b, owner := range table {
		want := fmt.Sprintf("%d : %s . 8080", b, endpoints[owner].IP)
		if got := anon.elementText(anon.elements[b]); got != want {
			t.Fatalf("bucket %d: %q, want %q", b, got, want)
		}
	}
}

func TestProgramUsesHealthyEndpointsInIdentityOrder(t *testing.T) {
	e := eps(4)
	e[1].Healthy = false
	// The same endpoints in another order, plus a duplicate identity.
	shuffled := []Endpoint{e[3], e[2], e[1], e[0], e[2]}
	rs := mustProgram(t, Config{}, web("", shuffled))
	want := "dnat to numgen inc mod 3 map { 0 : 10.96.1.11 . 8080, 1 : 10.96.1.13 . 8080, 2 : 10.96.1.14 . 8080 }"
	if got := rs.chainRules("svc-web-tcp-80"); got[0] != want {
		t.Fatalf("\n got %q\nwant %q", got[0], want)
	}
	if st := rs.Services(); len(st) != 1 || st[0].Endpoints != 3 {
		t.Fatalf("stats %+v", st)
	}
}

func TestProgramNodePortsJoinTheServiceChainAfterTheMasqueradeMark(t *testing.T) {
	s := web("", eps(2))
	s.NodePort = 30080
	udp := Service{Name: "dns", VIP: testVIP2, Port: 53, Protocol: ProtocolUDP, NodePort: 30053, Endpoints: eps(1)}
	rs := mustProgram(t, Config{}, s, udp)
	nodePorts := elementTexts(rs, setServiceNodePort)
	if want := []string{"udp . 30053 : goto svc-dns-udp-53", "tcp . 30080 : goto svc-web-tcp-80"}; !slices.Equal(nodePorts, want) {
		t.Fatalf("node ports %q, want %q", nodePorts, want)
	}
	if got, want := elementTexts(rs, setNodePortKeys), []string{"udp . 30053", "tcp . 30080"}; !slices.Equal(got, want) {
		t.Fatalf("node ports marked for masquerade %q, want %q", got, want)
	}
	vips := elementTexts(rs, setServiceIPs)
	if want := []string{"10.43.0.11 . udp . 53 : goto svc-dns-udp-53", "10.43.0.10 . tcp . 80 : goto svc-web-tcp-80"}; !slices.Equal(vips, want) {
		t.Fatalf("VIPs %q, want %q", vips, want)
	}
	if got, want := rs.chainRules("svc-dns-udp-53"), []string{"dnat to 10.96.1.11:8080"}; !slices.Equal(got, want) {
		t.Fatalf("svc-dns-udp-53 %q, want %q", got, want)
	}
}

func TestProgramNodePortOnlyServiceHasNoVIPEntry(t *testing.T) {
	s := Service{Name: "np", Port: 80, NodePort: 30099, Endpoints: eps(1)}
	rs := mustProgram(t, Config{}, s)
	if len(elementTexts(rs, setServiceIPs)) != 0 {
		t.Fatalf("VIP entries for a service without VIP:\n%s", rs)
	}
	if got := elementTexts(rs, setServiceNodePort); !slices.Equal(got, []string{"tcp . 30099 : goto svc-np-tcp-80"}) {
		t.Fatalf("node ports %q", got)
	}
}

func TestProgramRejectsServicesWithoutHealthyEndpoints(t *testing.T) {
	e := eps(2)
	e[0].Healthy, e[1].Healthy = false, false
	s := web("", e)
	s.NodePort = 30080
	rs := mustProgram(t, Config{}, s)
	// No DNAT at all: the VIP falls to the service-range reject, the node
	// port to the no-endpoint set on input.
	if len(elementTexts(rs, setServiceIPs)) != 0 || len(elementTexts(rs, setServiceNodePort)) != 0 {
		t.Fatalf("a service without endpoints is still in the dispatch maps:\n%s", rs)
	}
	if got := elementTexts(rs, setNoEndpointPorts); !slices.Equal(got, []string{"tcp . 30080"}) {
		t.Fatalf("no-endpoint node ports %q", got)
	}
	for _, c := range rs.chains {
		if strings.Contains(c.name, "web") {
			t.Fatalf("chain %s exists for a service without endpoints", c.name)
		}
	}
	if st := rs.Services(); len(st) != 1 || st[0].Endpoints != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestProgramLeavesOutInvalidServicesAndKeepsTheRest(t *testing.T) {
	good := web("", eps(1))
	bad := func(mut func(*Service)) Service {
		s := Service{Name: "bad", VIP: testVIP2, Port: 81, Endpoints: eps(1)}
		mut(&s)
		return s
	}
	badEndpoint := eps(2)
	badEndpoint[1].Port = 0
	for _, tc := range []struct {
		name string
		svc  Service
		want error
	}{
		{"upper-case name", bad(func(s *Service) { s.Name = "Bad" }), ErrInvalidService},
		{"empty name", bad(func(s *Service) { s.Name = "" }), ErrInvalidService},
		{"port 0", bad(func(s *Service) { s.Port = 0 }), ErrInvalidService},
		{"protocol", bad(func(s *Service) { s.Protocol = "sctp" }), ErrInvalidService},
		{"node port out of range", bad(func(s *Service) { s.NodePort = 8080 }), ErrInvalidService},
		{"strategy", bad(func(s *Service) { s.Strategy = "least_conn" }), ErrInvalidService},
		{"IPv6 VIP", bad(func(s *Service) { s.VIP = netip.MustParseAddr("fd00::1") }), ErrInvalidService},
		{"VIP outside the service range", bad(func(s *Service) { s.VIP = netip.MustParseAddr("10.44.0.1") }), ErrInvalidService},
		{"neither VIP nor node port", bad(func(s *Service) { s.VIP = netip.Addr{} }), ErrInvalidService},
		{"same VIP and port as web", bad(func(s *Service) { s.Name, s.VIP, s.Port = "zzz", testVIP, 80 }), ErrConflict},
		{"same node port as web", bad(func(s *Service) { s.Name, s.NodePort = "zzz", 30080 }), ErrConflict},
		{"more endpoints than maglev buckets", bad(func(s *Service) { s.Strategy = StrategyMaglev; s.Endpoints = eps(20) }), ErrMaglevSize},
		{"endpoint without a port", bad(func(s *Service) { s.Endpoints = badEndpoint }), ErrInvalidEndpoint},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := good
			g.NodePort = 30080
			rs := mustProgram(t, Config{MaglevTableSize: 17}, g, tc.svc)
			if len(rs.Invalid()) != 1 || !errors.Is(rs.Invalid()[0], tc.want) {
				t.Fatalf("invalid %v, want one %v", rs.Invalid(), tc.want)
			}
			if len(rs.chainRules("svc-web-tcp-80")) != 1 {
				t.Fatalf("the valid service was not programmed:\n%s", rs)
			}
		})
	}
}

func TestProgramRejectsUnusableConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Table: "shoal table"},
		{ServiceCIDR: netip.MustParsePrefix("fd00::/64")},
		{NodeIPs: []netip.Addr{netip.MustParseAddr("::1")}},
		{MasqueradeMark: 0x3},
		{MaglevTableSize: 1000},
	} {
		if _, err := Program(cfg, nil); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: got %v, want ErrInvalidConfig", cfg, err)
		}
	}
}

func TestProgramDoesNotDependOnInputOrder(t *testing.T) {
	var services []Service
	for i := range 20 {
		s := Service{Name: fmt.Sprintf("svc-%d", i), VIP: netip.AddrFrom4([4]byte{10, 43, 1, byte(i)}), Port: 80, Endpoints: eps(1 + i%4)}
		s.Strategy = []string{StrategyRoundRobin, StrategyRandom, StrategySourceHash, StrategyMaglev}[i%4]
		if i%3 == 0 {
			s.NodePort = uint16(30000 + i)
		}
		services = append(services, s)
	}
	want := mustProgram(t, Config{}, services...).String()
	r := rand.New(rand.NewPCG(1, 2))
	for range 5 {
		r.Shuffle(len(services), func(i, j int) { services[i], services[j] = services[j], services[i] })
		for i := range services {
			e := services[i].Endpoints
			r.Shuffle(len(e), func(i, j int) { e[i], e[j] = e[j], e[i] })
		}
		if got := mustProgram(t, Config{}, services...).String(); got != want {
			t.Fatal("a shuffled input programs a different table")
		}
	}
}

// TestProgramIsSelfConsistent checks what the kernel would reject: every
// set ID unique in the batch, every lookup naming a set of the batch,
// every verdict naming a chain of the table.
func TestProgramIsSelfConsistent(t *testing.T) {
	var services []Service
	for i, strategy := range []string{StrategyRoundRobin, StrategyRandom, StrategySourceHash, StrategyMaglev} {
		s := Service{Name: "s" + strategy[:2], VIP: netip.AddrFrom4([4]byte{10, 43, 0, byte(i + 1)}), Port: 443, NodePort: uint16(31000 + i), Strategy: strategy, Endpoints: eps(3)}
		services = append(services, s)
	}
	rs := mustProgram(t, Config{NodeIPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}, services...)
	chains := map[string]bool{}
	for _, c := range rs.chains {
		if chains[c.name] {
			t.Fatalf("chain %s twice", c.name)
		}
		chains[c.name] = true
	}
	ids := map[uint32]string{}
	named := map[string]uint32{}
	for _, s := range rs.sets {
		ids[s.id] = s.name
		named[s.name] = s.id
	}
	for _, r := range rs.rules {
		if !chains[r.chain] {
			t.Fatalf("rule %q in missing chain %s", r.text, r.chain)
		}
		if r.anon != nil {
			if _, dup := ids[r.anon.id]; dup {
				t.Fatalf("set ID %d used twice", r.anon.id)
			}
			ids[r.anon.id] = r.anon.name
		}
		for _, e := range r.exprs {
			switch e := e.(type) {
			case *expr.Lookup:
				if r.anon != nil && e.SetID == r.anon.id {
					continue
				}
				if named[e.SetName] != e.SetID {
					t.Fatalf("rule %q looks up %s/%d, not a set of the batch", r.text, e.SetName, e.SetID)
				}
			case *expr.Verdict:
				if e.Chain != "" && !chains[e.Chain] {
					t.Fatalf("rule %q jumps to missing chain %s", r.text, e.Chain)
				}
			}
		}
	}
	for _, s := range rs.sets {
		for _, e := range s.elements {
			if e.verdict != nil && !chains[e.verdict.Chain] {
				t.Fatalf("set %s element %q targets missing chain", s.name, s.elementText(e))
			}
			if len(e.key) != int(s.key.Bytes) {
				t.Fatalf("set %s element %q: key of %d bytes, type has %d", s.name, s.elementText(e), len(e.key), s.key.Bytes)
			}
		}
	}
}

func TestProgramKeysArePaddedConcatenations(t *testing.T) {
	if got, want := vipKey(testVIP, ProtocolUDP, 53), []byte{10, 43, 0, 10, 17, 0, 0, 0, 0, 53, 0, 0}; !slices.Equal(got, want) {
		t.Fatalf("vipKey %v, want %v", got, want)
	}
	if got, want := portKey(ProtocolTCP, 30080), []byte{6, 0, 0, 0, 0x75, 0x80, 0, 0}; !slices.Equal(got, want) {
		t.Fatalf("portKey %v, want %v", got, want)
	}
	if got, want := backendVal(netip.MustParseAddr("10.96.1.11"), 8080), []byte{10, 96, 1, 11, 0x1f, 0x90, 0, 0}; !slices.Equal(got, want) {
		t.Fatalf("backendVal %v, want %v", got, want)
	}
}

func elementTexts(rs *Ruleset, set string) []string {
	var out []string
	for _, s := range rs.sets {
		if s.name == set {
			for _, e := range s.elements {
				out = append(out, s.elementText(e))
			}
		}
	}
	return out
}

func BenchmarkProgram1000Services(b *testing.B) {
	services := manyServices(1000, 10, StrategyRoundRobin)
	for b.Loop() {
		if _, err := Program(Config{}, services); err != nil {
			b.Fatal(err)
		}
	}
}

// manyServices returns n services of m endpoints each, every third with a
// node port.
func manyServices(n, m int, strategy string) []Service {
	services := make([]Service, n)
	for i := range services {
		s := Service{
			Name:     fmt.Sprintf("svc-%04d", i),
			VIP:      netip.AddrFrom4([4]byte{10, 43, byte(i >> 8), byte(i)}),
			Port:     80,
			Strategy: strategy,
		}
		if i%3 == 0 {
			s.NodePort = uint16(30000 + i)
		}
		for j := range m {
			s.Endpoints = append(s.Endpoints, Endpoint{
				Node: fmt.Sprintf("node-%d", j), Replica: j,
				IP: netip.AddrFrom4([4]byte{10, 42, byte(j), byte(i % 250)}), Port: 8080, Healthy: true,
			})
		}
		services[i] = s
	}
	return services
}
