package lb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Defaults of DNSConfig.
const (
	// DefaultDNSDomain is the zone the server answers for.
	DefaultDNSDomain = "shoal."
	// DefaultDNSTTL is short because endpoints come and go with health.
	DefaultDNSTTL = 5 * time.Second
	// DefaultForwardTimeout bounds one exchange with one upstream.
	DefaultForwardTimeout = 2 * time.Second
	// DefaultResolvConf is where upstreams are read from when none are
	// given.
	DefaultResolvConf = "/etc/resolv.conf"
)

// DNSConfig configures the service DNS server.
type DNSConfig struct {
	// Listen lists "ip:port" addresses; each is served over UDP and TCP
	// on the same port (port 0 picks one, the same for both).
	Listen []string
	// Domain is the zone; default DefaultDNSDomain.
	Domain string
	// Upstreams ("ip" or "ip:port") answer every name outside the zone,
	// tried in order. nil reads the nameservers of ResolvConf; an empty,
	// non-nil slice turns forwarding off (such names get SERVFAIL).
	// Upstreams equal to a listen address are skipped, so the server never
	// forwards to itself.
	Upstreams []string
	// ResolvConf is read when Upstreams is nil; default DefaultResolvConf.
	ResolvConf string
	// TTL of every answer, and of negative answers; default DefaultDNSTTL.
	TTL time.Duration
	// ForwardTimeout bounds one upstream exchange; default
	// DefaultForwardTimeout.
	ForwardTimeout time.Duration
	// NetNS, if set, is the path of the network namespace to listen and
	// forward in.
	NetNS string
}

// DNS answers for the services: NAME.DOMAIN A is the VIP,
// _PORTNAME._PROTO.NAME.DOMAIN SRV lists the healthy endpoints (targets
// replica-N.NAME.DOMAIN, with their addresses in the additional section),
// replica-N.NAME.DOMAIN A is that replica's address. Unknown names in the
// zone get NXDOMAIN; names outside it are forwarded upstream.
type DNS struct {
	cfg       DNSConfig
	domain    string
	upstreams []netip.AddrPort
	ttl       uint32
	zone      atomic.Pointer[dnsZone]
	serial    atomic.Uint32

	mu      sync.Mutex
	socks   *sockets
	servers []*dns.Server
	addrs   []net.Addr
	stop    chan struct{}
	wg      sync.WaitGroup
	started bool
	closed  bool
}

// dnsZone is an immutable snapshot of the records, swapped whole by Update
// so lookups never take a lock.
type dnsZone struct {
	nodes map[string]*dnsNode // owner name relative to the zone, no trailing dot; "" is the apex
}

type dnsNode struct {
	a   []netip.Addr
	srv []srvTarget
}

type srvTarget struct {
	target string // relative, like "replica-0.web"
	port   uint16
	addrs  []netip.Addr
}

// ErrDNSStarted is returned by a second Start.
var ErrDNSStarted = errors.New("dns server already started")

