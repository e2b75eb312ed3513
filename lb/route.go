package lb

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// VIPRoute is the route that lets processes on the node itself reach VIPs.
//
// A locally generated packet is routed before the nat-output hook sees it,
// so without a route covering the service CIDR connect fails with "network
// unreachable" (or the packet leaves by the default route with a source
// address the backend may not route back). With "CIDR dev Link src Src" the
// first routing decision succeeds, nat-output DNATs, and the kernel routes
// the packet again to the chosen backend. Pointing it at the overlay bridge
// with the bridge's gateway address as Src keeps replies from local and
// remote backends on the overlay. Containers and other nodes do not need
// it: their packets are DNAT'd in prerouting, before routing.
type VIPRoute struct {
	// NetNS is the path of the network namespace to change; empty is the
	// caller's.
	NetNS string
	// CIDR is the service range; default DefaultServiceCIDR.
	CIDR netip.Prefix
	// Link is the device the route points at, such as the overlay bridge.
	Link string
	// Src, if valid, is the preferred source address (the bridge gateway).
	Src netip.Addr
}

// EnsureVIPRoute installs or replaces the route; it is idempotent.
func EnsureVIPRoute(r VIPRoute) error {
	return withVIPRoute(r, func(h *netlink.Handle, route *netlink.Route) error {
		if err := h.RouteReplace(route); err != nil {
			return fmt.Errorf("replace route %s dev %s: %w", route.Dst, r.Link, err)
		}
		return nil
	})
}

// RemoveVIPRoute deletes the route; a missing route (or link) is not an
// error.
func RemoveVIPRoute(r VIPRoute) error {
	err := withVIPRoute(r, func(h *netlink.Handle, route *netlink.Route) error {
		if err := h.RouteDel(route); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete route %s dev %s: %w", route.Dst, r.Link, err)
		}
		return nil
	})
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	return err
}

func withVIPRoute(r VIPRoute, fn func(*netlink.Handle, *netlink.Route) error) error {
	if !r.CIDR.IsValid() {
		r.CIDR = DefaultServiceCIDR
	}
	if !r.CIDR.Addr().Is4() || r.Link == "" {
		return fmt.Errorf("VIP route %s dev %q: need an IPv4 range and a link: %w", r.CIDR, r.Link, ErrInvalidConfig)
	}
	var h *netlink.Handle
	var err error
	if r.NetNS != "" {
		ns, nerr := netns.GetFromPath(r.NetNS)
		if nerr != nil {
			return fmt.Errorf("open network namespace %s: %w", r.NetNS, nerr)
		}
		defer ns.Close()
		h, err = netlink.NewHandleAt(ns)
	} else {
		h, err = netlink.NewHandle()
	}
	if err != nil {
		return fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	link, err := h.LinkByName(r.Link)
	if err != nil {
		return fmt.Errorf("find link %s: %w", r.Link, err)
	}
	p := r.CIDR.Masked()
	route := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)},
		Scope:     netlink.SCOPE_LINK,
	}
	if r.Src.IsValid() {
		route.Src = r.Src.AsSlice()
	}
	return fn(h, route)
}
