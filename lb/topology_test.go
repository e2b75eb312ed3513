package lb

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Everything the root tests create lives in network namespaces named
// nsPrefix<pid>-<role>; links and tables exist only inside them, so
// deleting the namespaces removes all of it, and no packet ever leaves
// them. Addresses are 10.x only.
const (
	nsPrefix = "shoal-lbt-"
	netnsDir = "/run/netns"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and nftables tables")
	}
}

// sweepNamespaces deletes namespaces left by earlier runs whose process is
// gone (a crashed or killed test cannot clean up after itself).
func sweepNamespaces(t testing.TB) {
	t.Helper()
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), nsPrefix)
		if !ok {
			continue
		}
		pidStr, _, _ := strings.Cut(rest, "-")
		if pid, err := strconv.Atoi(pidStr); err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) == nil {
			continue // another live test run owns it
		}
		if err := deleteNamedNetns(e.Name()); err != nil {
			t.Logf("sweep %s: %v", e.Name(), err)
		} else {
			t.Logf("swept leftover namespace %s", e.Name())
		}
	}
}

// newNetns creates a named namespace with lo up, removed when the test
// ends, and returns its path.
func newNetns(t testing.TB, role string) string {
	t.Helper()
	name := fmt.Sprintf("%s%d-%s", nsPrefix, os.Getpid(), role)
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves the thread into the new namespace; it is moved
		// back, and never unlocked, so the runtime discards it anyway.
		goruntime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err != nil {
			_ = netns.Set(orig)
			errc <- fmt.Errorf("create netns %s: %w", name, err)
			return
		}
		ns.Close()
		errc <- netns.Set(orig)
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := deleteNamedNetns(name); err != nil {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	path := filepath.Join(netnsDir, name)
	withHandle(t, path, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return err
		}
		return h.LinkSetUp(lo)
	})
	return path
}

func deleteNamedNetns(name string) error {
	path := filepath.Join(netnsDir, name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// withHandle runs fn with a netlink handle inside the namespace at path.
func withHandle(t testing.TB, path string, fn func(*netlink.Handle) error) {
	t.Helper()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := fn(h); err != nil {
		t.Fatalf("in %s: %v", filepath.Base(path), err)
	}
}

// inNetns runs fn on a goroutine locked to a thread inside the namespace:
// sockets it creates belong there. The thread is discarded afterwards.
func inNetns(path string, fn func()) error {
	errc := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		ns, err := netns.GetFromPath(path)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		fn()
		errc <- nil
	}()
	return <-errc
}

func sysctl(t testing.TB, path, key, value string) {
	t.Helper()
	var werr error
	if err := inNetns(path, func() {
		werr = os.WriteFile(filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")), []byte(value), 0o644)
	}); err != nil {
		t.Fatal(err)
	}
	if werr != nil {
		t.Fatalf("sysctl %s=%s in %s: %v", key, value, filepath.Base(path), werr)
	}
}

// veth connects nsA/nameA with nsB/nameB, both up.
func veth(t testing.TB, nsA, nameA, nsB, nameB string) {
	t.Helper()
	peer, err := netns.GetFromPath(nsB)
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	withHandle(t, nsA, func(h *netlink.Handle) error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA}, PeerName: nameB, PeerNamespace: netlink.NsFd(int(peer))}
		if err := h.LinkAdd(v); err != nil {
			return fmt.Errorf("add veth %s: %w", nameA, err)
		}
		return h.LinkSetUp(v)
	})
	withHandle(t, nsB, func(h *netlink.Handle) error {
		l, err := h.LinkByName(nameB)
		if err != nil {
			return err
		}
		return h.LinkSetUp(l)
	})
}

func addAddr(t testing.TB, ns, link, cidr string) {
	t.Helper()
	withHandle(t, ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(link)
		if err != nil {
			return err
		}
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			return err
		}
		return h.AddrAdd(l, a)
	})
}

// addRoute adds "dst via gw"; dst "default" is 0.0.0.0/0.
func addRoute(t testing.TB, ns, dst, gw string) {
	t.Helper()
	if dst == "default" {
		dst = "0.0.0.0/0"
	}
	_, ipnet, err := net.ParseCIDR(dst)
	if err != nil {
		t.Fatal(err)
	}
	withHandle(t, ns, func(h *netlink.Handle) error {
		return h.RouteAdd(&netlink.Route{Dst: ipnet, Gw: net.ParseIP(gw)})
	})
}

// topology is two nodes and their neighbours:
//
//	c1, c2, be1-3 --(bridge br0 10.96.1.1/24)-- node A --(10.97.0.0/24)-- node B --(10.98.0.0/24)-- ext
//
// The backends and the clients c1, c2 are containers on A's bridge (the
// test's overlay is 10.96.0.0/16). B has no backend of its own and routes
// A's container subnet through A, as the overlay would; ext is a client
// outside the cluster that only knows B.
type topology struct {
	a, b, ext, c1, c2 string
	backends          []string // namespace paths of be1..be3
	backendIPs        []netip.Addr
	servers           []*nsServers
}

const (
	ipA       = "10.96.1.1"
	ipAUnder  = "10.97.0.1"
	ipBUnder  = "10.97.0.2"
	ipBExt    = "10.98.0.1"
	ipExt     = "10.98.0.2"
	ipC1      = "10.96.1.100"
	ipC2      = "10.96.1.101"
	webPort   = 8080
	echoPort  = 5353
	overlayNS = "10.96.0.0/16"
)

