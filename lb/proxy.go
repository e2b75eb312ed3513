package lb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults of ProxyConfig.
const (
	// DefaultDialTimeout bounds one connection attempt to a backend; a
	// failed attempt moves on to the next backend (at most three tries).
	DefaultDialTimeout = 2 * time.Second
	// DefaultUDPIdleTimeout ends a UDP session after this long without a
	// datagram in either direction, like conntrack's UDP timeout.
	DefaultUDPIdleTimeout = 30 * time.Second
	// DefaultTCPIdleTimeout closes a proxied TCP connection after this
	// long without a byte in either direction (nginx's stream proxy
	// default), so clients that go silent do not hold sockets for ever.
	DefaultTCPIdleTimeout = 10 * time.Minute
	// DefaultMaxSessionsPerPort bounds the TCP connections and UDP
	// sessions open at once through one node port: a flood of clients
	// (or of spoofed UDP sources) costs the agent at most two sockets and
	// two goroutines each, this many times per port, and the other node
	// ports keep working.
	DefaultMaxSessionsPerPort = 1024
	// rejectLogEvery rate-limits the log line about a full node port.
	rejectLogEvery = 10 * time.Second
	// maxDialAttempts is the number of backends tried per connection.
	maxDialAttempts = 3
)

// ProxyConfig configures the userspace proxy.
type ProxyConfig struct {
	// Addresses the node ports listen on; empty means 0.0.0.0.
	Addresses []netip.Addr
	// DialTimeout, UDPIdleTimeout, TCPIdleTimeout: see the defaults.
	DialTimeout    time.Duration
	UDPIdleTimeout time.Duration
	TCPIdleTimeout time.Duration
	// MaxSessionsPerPort caps the TCP connections plus UDP sessions of
	// one node-port socket; past it new clients are refused (a TCP
	// connection is closed at once, a new UDP client's datagrams are
	// dropped) and counted in ProxyStats.Rejected. 0 means
	// DefaultMaxSessionsPerPort.
	MaxSessionsPerPort int
	// MaglevTableSize and HashSeed must match the nftables Config so both
	// paths choose the same backends; defaults as there.
	MaglevTableSize int
	HashSeed        uint32
	// NetNS, if set, is the path of the network namespace to listen and
	// dial in.
	NetNS string
	// Logf, if set, receives errors that have no caller to return to
	// (failed backend dials, accept errors).
	Logf func(format string, args ...any)
}

// ProxyStats counts the proxy's traffic since it started.
type ProxyStats struct {
	// Listeners is the number of open node-port sockets.
	Listeners int
	// TCPActive and TCPTotal count proxied connections.
	TCPActive, TCPTotal int64
	// UDPSessions is the number of live UDP client sessions.
	UDPSessions int64
	// DialErrors counts failed connection attempts to backends.
	DialErrors int64
	// Rejected counts clients refused because their node port had
	// MaxSessionsPerPort sessions open; IdleClosed counts TCP connections
	// closed after TCPIdleTimeout without traffic.
	Rejected, IdleClosed int64
}

// Proxy forwards node ports in userspace, for nodes where nftables cannot
// be used. It listens on every service's node port and relays each TCP
// connection, or each UDP client's datagrams, to a backend chosen with the
// service's strategy. Node ports face the world, so each one serves at
// most MaxSessionsPerPort clients at once and drops those that go idle.
type Proxy struct {
	cfg   ProxyConfig
	socks *sockets

	mu        sync.Mutex
	listeners map[listenKey]*listener
	conns     map[io.Closer]struct{} // live backend and client sockets
	closed    bool

	wg          sync.WaitGroup
	tcpActive   atomic.Int64
	tcpTotal    atomic.Int64
	udpSessions atomic.Int64
	dialErrors  atomic.Int64
	rejected    atomic.Int64
	idleClosed  atomic.Int64
}

type listenKey struct {
	proto string
	addr  netip.AddrPort
}

// listener is one node-port socket; its picker is swapped on Update while
// connections keep the backend they were given.
type listener struct {
	key    listenKey
	picker atomic.Pointer[picker]
	tcp    net.Listener
	udp    *net.UDPConn

	// active counts the socket's TCP connections and UDP sessions, for
	// MaxSessionsPerPort.
	active atomic.Int64
	// lastRejectLog is when a refusal was last logged (unix nanoseconds).
	lastRejectLog atomic.Int64

	mu       sync.Mutex
	sessions map[netip.AddrPort]*udpSession
}

