package lb

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// identityServer answers each line on a connection (TCP) or each datagram
// (UDP) with its name, so a client learns which backend it reached.
type identityServer struct {
	name string
	addr netip.AddrPort
	tcp  net.Listener
	udp  net.PacketConn
	wg   sync.WaitGroup
}

// serveIdentityTCP answers "name\n" to every line until the client closes.
func serveIdentityTCP(l net.Listener, name string, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			r := bufio.NewReader(c)
			for {
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				if _, err := c.Write([]byte(name + "\n")); err != nil {
					return
				}
			}
		}()
	}
}

func serveIdentityUDP(pc net.PacketConn, name string, wg *sync.WaitGroup) {
	defer wg.Done()
	buf := make([]byte, 2048)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo([]byte(name), from)
	}
}

// startLoopbackBackend serves TCP and UDP on one loopback port.
func startLoopbackBackend(t *testing.T, name string) *identityServer {
	t.Helper()
	s := &identityServer{name: name}
	for range 10 {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		pc, err := net.ListenPacket("udp4", l.Addr().String())
		if err != nil {
			l.Close()
			continue
		}
		s.tcp, s.udp = l, pc
		s.addr = l.Addr().(*net.TCPAddr).AddrPort()
		break
	}
	if s.tcp == nil {
		t.Fatal("no port free for both TCP and UDP")
	}
	s.wg.Add(2)
	go serveIdentityTCP(s.tcp, name, &s.wg)
	go serveIdentityUDP(s.udp, name, &s.wg)
	t.Cleanup(s.stop)
	return s
}

func (s *identityServer) stop() {
	s.tcp.Close()
	s.udp.Close()
	s.wg.Wait()
}

// freeNodePort finds a node port free on 127.0.0.1 for TCP and UDP.
func freeNodePort(t *testing.T) uint16 {
	t.Helper()
	for range 100 {
		p := uint16(MinNodePort + rand.IntN(MaxNodePort-MinNodePort+1))
		l, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp4", fmt.Sprintf("127.0.0.1:%d", p))
		l.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return p
	}
	t.Fatal("no free node port")
	return 0
}

func loopbackEndpoints(servers ...*identityServer) []Endpoint {
	var out []Endpoint
	for i, s := range servers {
		out = append(out, Endpoint{Node: "n", Replica: i, IP: s.addr.Addr(), Port: s.addr.Port(), Healthy: true})
	}
	return out
}

