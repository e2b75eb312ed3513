package lb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeUpstream is a second miekg/dns server on loopback that answers every
// A query with 192.0.2.1 and counts queries.
type fakeUpstream struct {
	addr    string
	mu      sync.Mutex
	queries []string
}

func startFakeUpstream(t *testing.T) *fakeUpstream {
	t.Helper()
	f := &fakeUpstream{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = pc.LocalAddr().String()
	l, err := net.Listen("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		f.mu.Lock()
		f.queries = append(f.queries, r.Question[0].Name)
		f.mu.Unlock()
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
			A:   net.ParseIP("192.0.2.1"),
		})
		_ = w.WriteMsg(m)
	})
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: handler}, {Listener: l, Handler: handler}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return f
}

func (f *fakeUpstream) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.queries)
}

func startDNS(t *testing.T, cfg DNSConfig) (*DNS, string) {
	t.Helper()
	if cfg.Listen == nil {
		cfg.Listen = []string{"127.0.0.1:0"}
	}
	d, err := NewDNS(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d, d.Addrs()[0].String()
}

func query(t *testing.T, server, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

func webService() []Service {
	e := eps(3)
	e[2].Healthy = false
	return []Service{
		{Name: "web", VIP: testVIP, Port: 80, PortName: "http", Endpoints: e},
		{Name: "web", VIP: testVIP, Port: 9090, PortName: "metrics", Endpoints: []Endpoint{
			{Node: "a", Replica: 0, IP: netip.MustParseAddr("10.96.1.11"), Port: 9100, Healthy: true},
		}},
		{Name: "dns", VIP: testVIP2, Port: 53, Protocol: ProtocolUDP, PortName: "dns", Endpoints: eps(1)},
	}
}

func TestDNSAnswersServiceNames(t *testing.T) {
	up := startFakeUpstream(t)
	d, addr := startDNS(t, DNSConfig{Upstreams: []string{up.addr}})
	d.Update(webService())
	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			r := query(t, addr, network, "web.shoal.", dns.TypeA)
			if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.43.0.10" {
				t.Fatalf("web.shoal. A: %v", r)
			}
			r = query(t, addr, network, "WEB.Shoal.", dns.TypeA)
			if len(r.Answer) != 1 {
				t.Fatalf("names are case-insensitive: %v", r)
			}

			r = query(t, addr, network, "_http._tcp.web.shoal.", dns.TypeSRV)
			var got []string
			for _, rr := range r.Answer {
				srv := rr.(*dns.SRV)
				got = append(got, fmt.Sprintf("%s:%d", srv.Target, srv.Port))
			}
			// Replica 2 is unhealthy and absent.
			if want := []string{"replica-0.web.shoal.:8080", "replica-1.web.shoal.:8080"}; !slices.Equal(got, want) {
				t.Fatalf("SRV targets %v, want %v", got, want)
			}
			var extra []string
			for _, rr := range r.Extra {
				if a, ok := rr.(*dns.A); ok {
					extra = append(extra, a.Hdr.Name+"="+a.A.String())
				}
			}
			if want := []string{"replica-0.web.shoal.=10.96.1.11", "replica-1.web.shoal.=10.96.1.12"}; !slices.Equal(extra, want) {
				t.Fatalf("additional %v, want %v", extra, want)
			}

			r = query(t, addr, network, "_metrics._tcp.web.shoal.", dns.TypeSRV)
			if len(r.Answer) != 1 || r.Answer[0].(*dns.SRV).Port != 9100 {
				t.Fatalf("second port of web: %v", r)
			}
			r = query(t, addr, network, "_dns._udp.dns.shoal.", dns.TypeSRV)
			if len(r.Answer) != 1 || r.Answer[0].(*dns.SRV).Port != 8080 {
				t.Fatalf("udp SRV: %v", r)
			}

			r = query(t, addr, network, "replica-1.web.shoal.", dns.TypeA)
			if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "10.96.1.12" {
				t.Fatalf("replica-1 A: %v", r)
			}
		})
	}
}

