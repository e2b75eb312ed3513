package overlay

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// tableName is the Manager's own nftables table. It is derived from the
// bridge name, so agents sharing a namespace keep separate tables, and it
// never touches any other table (the lb package keeps its own).
func (m *Manager) tableName() string {
	var b strings.Builder
	b.WriteString("shoal_overlay_")
	for _, r := range m.cfg.BridgeName {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// nftConn opens an nftables connection in the Manager's namespace.
func (m *Manager) nftConn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if m.cfg.NetNS != "" {
		opts = append(opts, nftables.WithNetNSFd(int(m.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	return c, nil
}

// syncMasquerade makes the table hold exactly
//
//	table ip shoal_overlay_<bridge> {
//	  chain postrouting {
//	    type nat hook postrouting priority srcnat; policy accept;
//	    ip saddr <subnet> ip daddr != <overlay> counter masquerade
//	  }
//	}
//
// in one transaction: AddTable+FlushTable empties an existing table in the
// same batch that refills it, so there is no moment without the rule and a
// rejected batch leaves the old rule working.
//
// Traffic between containers, on this node or another, stays inside the
// overlay and keeps its source address; only traffic leaving the overlay
// gets the node's address, so replies come back to this node.
func (m *Manager) syncMasquerade(subnet netip.Prefix) error {
	c, err := m.nftConn()
	if err != nil {
		return err
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: m.tableName()})
	c.FlushTable(t)
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{
		Name:     "postrouting",
		Table:    t,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &accept,
	})
	var exprs []expr.Any
	exprs = append(exprs, matchIPv4(12, subnet, expr.CmpOpEq)...)             // ip saddr
	exprs = append(exprs, matchIPv4(16, m.cfg.OverlayCIDR, expr.CmpOpNeq)...) // ip daddr
	exprs = append(exprs, &expr.Counter{}, &expr.Masq{})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("program masquerade for %s in nftables table %s: %w", subnet, t.Name, err)
	}
	return nil
}

// matchIPv4 compares the IPv4 address at offset of the network header,
// masked to p's length, with p's address.
func matchIPv4(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	mask := prefixToIPNet(p).Mask
	addr := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte(mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: op, Register: 1, Data: addr[:]},
	}
}

// deleteMasquerade removes the table; a missing table is fine. Adding it
// first in the same batch makes the delete succeed either way.
func (m *Manager) deleteMasquerade() error {
	c, err := m.nftConn()
	if err != nil {
		return err
	}
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: m.tableName()})
	c.DelTable(t)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete nftables table %s: %w", t.Name, err)
	}
	return nil
}