// NewDNS validates cfg and resolves the upstreams; Start begins serving.
func NewDNS(cfg DNSConfig) (*DNS, error) {
	if len(cfg.Listen) == 0 {
		return nil, fmt.Errorf("dns: no listen address: %w", ErrInvalidConfig)
	}
	if cfg.Domain == "" {
		cfg.Domain = DefaultDNSDomain
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultDNSTTL
	}
	if cfg.ForwardTimeout <= 0 {
		cfg.ForwardTimeout = DefaultForwardTimeout
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = DefaultResolvConf
	}
	domain := dns.Fqdn(strings.ToLower(cfg.Domain))
	if _, ok := dns.IsDomainName(domain); !ok || domain == "." {
		return nil, fmt.Errorf("dns: domain %q: %w", cfg.Domain, ErrInvalidConfig)
	}
	var listen []netip.AddrPort
	for _, l := range cfg.Listen {
		ap, err := netip.ParseAddrPort(l)
		if err != nil {
			return nil, fmt.Errorf("dns: listen address %q: %v: %w", l, err, ErrInvalidConfig)
		}
		listen = append(listen, ap)
	}
	upstreams := cfg.Upstreams
	if upstreams == nil {
		rc, err := dns.ClientConfigFromFile(cfg.ResolvConf)
		if err != nil {
			return nil, fmt.Errorf("dns: read upstreams from %s: %w", cfg.ResolvConf, err)
		}
		for _, s := range rc.Servers {
			upstreams = append(upstreams, net.JoinHostPort(s, rc.Port))
		}
	}
	d := &DNS{cfg: cfg, domain: domain, ttl: uint32(max(cfg.TTL/time.Second, 1))}
	for _, u := range upstreams {
		ap, err := parseUpstream(u)
		if err != nil {
			return nil, fmt.Errorf("dns: upstream %q: %v: %w", u, err, ErrInvalidConfig)
		}
		if !forwardsToSelf(ap, listen) {
			d.upstreams = append(d.upstreams, ap)
		}
	}
	d.zone.Store(&dnsZone{nodes: map[string]*dnsNode{"": {}}})
	return d, nil
}

// parseUpstream accepts "ip" (port 53) or "ip:port".
func parseUpstream(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a.Unmap(), 53), nil
}

// forwardsToSelf reports whether up is one of the listen addresses, or a
// loopback address on the port of a wildcard listener.
func forwardsToSelf(up netip.AddrPort, listen []netip.AddrPort) bool {
	for _, l := range listen {
		if up == l {
			return true
		}
		if l.Addr().IsUnspecified() && l.Port() == up.Port() && up.Addr().IsLoopback() {
			return true
		}
	}
	return false
}

// Upstreams returns the servers names outside the zone are forwarded to.
func (d *DNS) Upstreams() []netip.AddrPort { return slices.Clone(d.upstreams) }

// Start opens the listeners and serves until ctx ends or Close is called.
// It returns once every listener is bound.
func (d *DNS) Start(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	if d.started {
		return ErrDNSStarted
	}
	d.started = true
	socks, err := newSockets(d.cfg.NetNS)
	if err != nil {
		return fmt.Errorf("dns: %w", err)
	}
	d.socks = socks
	d.stop = make(chan struct{})
	for _, l := range d.cfg.Listen {
		if err := d.listen(l); err != nil {
			d.shutdownLocked()
			return err
		}
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		select {
		case <-ctx.Done():
			go d.Close()
		case <-d.stop:
		}
	}()
	return nil
}

// listen binds UDP and TCP on one address, the same port for both, and
// starts a server on each; d.mu is held.
func (d *DNS) listen(addr string) error {
	ap := netip.MustParseAddrPort(addr) // validated by NewDNS
	var lastErr error
	// With port 0 the kernel picks the UDP port; TCP may find it taken, so
	// try a few times.
	for range 8 {
		pc, err := d.socks.listenPacket("udp", addr)
		if err != nil {
			return fmt.Errorf("dns: listen udp %s: %w", addr, err)
		}
		port := pc.LocalAddr().(*net.UDPAddr).Port
		l, err := d.socks.listen("tcp", netip.AddrPortFrom(ap.Addr(), uint16(port)).String())
		if err != nil {
			pc.Close()
			lastErr = fmt.Errorf("dns: listen tcp %s port %d: %w", ap.Addr(), port, err)
			if ap.Port() != 0 {
				return lastErr
			}
			continue
		}
		if err := d.serve(&dns.Server{PacketConn: pc, Handler: d, Net: "udp"}); err != nil {
			l.Close()
			return fmt.Errorf("dns: serve udp %s: %w", pc.LocalAddr(), err)
		}
		if err := d.serve(&dns.Server{Listener: l, Handler: d, Net: "tcp"}); err != nil {
			return fmt.Errorf("dns: serve tcp %s: %w", l.Addr(), err)
		}
		d.addrs = append(d.addrs, pc.LocalAddr())
		return nil
	}
	return lastErr
}

