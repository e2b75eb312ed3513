package overlay

// A small lab for root tests: an underlay of network namespaces ("nodes")
// joined by a bridge in a hub namespace, all on 10.97.0.0/24, plus
// namespaces standing in for containers. Everything is named with a test
// prefix, removed in t.Cleanup, and swept by prefix before a run in case a
// previous run crashed. Nothing is created in the caller's own namespace.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const netnsDir = "/run/netns"

var hubAddr = netip.MustParseAddr("10.97.0.254")

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
}

// createNS creates the named namespace with lo up. NewNamed switches the
// calling thread, so it runs on a locked goroutine whose thread is
// discarded afterwards.
func createNS(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
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
		defer ns.Close()
		err = netns.Set(orig)
		if err == nil {
			err = setUp(ns, "lo")
		}
		errc <- err
	}()
	return <-errc
}

func setUp(ns netns.NsHandle, name string) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return err
	}
	return h.LinkSetUp(l)
}

func deleteNS(name string) error {
	path := filepath.Join(netnsDir, name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// sweepNS removes namespaces a crashed run left behind.
func sweepNS(t testing.TB, prefix string) {
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			t.Logf("removing leftover namespace %s", e.Name())
			if err := deleteNS(e.Name()); err != nil {
				t.Fatalf("sweep leftover namespace: %v", err)
			}
		}
	}
}

// inNS runs fn on a goroutine locked into the namespace at path; the
// thread is never switched back.
func inNS(path string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(path)
		if err != nil {
			done <- err
			return
		}
		defer ns.Close()
		if err := netns.Set(ns); err != nil {
			done <- err
			return
		}
		done <- fn()
	}()
	return <-done
}

// listenIn opens a TCP listener inside the namespace at path. Accept works
// from any goroutine: the socket belongs to the namespace it was made in.
func listenIn(t testing.TB, path, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	err := inNS(path, func() error {
		var err error
		l, err = net.Listen("tcp4", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, path, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// dialIn connects from inside the namespace at path.
func dialIn(path, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNS(path, func() error {
		d := net.Dialer{Timeout: timeout}
		var err error
		c, err = d.Dial("tcp4", addr)
		return err
	})
	return c, err
}

// serveEcho answers every line with "name: line".
func serveEcho(l net.Listener, name string) {
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, name+": "+line); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// echoOnce dials addr from the namespace at path, sends a line and returns
// the answer without its newline.
func echoOnce(path, addr string) (string, error) {
	c, err := dialIn(path, addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "ping\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

// lab is the underlay: a hub namespace with a bridge, and node namespaces
// plugged into it.
type lab struct {
	t      testing.TB
	prefix string
	hub    string // path
	hubH   *netlink.Handle
}

func ns(prefix, short string) (name, path string) {
	name = prefix + short
	return name, filepath.Join(netnsDir, name)
}

// newLab sweeps leftovers with prefix and builds the hub, whose bridge
// holds hubAddr (a stand-in for the world outside the overlay).
func newLab(t testing.TB, prefix string) *lab {
	t.Helper()
	requireRoot(t)
	sweepNS(t, prefix)
	l := &lab{t: t, prefix: prefix}
	l.hub = l.newNS("hub")
	l.hubH = handleAt(t, l.hub)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "br0"
	br := &netlink.Bridge{LinkAttrs: attrs}
	must(t, l.hubH.LinkAdd(br))
	must(t, l.hubH.AddrAdd(br, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(hubAddr, 24))}))
	must(t, l.hubH.LinkSetUp(br))
	return l
}

// newNS creates a namespace removed at cleanup and returns its path.
func (l *lab) newNS(short string) string {
	l.t.Helper()
	name, path := ns(l.prefix, short)
	if err := createNS(name); err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() {
		if err := deleteNS(name); err != nil {
			l.t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	return path
}

// addNode creates a node namespace whose eth0 holds ip/24 and is plugged
// into the hub bridge with the given MTU.
func (l *lab) addNode(short string, ip netip.Addr, mtu int) string {
	l.t.Helper()
	path := l.newNS(short)
	nsh, err := netns.GetFromPath(path)
	must(l.t, err)
	defer nsh.Close()
	br, err := l.hubH.LinkByName("br0")
	must(l.t, err)
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.MasterIndex = "u"+short, mtu, br.Attrs().Index
	must(l.t, l.hubH.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(nsh)), PeerMTU: uint32(mtu), PeerTxQLen: -1}))
	hub, err := l.hubH.LinkByName("u" + short)
	must(l.t, err)
	must(l.t, l.hubH.LinkSetUp(hub))
	h := handleAt(l.t, path)
	eth, err := h.LinkByName("eth0")
	must(l.t, err)
	must(l.t, h.AddrAdd(eth, &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(ip, 24))}))
	must(l.t, h.LinkSetUp(eth))
	return path
}

// setHubMTU changes the MTU of the hub bridge and its ports.
func (l *lab) setHubMTU(mtu int) {
	l.t.Helper()
	links, err := l.hubH.LinkList()
	must(l.t, err)
	for _, lk := range links {
		if lk.Attrs().Name != "lo" {
			must(l.t, l.hubH.LinkSetMTU(lk, mtu))
		}
	}
}

// handleAt opens a netlink handle in the namespace at path, closed at
// cleanup (an open handle would keep the namespace alive).
func handleAt(t testing.TB, path string) *netlink.Handle {
	t.Helper()
	nsh, err := netns.GetFromPath(path)
	must(t, err)
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	must(t, err)
	t.Cleanup(h.Close)
	return h
}

// newTestManager builds a Manager bound to the node namespace at path and
// tears it down at cleanup.
func newTestManager(t testing.TB, path string, mutate func(*Config)) *Manager {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NetNS = path
	cfg.StateDir = t.TempDir()
	if mutate != nil {
		mutate(&cfg)
	}
	m, err := New(cfg, nil)
	must(t, err)
	t.Cleanup(func() {
		if m.h == nil {
			return // closed by the test, which stands for an agent that stopped
		}
		if err := m.Teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return m
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}