func newTopology(t *testing.T) *topology {
	t.Helper()
	requireRoot(t)
	sweepNamespaces(t)
	tp := &topology{
		a:   newNetns(t, "a"),
		b:   newNetns(t, "b"),
		ext: newNetns(t, "ext"),
		c1:  newNetns(t, "c1"),
		c2:  newNetns(t, "c2"),
	}
	withHandle(t, tp.a, func(h *netlink.Handle) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
		if err := h.LinkAdd(br); err != nil {
			return err
		}
		return h.LinkSetUp(br)
	})
	addAddr(t, tp.a, "br0", ipA+"/24")
	// Container-like namespaces on A's bridge.
	// Bridge ports in hairpin mode, as the overlay must set them: with
	// br_netfilter, DNAT'd traffic that leaves by the bridge it came in on
	// is bridged, and a replica calling its own VIP needs the frame sent
	// back out of its own port.
	attach := func(ns, hostSide, ip string) {
		veth(t, ns, "eth0", tp.a, hostSide)
		withHandle(t, tp.a, func(h *netlink.Handle) error {
			l, err := h.LinkByName(hostSide)
			if err != nil {
				return err
			}
			br, err := h.LinkByName("br0")
			if err != nil {
				return err
			}
			if err := h.LinkSetMaster(l, br); err != nil {
				return err
			}
			return h.LinkSetHairpin(l, true)
		})
		addAddr(t, ns, "eth0", ip+"/24")
		addRoute(t, ns, "default", ipA)
	}
	for i := range 3 {
		ns := newNetns(t, fmt.Sprintf("be%d", i+1))
		ip := fmt.Sprintf("10.96.1.%d", 11+i)
		attach(ns, fmt.Sprintf("vbe%d", i+1), ip)
		tp.backends = append(tp.backends, ns)
		tp.backendIPs = append(tp.backendIPs, netip.MustParseAddr(ip))
	}
	attach(tp.c1, "vc1", ipC1)
	attach(tp.c2, "vc2", ipC2)

	// The underlay between the nodes, and ext behind B.
	veth(t, tp.a, "u0", tp.b, "u0")
	addAddr(t, tp.a, "u0", ipAUnder+"/24")
	addAddr(t, tp.b, "u0", ipBUnder+"/24")
	veth(t, tp.b, "e0", tp.ext, "eth0")
	addAddr(t, tp.b, "e0", ipBExt+"/24")
	addAddr(t, tp.ext, "eth0", ipExt+"/24")
	addRoute(t, tp.ext, "default", ipBExt)
	addRoute(t, tp.b, "10.96.1.0/24", ipAUnder)
	addRoute(t, tp.a, "10.98.0.0/24", ipBUnder)
	// Forwarding on and ICMP redirects off, as the overlay must set them on
	// a node. A node forwarding a container's VIP packet back out of the
	// bridge it came from would otherwise send the container a redirect,
	// and the kernel's redirect bookkeeping empties that host's ICMP token
	// bucket: the port-unreachable answering a UDP packet to a VIP without
	// endpoints is then rate-limited away.
	for _, ns := range []string{tp.a, tp.b} {
		sysctl(t, ns, "net.ipv4.ip_forward", "1")
		sysctl(t, ns, "net.ipv4.conf.all.send_redirects", "0")
	}
	sysctl(t, tp.a, "net.ipv4.conf.br0.send_redirects", "0")

	for i, ns := range tp.backends {
		tp.servers = append(tp.servers, startNSServers(t, ns, fmt.Sprintf("be%d", i+1)))
	}
	return tp
}

// nsServers are the identity servers of one backend namespace.
type nsServers struct {
	tcp net.Listener
	udp net.PacketConn
	wg  sync.WaitGroup
}

func startNSServers(t *testing.T, ns, name string) *nsServers {
	t.Helper()
	s := &nsServers{}
	var err error
	if e := inNetns(ns, func() {
		if s.tcp, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", webPort)); err != nil {
			return
		}
		s.udp, err = net.ListenPacket("udp4", fmt.Sprintf("0.0.0.0:%d", echoPort))
	}); e != nil || err != nil {
		t.Fatalf("listen in %s: %v %v", name, e, err)
	}
	s.wg.Add(2)
	go serveIdentityTCP(s.tcp, name, &s.wg)
	go serveIdentityUDP(s.udp, name, &s.wg)
	t.Cleanup(func() {
		s.tcp.Close()
		s.udp.Close()
		s.wg.Wait()
	})
	return s
}

// client sends requests from inside one namespace.
type client struct {
	ns    string
	socks *sockets
}

func newClient(t *testing.T, ns string) *client {
	t.Helper()
	s, err := newSockets(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return &client{ns: ns, socks: s}
}

// ask opens a connection (tcp) or a socket (udp) to addr, sends one
// request and returns the answering backend's name.
func (c *client) ask(network, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := c.socks.dial(ctx, network, netip.MustParseAddrPort(addr))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if network == "udp" {
		if _, err := conn.Write([]byte("who")); err != nil {
			return "", err
		}
		buf := make([]byte, 64)
		n, err := conn.Read(buf)
		return string(buf[:n]), err
	}
	if _, err := conn.Write([]byte("who\n")); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), err
}

// askN sends n requests, each on a new connection, and counts answers.
func (c *client) askN(t *testing.T, n int, network, addr string) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := range n {
		name, err := c.ask(network, addr)
		if err != nil {
			t.Fatalf("request %d of %d from %s to %s %s: %v", i+1, n, filepath.Base(c.ns), network, addr, err)
		}
		got[name]++
	}
	return got
}