// NewProxy returns a proxy with no listeners; Update opens them.
func NewProxy(cfg ProxyConfig) (*Proxy, error) {
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.UDPIdleTimeout <= 0 {
		cfg.UDPIdleTimeout = DefaultUDPIdleTimeout
	}
	if cfg.TCPIdleTimeout <= 0 {
		cfg.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	if cfg.MaxSessionsPerPort <= 0 {
		cfg.MaxSessionsPerPort = DefaultMaxSessionsPerPort
	}
	if cfg.MaglevTableSize == 0 {
		cfg.MaglevTableSize = DefaultMaglevTableSize
	}
	if cfg.HashSeed == 0 {
		cfg.HashSeed = DefaultHashSeed
	}
	if !isPrime(cfg.MaglevTableSize) {
		return nil, fmt.Errorf("proxy: maglev table size %d is not prime: %w", cfg.MaglevTableSize, ErrInvalidConfig)
	}
	if len(cfg.Addresses) == 0 {
		cfg.Addresses = []netip.Addr{netip.IPv4Unspecified()}
	}
	for _, a := range cfg.Addresses {
		if !a.Is4() {
			return nil, fmt.Errorf("proxy: listen address %s is not IPv4: %w", a, ErrInvalidConfig)
		}
	}
	socks, err := newSockets(cfg.NetNS)
	if err != nil {
		return nil, err
	}
	return &Proxy{
		cfg:       cfg,
		socks:     socks,
		listeners: map[listenKey]*listener{},
		conns:     map[io.Closer]struct{}{},
	}, nil
}

// Update makes the proxy serve exactly the node ports of services: new
// ones are opened, removed ones closed, and the backends of the others
// replaced. Established TCP connections and UDP sessions keep their
// backend, even one that left (as conntrack does for nftables); only a
// closed node port ends its UDP sessions. Services without a node port are
// ignored. The error joins the listeners that could not be opened and the
// services left out; everything else is served.
func (p *Proxy) Update(services []Service) error {
	set := checkServices(services)
	errs := set.invalid
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	want := map[listenKey]bool{}
	for i, s := range set.services {
		if s.NodePort == 0 {
			continue
		}
		for _, a := range p.cfg.Addresses {
			key := listenKey{proto: s.proto(), addr: netip.AddrPortFrom(a, s.NodePort)}
			want[key] = true
			l := p.listeners[key]
			pk, err := newPicker(s, set.backends[i], p.cfg.MaglevTableSize, p.cfg.HashSeed, pickerOf(l))
			if err != nil {
				errs = append(errs, fmt.Errorf("service %s: %w", s.Key(), err))
				delete(want, key)
				continue
			}
			if l == nil {
				l, err = p.open(key, pk)
				if err != nil {
					errs = append(errs, err)
					delete(want, key)
					continue
				}
				p.listeners[key] = l
			}
			l.picker.Store(pk)
		}
	}
	for key, l := range p.listeners {
		if !want[key] {
			l.close()
			delete(p.listeners, key)
		}
	}
	return errors.Join(errs...)
}

func pickerOf(l *listener) *picker {
	if l == nil {
		return nil
	}
	return l.picker.Load()
}

// open starts serving one node-port socket with pk; p.mu is held.
func (p *Proxy) open(key listenKey, pk *picker) (*listener, error) {
	l := &listener{key: key, sessions: map[netip.AddrPort]*udpSession{}}
	l.picker.Store(pk)
	svc := pk.svc
	addr := key.addr.String()
	switch key.proto {
	case ProtocolTCP:
		ln, err := p.socks.listen("tcp4", addr)
		if err != nil {
			return nil, fmt.Errorf("proxy %s: listen tcp %s: %w", svc, addr, err)
		}
		l.tcp = ln
		p.wg.Add(1)
		go p.serveTCP(l)
	case ProtocolUDP:
		pc, err := p.socks.listenPacket("udp4", addr)
		if err != nil {
			return nil, fmt.Errorf("proxy %s: listen udp %s: %w", svc, addr, err)
		}
		l.udp = pc.(*net.UDPConn)
		p.wg.Add(1)
		go p.serveUDP(l)
	}
	return l, nil
}

// Addrs returns the addresses the proxy listens on, as "proto/ip:port".
func (p *Proxy) Addrs() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for k := range p.listeners {
		out = append(out, k.proto+"/"+k.addr.String())
	}
	return out
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() ProxyStats {
	p.mu.Lock()
	n := len(p.listeners)
	p.mu.Unlock()
	return ProxyStats{
		Listeners:   n,
		TCPActive:   p.tcpActive.Load(),
		TCPTotal:    p.tcpTotal.Load(),
		UDPSessions: p.udpSessions.Load(),
		DialErrors:  p.dialErrors.Load(),
		Rejected:    p.rejected.Load(),
		IdleClosed:  p.idleClosed.Load(),
	}
}

// admit takes one of the listener's session slots; false means the port is
// full and the client is refused.
func (p *Proxy) admit(l *listener, client string) bool {
	if l.active.Add(1) <= int64(p.cfg.MaxSessionsPerPort) {
		return true
	}
	l.active.Add(-1)
	p.rejected.Add(1)
	now := time.Now().UnixNano()
	if last := l.lastRejectLog.Load(); now-last >= int64(rejectLogEvery) && l.lastRejectLog.CompareAndSwap(last, now) {
		p.logf("proxy %s: %d sessions open on %s/%s, the most allowed: refusing new clients such as %s",
			l.name(), p.cfg.MaxSessionsPerPort, l.key.proto, l.key.addr, client)
	}
	return false
}

// Close stops every listener, ends every proxied connection and session,
// and waits for the proxy's goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for key, l := range p.listeners {
		l.close()
		delete(p.listeners, key)
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	p.socks.close()
	return nil
}