// serve starts s and returns once it is serving, or why it could not.
func (d *DNS) serve(s *dns.Server) error {
	started := make(chan struct{})
	s.NotifyStartedFunc = func() { close(started) }
	errc := make(chan error, 1)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		errc <- s.ActivateAndServe()
	}()
	select {
	case <-started:
		d.servers = append(d.servers, s)
		return nil
	case err := <-errc:
		if s.PacketConn != nil {
			s.PacketConn.Close()
		}
		if s.Listener != nil {
			s.Listener.Close()
		}
		return err
	}
}

// Addrs returns the bound addresses (the UDP ones; TCP uses the same).
func (d *DNS) Addrs() []net.Addr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.addrs)
}

// Close stops serving and waits for the server goroutines.
func (d *DNS) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.shutdownLocked()
	d.mu.Unlock()
	d.wg.Wait()
	if d.socks != nil {
		d.socks.close()
	}
	return nil
}

func (d *DNS) shutdownLocked() {
	if d.stop != nil {
		select {
		case <-d.stop:
		default:
			close(d.stop)
		}
	}
	for _, s := range d.servers {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.ShutdownContext(ctx)
		cancel()
	}
	d.servers = nil
}

// Update replaces the records with those of services. It is safe to call
// from any goroutine, while queries are being answered.
func (d *DNS) Update(services []Service) {
	set := checkServices(services)
	z := &dnsZone{nodes: map[string]*dnsNode{"": {}}}
	node := func(rel string) *dnsNode {
		n := z.nodes[rel]
		if n == nil {
			n = &dnsNode{}
			z.nodes[rel] = n
			// Every ancestor inside the zone exists too (an empty
			// non-terminal answers NODATA, not NXDOMAIN).
			for r := rel; ; {
				i := strings.IndexByte(r, '.')
				if i < 0 {
					break
				}
				r = r[i+1:]
				if z.nodes[r] == nil {
					z.nodes[r] = &dnsNode{}
				}
			}
		}
		return n
	}
	for i, s := range set.services {
		name := s.Name
		n := node(name)
		if s.VIP.IsValid() && !slices.Contains(n.a, s.VIP) {
			n.a = append(n.a, s.VIP)
		}
		portName := strings.ToLower(s.portName())
		srvName := ""
		if isDNSLabel(portName) {
			srvName = "_" + portName + "._" + s.proto() + "." + name
		}
		for _, b := range set.backends[i] {
			target := "replica-" + strconv.Itoa(b.Replica) + "." + name
			rn := node(target)
			if !slices.Contains(rn.a, b.IP) {
				rn.a = append(rn.a, b.IP)
			}
			if srvName == "" {
				continue
			}
			sn := node(srvName)
			if !slices.ContainsFunc(sn.srv, func(t srvTarget) bool { return t.target == target && t.port == b.Port }) {
				sn.srv = append(sn.srv, srvTarget{target: target, port: b.Port})
			}
		}
	}
	// Resolve SRV targets once, now that every replica's addresses are in.
	for _, n := range z.nodes {
		for i := range n.srv {
			n.srv[i].addrs = z.nodes[n.srv[i].target].a
		}
	}
	d.serial.Add(1)
	d.zone.Store(z)
}

// ServeDNS answers one query; it implements dns.Handler.
func (d *DNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	network := "udp"
	if _, ok := w.RemoteAddr().(*net.TCPAddr); ok {
		network = "tcp"
	}
	_ = w.WriteMsg(d.answer(req, network))
}

