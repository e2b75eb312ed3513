package overlay

import (
	"bytes"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNetNS runs fn in the Manager's network namespace. Netlink work does not
// need it (the handle is bound to the namespace); what does is anything
// that resolves the namespace from the calling thread, such as /proc/sys/net
// writes. With Config.NetNS set, fn runs on a fresh goroutine whose OS
// thread is switched into the namespace and never unlocked: the Go runtime
// discards the thread when the goroutine ends, so no other goroutine ever
// runs in that namespace by accident.
func (m *Manager) inNetNS(fn func() error) error {
	if m.cfg.NetNS == "" {
		return fn()
	}
	return inNetNSHandle(m.ns, m.cfg.NetNS, fn)
}

func inNetNSHandle(ns netns.NsHandle, name string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: see inNetNS.
		if err := netns.Set(ns); err != nil {
			done <- fmt.Errorf("enter network namespace %s: %w", name, err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// ipForwardPath is per network namespace: /proc/sys/net shows the
// namespace of the thread that opens it.
const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// enableIPForward turns IPv4 forwarding on in the calling thread's network
// namespace. It writes only when needed, because every write to ip_forward
// also resets per-interface settings such as forwarding and accept_redirects.
func enableIPForward() error {
	b, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return fmt.Errorf("read %s: %w", ipForwardPath, err)
	}
	if string(bytes.TrimSpace(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(ipForwardPath, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable ip forwarding: %w", err)
	}
	return nil
}

// disableRedirects turns off ICMP redirects on the bridge (and "all",
// which the kernel ORs in). A container whose packet the node routes back
// out of the bridge it came in on (a replica calling its own service's
// VIP) would otherwise get redirects, and the redirect bookkeeping resets
// that host's ICMP rate limit, so a port-unreachable that should follow
// (UDP to a service without endpoints) is dropped.
func disableRedirects(bridge string) func() error {
	return func() error {
		for _, dev := range []string{"all", bridge} {
			p := "/proc/sys/net/ipv4/conf/" + dev + "/send_redirects"
			b, err := os.ReadFile(p)
			if err != nil {
				return fmt.Errorf("read %s: %w", p, err)
			}
			if string(bytes.TrimSpace(b)) == "0" {
				continue
			}
			if err := os.WriteFile(p, []byte("0"), 0o644); err != nil {
				return fmt.Errorf("disable ICMP redirects on %s: %w", dev, err)
			}
		}
		return nil
	}
}