// name is the key of the service the listener currently serves.
func (l *listener) name() string { return l.picker.Load().svc }

func (l *listener) close() {
	if l.tcp != nil {
		l.tcp.Close()
	}
	if l.udp != nil {
		l.udp.Close()
		l.mu.Lock()
		for _, s := range l.sessions {
			s.conn.Close()
		}
		l.mu.Unlock()
	}
}

// track registers c so Close can end it; false means the proxy is closing.
func (p *Proxy) track(c io.Closer) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c io.Closer) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *Proxy) logf(format string, args ...any) {
	if p.cfg.Logf != nil {
		p.cfg.Logf(format, args...)
	}
}

// dialBackend connects to the client's backend, moving on to the next one
// when a connection attempt fails.
func (p *Proxy) dialBackend(l *listener, network string, client netip.Addr) (net.Conn, error) {
	pk := l.picker.Load()
	first, ok := pk.pick(client)
	var errs []error
	for attempt := range min(maxDialAttempts, len(pk.backends)) {
		if !ok {
			break
		}
		be := pk.backends[(first+attempt)%len(pk.backends)]
		ctx, cancel := context.WithTimeout(context.Background(), p.cfg.DialTimeout)
		c, err := p.socks.dial(ctx, network, be)
		cancel()
		if err == nil {
			return c, nil
		}
		p.dialErrors.Add(1)
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("service %s: no healthy endpoint", pk.svc)
	}
	return nil, fmt.Errorf("service %s: %w", pk.svc, errors.Join(errs...))
}

func (p *Proxy) serveTCP(l *listener) {
	defer p.wg.Done()
	var backoff time.Duration
	for {
		c, err := l.tcp.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: slow down, keep going.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			p.logf("proxy %s: accept: %v", l.name(), err)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		if !p.admit(l, c.RemoteAddr().String()) {
			c.Close()
			continue
		}
		p.wg.Add(1)
		go p.relayTCP(l, c)
	}
}

// relayTCP copies both ways between a client and its backend. Each
// direction half-closes the other side when it ends, so protocols that
// shut down writing and then read keep working. A connection without
// traffic either way for TCPIdleTimeout is closed. It gives back the
// session slot admit took.
func (p *Proxy) relayTCP(l *listener, client net.Conn) {
	defer p.wg.Done()
	defer l.active.Add(-1)
	defer client.Close()
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	from := addrOf(client.RemoteAddr())
	backend, err := p.dialBackend(l, "tcp", from)
	if err != nil {
		p.logf("proxy %s: client %s: %v", l.name(), from, err)
		return
	}
	defer backend.Close()
	if !p.track(backend) {
		return
	}
	defer p.untrack(backend)
	p.tcpTotal.Add(1)
	p.tcpActive.Add(1)
	defer p.tcpActive.Add(-1)

	s := &tcpSession{client: client, backend: backend, idle: p.cfg.TCPIdleTimeout}
	s.touch()
	done := make(chan struct{})
	go func() {
		s.copyHalf(backend, client)
		close(done)
	}()
	s.copyHalf(client, backend)
	<-done
	if s.timedOut.Load() {
		p.idleClosed.Add(1)
	}
}