func TestDNSNegativeAnswers(t *testing.T) {
	d, addr := startDNS(t, DNSConfig{Upstreams: []string{}})
	d.Update(webService())
	for _, tc := range []struct {
		name  string
		qtype uint16
		rcode int
	}{
		{"nope.shoal.", dns.TypeA, dns.RcodeNameError},
		{"replica-2.web.shoal.", dns.TypeA, dns.RcodeNameError}, // unhealthy
		{"_http._udp.web.shoal.", dns.TypeSRV, dns.RcodeNameError},
		{"web.shoal.", dns.TypeAAAA, dns.RcodeSuccess},      // NODATA
		{"_tcp.web.shoal.", dns.TypeSRV, dns.RcodeSuccess},  // empty non-terminal
		{"shoal.", dns.TypeA, dns.RcodeSuccess},             // apex
		{"web.shoal.", dns.TypeSRV, dns.RcodeSuccess},       // NODATA
		{"example.org.", dns.TypeA, dns.RcodeServerFailure}, // no upstream
	} {
		r := query(t, addr, "udp", tc.name, tc.qtype)
		if r.Rcode != tc.rcode {
			t.Errorf("%s %s: rcode %s, want %s", tc.name, dns.TypeToString[tc.qtype], dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode])
			continue
		}
		if tc.rcode != dns.RcodeServerFailure {
			if len(r.Answer) != 0 {
				t.Errorf("%s: answers %v", tc.name, r.Answer)
			}
			if len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA {
				t.Errorf("%s: negative answer without the SOA: %v", tc.name, r.Ns)
			}
		}
	}
	r := query(t, addr, "udp", "shoal.", dns.TypeSOA)
	if len(r.Answer) != 1 || r.Answer[0].(*dns.SOA).Minttl != 5 {
		t.Fatalf("SOA: %v", r)
	}
}

func TestDNSForwardsOtherNamesUpstream(t *testing.T) {
	up := startFakeUpstream(t)
	_, addr := startDNS(t, DNSConfig{Upstreams: []string{up.addr}})
	for _, network := range []string{"udp", "tcp"} {
		r := query(t, addr, network, "example.org.", dns.TypeA)
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
			t.Fatalf("%s: forwarded answer %v", network, r)
		}
	}
	// The zone itself is never forwarded.
	query(t, addr, "udp", "web.shoal.", dns.TypeA)
	if got := up.seen(); !slices.Equal(got, []string{"example.org.", "example.org."}) {
		t.Fatalf("upstream saw %v", got)
	}
}

func TestDNSTriesTheNextUpstreamAndFailsWithServfail(t *testing.T) {
	up := startFakeUpstream(t)
	// A bound UDP socket that never answers.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	timeout := 200 * time.Millisecond
	_, addr := startDNS(t, DNSConfig{Upstreams: []string{silent.LocalAddr().String(), up.addr}, ForwardTimeout: timeout})
	if r := query(t, addr, "udp", "example.org.", dns.TypeA); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("second upstream's answer: %v", r)
	}

	_, addr = startDNS(t, DNSConfig{Upstreams: []string{silent.LocalAddr().String()}, ForwardTimeout: timeout})
	start := time.Now()
	r := query(t, addr, "udp", "example.org.", dns.TypeA)
	if r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if el := time.Since(start); el > 5*timeout {
		t.Fatalf("SERVFAIL took %v with a %v timeout", el, timeout)
	}
}