// answer computes the response to req received over network ("udp" or
// "tcp").
func (d *DNS) answer(req *dns.Msg, network string) *dns.Msg {
	resp := new(dns.Msg)
	if req.Opcode != dns.OpcodeQuery {
		return resp.SetRcode(req, dns.RcodeNotImplemented)
	}
	if len(req.Question) != 1 {
		return resp.SetRcode(req, dns.RcodeFormatError)
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if name == d.domain || strings.HasSuffix(name, "."+d.domain) {
		resp = d.local(req, q, strings.TrimSuffix(strings.TrimSuffix(name, d.domain), "."))
	} else {
		resp = d.forward(req, network)
	}
	if network == "udp" {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil {
			size = max(int(opt.UDPSize()), dns.MinMsgSize)
		}
		resp.Truncate(size)
	} else {
		resp.Compress = true
	}
	return resp
}

// local answers a name in the zone; rel is the name relative to it.
func (d *DNS) local(req *dns.Msg, q dns.Question, rel string) *dns.Msg {
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = len(d.upstreams) > 0
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(max(opt.UDPSize(), dns.MinMsgSize), false)
	}
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		resp.Rcode = dns.RcodeRefused
		return resp
	}
	z := d.zone.Load()
	n, ok := z.nodes[rel]
	if !ok {
		resp.Rcode = dns.RcodeNameError
		resp.Ns = []dns.RR{d.soa()}
		return resp
	}
	owner := q.Name
	anyType := q.Qtype == dns.TypeANY
	if rel == "" && (q.Qtype == dns.TypeSOA || anyType) {
		resp.Answer = append(resp.Answer, d.soa())
	}
	if q.Qtype == dns.TypeA || anyType {
		for _, a := range n.a {
			resp.Answer = append(resp.Answer, d.aRecord(owner, a))
		}
	}
	if q.Qtype == dns.TypeSRV || anyType {
		for _, t := range n.srv {
			target := t.target + "." + d.domain
			resp.Answer = append(resp.Answer, &dns.SRV{
				Hdr:      dns.RR_Header{Name: owner, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: d.ttl},
				Priority: 0, Weight: 10, Port: t.port, Target: target,
			})
			for _, a := range t.addrs {
				resp.Extra = append(resp.Extra, d.aRecord(target, a))
			}
		}
	}
	if len(resp.Answer) == 0 {
		resp.Ns = []dns.RR{d.soa()} // NODATA, cacheable for the TTL
	}
	return resp
}

func (d *DNS) aRecord(owner string, a netip.Addr) dns.RR {
	return &dns.A{
		Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: d.ttl},
		A:   a.AsSlice(),
	}
}

// soa is the zone's SOA; its minimum field makes negative answers live as
// long as positive ones.
func (d *DNS) soa() dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: d.domain, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: d.ttl},
		Ns:      "ns." + d.domain,
		Mbox:    "hostmaster." + d.domain,
		Serial:  d.serial.Load(),
		Refresh: 60, Retry: 60, Expire: 3600, Minttl: d.ttl,
	}
}

// forward asks the upstreams in turn and relays the first answer;
// SERVFAIL when none answers.
func (d *DNS) forward(req *dns.Msg, network string) *dns.Msg {
	for _, up := range d.upstreams {
		r, err := d.exchange(req, network, up)
		if err == nil {
			r.Id = req.Id
			return r
		}
	}
	resp := new(dns.Msg)
	resp.SetRcode(req, dns.RcodeServerFailure)
	resp.RecursionAvailable = len(d.upstreams) > 0
	return resp
}

func (d *DNS) exchange(req *dns.Msg, network string, up netip.AddrPort) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ForwardTimeout)
	defer cancel()
	socks := d.socks
	if socks == nil {
		socks = &sockets{} // answer called without Start (tests, fuzzing)
	}
	conn, err := socks.dial(ctx, network, up)
	if err != nil {
		return nil, fmt.Errorf("forward to %s: %w", up, err)
	}
	defer conn.Close()
	c := &dns.Client{Net: network, Timeout: d.cfg.ForwardTimeout}
	r, _, err := c.ExchangeWithConnContext(ctx, req, &dns.Conn{Conn: conn})
	if err != nil {
		return nil, fmt.Errorf("forward to %s: %w", up, err)
	}
	return r, nil
}