func newTestProxy(t *testing.T, cfg ProxyConfig) *Proxy {
	t.Helper()
	if cfg.Addresses == nil {
		cfg.Addresses = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	}
	cfg.Logf = t.Logf
	p, err := NewProxy(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

// askTCP opens a connection, sends a line and returns the answer.
func askTCP(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp4", addr, 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	return askOn(t, c)
}

func askOn(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("who\n")); err != nil {
		t.Fatalf("write: %v", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return strings.TrimSpace(line)
}

func askUDP(t *testing.T, c net.Conn) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("who")); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return string(buf[:n])
}

func count(answers []string) map[string]int {
	m := map[string]int{}
	for _, a := range answers {
		m[a]++
	}
	return m
}

func TestProxyRoundRobinsTCPAcrossBackends(t *testing.T) {
	b := []*identityServer{startLoopbackBackend(t, "b0"), startLoopbackBackend(t, "b1"), startLoopbackBackend(t, "b2")}
	port := freeNodePort(t)
	p := newTestProxy(t, ProxyConfig{})
	if err := p.Update([]Service{{Name: "web", Port: 80, NodePort: port, Endpoints: loopbackEndpoints(b...)}}); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var got []string
	for range 30 {
		got = append(got, askTCP(t, addr))
	}
	if c := count(got); c["b0"] != 10 || c["b1"] != 10 || c["b2"] != 10 {
		t.Fatalf("30 connections went %v, want 10 each", c)
	}
	if st := p.Stats(); st.TCPTotal != 30 || st.Listeners != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestProxyHashStrategiesChooseLikeTheKernel(t *testing.T) {
	b := []*identityServer{startLoopbackBackend(t, "b0"), startLoopbackBackend(t, "b1"), startLoopbackBackend(t, "b2")}
	endpoints := loopbackEndpoints(b...)
	client := netip.MustParseAddr("127.0.0.1")
	maglev, err := Maglev([]string{"n/0", "n/1", "n/2"}, DefaultMaglevTableSize)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		strategy string
		want     string
	}{
		{StrategySourceHash, b[addrBucket(client, 3, DefaultHashSeed)].name},
		{StrategyMaglev, b[maglev[addrBucket(client, DefaultMaglevTableSize, DefaultHashSeed)]].name},
	} {
		t.Run(tc.strategy, func(t *testing.T) {
			port := freeNodePort(t)
			p := newTestProxy(t, ProxyConfig{})
			if err := p.Update([]Service{{Name: "web", Port: 80, NodePort: port, Strategy: tc.strategy, Endpoints: endpoints}}); err != nil {
				t.Fatal(err)
			}
			for range 10 {
				if got := askTCP(t, fmt.Sprintf("127.0.0.1:%d", port)); got != tc.want {
					t.Fatalf("client 127.0.0.1 reached %s, want %s every time", got, tc.want)
				}
			}
		})
	}
}

func TestProxyUpdateKeepsEstablishedConnections(t *testing.T) {
	b0, b1 := startLoopbackBackend(t, "b0"), startLoopbackBackend(t, "b1")
	port := freeNodePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := newTestProxy(t, ProxyConfig{})
	svc := Service{Name: "web", Port: 80, NodePort: port, Endpoints: loopbackEndpoints(b0)}
	if err := p.Update([]Service{svc}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := askOn(t, c); got != "b0" {
		t.Fatalf("first answer from %s", got)
	}

	// b0 leaves the service: new connections go to b1, the open one stays.
	e := loopbackEndpoints(b0, b1)
	e[0].Healthy = false
	svc.Endpoints = e
	if err := p.Update([]Service{svc}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if got := askTCP(t, addr); got != "b1" {
			t.Fatalf("new connection reached %s after b0 left", got)
		}
	}
	if got := askOn(t, c); got != "b0" {
		t.Fatalf("established connection now answered by %s", got)
	}

	// The service goes away: the port closes, the connection lives on.
	if err := p.Update(nil); err != nil {
		t.Fatal(err)
	}
	if cc, err := net.DialTimeout("tcp4", addr, time.Second); err == nil {
		cc.Close()
		t.Fatal("node port still open after its service was removed")
	}
	if got := askOn(t, c); got != "b0" {
		t.Fatalf("established connection after removal answered by %s", got)
	}
}

func TestProxySkipsABackendThatRefuses(t *testing.T) {
	live := startLoopbackBackend(t, "live")
	dead := startLoopbackBackend(t, "dead")
	dead.stop()
	port := freeNodePort(t)
	p := newTestProxy(t, ProxyConfig{})
	if err := p.Update([]Service{{Name: "web", Port: 80, NodePort: port, Endpoints: loopbackEndpoints(live, dead)}}); err != nil {
		t.Fatal(err)
	}
	for range 6 {
		if got := askTCP(t, fmt.Sprintf("127.0.0.1:%d", port)); got != "live" {
			t.Fatalf("reached %s", got)
		}
	}
	if st := p.Stats(); st.DialErrors == 0 {
		t.Fatal("refused dials were not counted")
	}
}

func TestProxyClosesClientsOfAServiceWithoutEndpoints(t *testing.T) {
	port := freeNodePort(t)
	p := newTestProxy(t, ProxyConfig{})
	if err := p.Update([]Service{{Name: "web", Port: 80, NodePort: port}}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	_, _ = c.Write([]byte("who\n"))
	if _, err := c.Read(make([]byte, 10)); err == nil {
		t.Fatal("a service without endpoints answered")
	}
}

func TestProxyUDPKeepsAClientOnOneBackendAndExpiresIdleSessions(t *testing.T) {
	b := []*identityServer{startLoopbackBackend(t, "b0"), startLoopbackBackend(t, "b1"), startLoopbackBackend(t, "b2")}
	port := freeNodePort(t)
	p := newTestProxy(t, ProxyConfig{UDPIdleTimeout: 300 * time.Millisecond})
	if err := p.Update([]Service{{Name: "dns", Port: 53, Protocol: ProtocolUDP, NodePort: port, Endpoints: loopbackEndpoints(b...)}}); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var first []string
	for range 6 {
		c, err := net.Dial("udp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		got := askUDP(t, c)
		// The session sticks: every datagram of this client socket goes
		// to the same backend.
		for range 3 {
			if again := askUDP(t, c); again != got {
				t.Fatalf("one client reached %s then %s", got, again)
			}
		}
		first = append(first, got)
		c.Close()
	}
	if cnt := count(first); cnt["b0"] != 2 || cnt["b1"] != 2 || cnt["b2"] != 2 {
		t.Fatalf("6 client sockets went %v, want 2 each", cnt)
	}
	if n := p.Stats().UDPSessions; n != 6 {
		t.Fatalf("%d sessions, want 6", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().UDPSessions != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still open after the idle timeout", p.Stats().UDPSessions)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestProxyCloseEndsEverything(t *testing.T) {
	b0 := startLoopbackBackend(t, "b0")
	port := freeNodePort(t)
	p, err := NewProxy(ProxyConfig{Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Update([]Service{
		{Name: "web", Port: 80, NodePort: port, Endpoints: loopbackEndpoints(b0)},
		{Name: "dns", Port: 53, Protocol: ProtocolUDP, NodePort: port, Endpoints: loopbackEndpoints(b0)},
	}); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	askOn(t, c)
	u, err := net.Dial("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	askUDP(t, u)

	done := make(chan struct{})
	go func() { _ = p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection still open after Close")
	}
	if st := p.Stats(); st.TCPActive != 0 || st.UDPSessions != 0 || st.Listeners != 0 {
		t.Fatalf("stats after Close %+v", st)
	}
	if err := p.Update(nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Update after Close: %v", err)
	}
}

func TestProxyReportsWhatItCannotServe(t *testing.T) {
	b0 := startLoopbackBackend(t, "b0")
	port, busy := freeNodePort(t), freeNodePort(t)
	// Someone else holds the second node port.
	other, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", busy))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	p := newTestProxy(t, ProxyConfig{})
	err = p.Update([]Service{
		{Name: "good", Port: 80, NodePort: port, Endpoints: loopbackEndpoints(b0)},
		{Name: "busy", Port: 80, NodePort: busy, Endpoints: loopbackEndpoints(b0)},
		{Name: "bad", Port: 80, NodePort: 1},
	})
	if !errors.Is(err, ErrInvalidService) || !strings.Contains(err.Error(), fmt.Sprintf("listen tcp 127.0.0.1:%d", busy)) {
		t.Fatalf("got %v, want the invalid service and the busy port", err)
	}
	if got := askTCP(t, fmt.Sprintf("127.0.0.1:%d", port)); got != "b0" {
		t.Fatalf("the good service answered %s", got)
	}
	if n := p.Stats().Listeners; n != 1 {
		t.Fatalf("%d listeners, want 1", n)
	}
}

func TestProxyCapsSessionsPerNodePort(t *testing.T) {
	b0 := startLoopbackBackend(t, "b0")
	port, other := freeNodePort(t), freeNodePort(t)
	p := newTestProxy(t, ProxyConfig{MaxSessionsPerPort: 2})
	if err := p.Update([]Service{
		{Name: "web", Port: 80, NodePort: port, Endpoints: loopbackEndpoints(b0)},
		{Name: "dns", Port: 53, Protocol: ProtocolUDP, NodePort: port, Endpoints: loopbackEndpoints(b0)},
		{Name: "api", Port: 80, NodePort: other, Endpoints: loopbackEndpoints(b0)},
	}); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	var open []net.Conn
	for range 2 {
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		askOn(t, c)
		open = append(open, c)
	}
	// The third client is accepted by the kernel and closed at once.
	c, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	_, _ = c.Write([]byte("who\n"))
	if _, err := c.Read(make([]byte, 8)); err == nil || isTimeout(err) {
		t.Fatalf("a client over the cap got %v, want its connection closed", err)
	}
	c.Close()
	if n := p.Stats().Rejected; n != 1 {
		t.Fatalf("Rejected = %d, want 1", n)
	}
	// Other node ports are not affected.
	if got := askTCP(t, fmt.Sprintf("127.0.0.1:%d", other)); got != "b0" {
		t.Fatalf("another node port answered %q", got)
	}
	// A slot freed is a slot for the next client.
	open[0].Close()
	proxyWaitUntil(t, 3*time.Second, func() bool { return p.Stats().TCPActive == 1 })
	if got := askTCP(t, addr); got != "b0" {
		t.Fatalf("after a client left, a new one got %q", got)
	}

	// UDP sessions of the same port have their own sockets and count.
	var udp []net.Conn
	for range 2 {
		u, err := net.Dial("udp4", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		askUDP(t, u)
		udp = append(udp, u)
	}
	u, err := net.Dial("udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	_ = u.SetDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = u.Write([]byte("who"))
	if _, err := u.Read(make([]byte, 8)); err == nil {
		t.Fatal("a third UDP client got an answer over the cap of 2")
	}
	if n := p.Stats().Rejected; n != 2 {
		t.Fatalf("Rejected = %d, want 2", n)
	}
	if got := askUDP(t, udp[0]); got != "b0" {
		t.Fatalf("an admitted UDP client now gets %q", got)
	}
}

func TestProxyClosesIdleTCPConnections(t *testing.T) {
	b0 := startLoopbackBackend(t, "b0")
	port := freeNodePort(t)
	const idle = 400 * time.Millisecond
	p := newTestProxy(t, ProxyConfig{TCPIdleTimeout: idle})
	if err := p.Update([]Service{{Name: "web", Port: 80, NodePort: port, Endpoints: loopbackEndpoints(b0)}}); err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	quiet, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	askOn(t, quiet)
	busy, err := net.Dial("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	// The busy client talks every idle/4 for three idle periods.
	for end := time.Now().Add(3 * idle); time.Now().Before(end); {
		if got := askOn(t, busy); got != "b0" {
			t.Fatalf("busy client got %q", got)
		}
		time.Sleep(idle / 4)
	}
	_ = quiet.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := quiet.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("a connection idle for %s is still open: %v", 3*idle, err)
	}
	if st := p.Stats(); st.IdleClosed != 1 || st.TCPActive != 1 {
		t.Fatalf("stats %+v, want one connection closed idle and the busy one open", st)
	}
}

// proxyWaitUntil polls cond every 10 ms until it holds or timeout passes.
func proxyWaitUntil(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