func TestDNSNeverForwardsToItself(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(rc, []byte("search example\nnameserver 127.0.0.1\nnameserver 10.0.0.2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := NewDNS(DNSConfig{Listen: []string{"127.0.0.1:53"}, ResolvConf: rc})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := d.Upstreams(), []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:53")}; !slices.Equal(got, want) {
		t.Fatalf("upstreams %v, want %v", got, want)
	}
	d, err = NewDNS(DNSConfig{Listen: []string{"0.0.0.0:53"}, Upstreams: []string{"127.0.0.53", "127.0.0.1:5353", "10.0.0.3:53"}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := d.Upstreams(), []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:5353"), netip.MustParseAddrPort("10.0.0.3:53")}; !slices.Equal(got, want) {
		t.Fatalf("upstreams %v, want %v", got, want)
	}
}

func TestDNSRejectsBadConfig(t *testing.T) {
	for _, cfg := range []DNSConfig{
		{},
		{Listen: []string{"localhost:53"}, Upstreams: []string{}},
		{Listen: []string{"127.0.0.1:53"}, Upstreams: []string{"dns.google"}},
		{Listen: []string{"127.0.0.1:53"}, Upstreams: []string{}, Domain: "bad..name"},
	} {
		if _, err := NewDNS(cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: got %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := NewDNS(DNSConfig{Listen: []string{"127.0.0.1:53"}, ResolvConf: "/nonexistent/resolv.conf"}); err == nil {
		t.Error("a missing resolv.conf is not reported")
	}
}

func TestDNSTruncatesLargeUDPAnswers(t *testing.T) {
	d, addr := startDNS(t, DNSConfig{Upstreams: []string{}})
	var e []Endpoint
	for i := range 60 {
		e = append(e, Endpoint{Node: "n", Replica: i, IP: netip.AddrFrom4([4]byte{10, 96, 2, byte(i + 1)}), Port: 8080, Healthy: true})
	}
	d.Update([]Service{{Name: "big", VIP: testVIP, Port: 80, Endpoints: e}})
	r := query(t, addr, "udp", "_http._tcp.big.shoal.", dns.TypeSRV)
	if !r.Truncated || len(r.Answer) >= 60 {
		t.Fatalf("UDP answer: %d records, truncated=%v", len(r.Answer), r.Truncated)
	}
	r = query(t, addr, "tcp", "_http._tcp.big.shoal.", dns.TypeSRV)
	if r.Truncated || len(r.Answer) != 60 {
		t.Fatalf("TCP answer: %d records, truncated=%v", len(r.Answer), r.Truncated)
	}
}

func TestDNSUpdateWhileAnswering(t *testing.T) {
	d, addr := startDNS(t, DNSConfig{Upstreams: []string{}})
	d.Update(webService())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s := webService()
			s[0].Endpoints = eps(1 + i%3)
			d.Update(s)
		}
	}()
	for range 200 {
		r := query(t, addr, "udp", "_http._tcp.web.shoal.", dns.TypeSRV)
		if n := len(r.Answer); n < 1 || n > 3 {
			t.Fatalf("%d SRV records mid-update", n)
		}
	}
	close(stop)
	wg.Wait()
}

func TestDNSStopsWhenTheContextEnds(t *testing.T) {
	d, err := NewDNS(DNSConfig{Listen: []string{"127.0.0.1:0"}, Upstreams: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	addr := d.Addrs()[0].String()
	query(t, addr, "tcp", "shoal.", dns.TypeSOA)
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting after the context ended")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Start after Close: %v", err)
	}
}

// FuzzDNSAnswer feeds arbitrary packets to the query path: whatever miekg
// decodes must get an answer that encodes again, and nothing may panic.
func FuzzDNSAnswer(f *testing.F) {
	for _, q := range []struct {
		name  string
		qtype uint16
	}{{"web.shoal.", dns.TypeA}, {"_http._tcp.web.shoal.", dns.TypeSRV}, {"replica-0.web.shoal.", dns.TypeANY}, {"shoal.", dns.TypeSOA}, {"x.example.", dns.TypeA}} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		m.SetEdns0(4096, false)
		b, _ := m.Pack()
		f.Add(b)
	}
	d, err := NewDNS(DNSConfig{Listen: []string{"127.0.0.1:0"}, Upstreams: []string{}})
	if err != nil {
		f.Fatal(err)
	}
	d.Update(webService())
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(dns.Msg)
		if err := req.Unpack(b); err != nil {
			return
		}
		for _, network := range []string{"udp", "tcp"} {
			resp := d.answer(req, network)
			if resp.Id != req.Id {
				t.Fatalf("answer id %d for query %d", resp.Id, req.Id)
			}
			if _, err := resp.Pack(); err != nil {
				t.Fatalf("answer to %v does not encode: %v", req.Question, err)
			}
		}
	})
}