// tcpSession is one proxied connection: both sockets and when a byte last
// went through either way.
type tcpSession struct {
	client, backend net.Conn
	idle            time.Duration
	last            atomic.Int64 // unix nanoseconds
	timedOut        atomic.Bool
}

func (s *tcpSession) touch() { s.last.Store(time.Now().UnixNano()) }

// expire closes both sockets, which ends both directions.
func (s *tcpSession) expire() {
	s.timedOut.Store(true)
	s.client.Close()
	s.backend.Close()
}

// copyHalf copies src to dst, then closes dst for writing (or entirely,
// if it cannot half-close). Reads and writes time out after the idle
// time: the session ends once neither direction has moved for that long,
// or when dst stops reading for that long.
func (s *tcpSession) copyHalf(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		_ = src.SetReadDeadline(time.Now().Add(s.idle))
		n, err := src.Read(buf)
		if n > 0 {
			s.touch()
			_ = dst.SetWriteDeadline(time.Now().Add(s.idle))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				if isTimeout(werr) {
					s.expire()
				}
				return
			}
			s.touch()
		}
		if err == nil {
			continue
		}
		if isTimeout(err) {
			if time.Since(time.Unix(0, s.last.Load())) < s.idle {
				continue // the other direction is busy
			}
			s.expire()
			return
		}
		break // EOF, or closed by the other direction or Close
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	} else {
		_ = dst.Close()
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func addrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// udpSession relays one client's datagrams through a connected socket to
// its backend; replies go back from the node-port socket.
type udpSession struct {
	client netip.AddrPort
	conn   net.Conn
	last   atomic.Int64 // unix nanoseconds of the last datagram either way
}

func (s *udpSession) touch() { s.last.Store(time.Now().UnixNano()) }

func (p *Proxy) serveUDP(l *listener) {
	defer p.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, from, err := l.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			p.logf("proxy %s: read: %v", l.name(), err)
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		s := p.udpSession(l, from)
		if s == nil {
			continue // no backend; the datagram is dropped
		}
		s.touch()
		if _, err := s.conn.Write(buf[:n]); err != nil {
			p.logf("proxy %s: client %s: send to backend: %v", l.name(), from, err)
		}
	}
}

// udpSession returns the client's session, starting one if needed and
// the port has a free session slot.
func (p *Proxy) udpSession(l *listener, client netip.AddrPort) *udpSession {
	l.mu.Lock()
	s := l.sessions[client]
	l.mu.Unlock()
	if s != nil {
		return s
	}
	if !p.admit(l, client.String()) {
		return nil
	}
	conn, err := p.dialBackend(l, "udp", client.Addr())
	if err != nil {
		l.active.Add(-1)
		p.logf("proxy %s: client %s: %v", l.name(), client, err)
		return nil
	}
	if !p.track(conn) {
		l.active.Add(-1)
		conn.Close()
		return nil
	}
	s = &udpSession{client: client, conn: conn}
	s.touch()
	l.mu.Lock()
	l.sessions[client] = s
	l.mu.Unlock()
	p.udpSessions.Add(1)
	p.wg.Add(1)
	go p.udpReplies(l, s)
	return s
}

// udpReplies sends the backend's datagrams to the client until the session
// has been idle for UDPIdleTimeout or its socket is closed.
func (p *Proxy) udpReplies(l *listener, s *udpSession) {
	defer p.wg.Done()
	defer func() {
		l.mu.Lock()
		if l.sessions[s.client] == s {
			delete(l.sessions, s.client)
		}
		l.mu.Unlock()
		s.conn.Close()
		p.untrack(s.conn)
		p.udpSessions.Add(-1)
		l.active.Add(-1)
	}()
	idle := p.cfg.UDPIdleTimeout
	buf := make([]byte, 64<<10)
	for {
		last := time.Unix(0, s.last.Load())
		if time.Since(last) >= idle {
			return
		}
		_ = s.conn.SetReadDeadline(last.Add(idle))
		n, err := s.conn.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue // re-check: the client may have sent meanwhile
			}
			return
		}
		s.touch()
		if _, err := l.udp.WriteToUDPAddrPort(buf[:n], s.client); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			p.logf("proxy %s: client %s: send reply: %v", l.name(), s.client, err)
		}
	}
}
