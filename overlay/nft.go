package overlay

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// tableName names the Manager's own nftables tables (one of family ip, one
// of family bridge). It is derived from the bridge name, so agents sharing
// a namespace keep separate tables, and it never touches any other table
// (the lb package keeps its own).
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

// syncHostTable makes the ip-family table equal to hostTable for subnet;
// callers hold mu. VXLAN is accepted from the members of the last
// SyncMembers and the peers of the last SyncPeers; before the first
// SyncMembers of this process the members the kernel already has are
// kept, so a restarted agent does not cut its peers off until it has
// rejoined.
func (m *Manager) syncHostTable(subnet netip.Prefix) error {
	c, err := m.nftConn()
	if err != nil {
		return err
	}
	if m.members == nil {
		kept, err := m.kernelVXLANSources(c)
		if err != nil {
			return err
		}
		m.members = kept
	}
	sources := append([]netip.Addr(nil), m.members...)
	for _, p := range m.peers {
		if p.UnderlayIP.Is4() {
			sources = append(sources, p.UnderlayIP)
		}
	}
	t := hostTable(m.tableName(), m.cfg, subnet, sources)
	if err := syncTable(c, t); err != nil {
		return fmt.Errorf("program overlay firewall and masquerade for %s: %w", subnet, err)
	}
	return nil
}

// syncPortTable makes the bridge-family table hold every container veth
// of this Manager with the address IPAM gave its owner; callers hold mu. A
// veth whose owner has no address (its subnet was given up) is named with
// none, so its frames are dropped until it is attached again.
func (m *Manager) syncPortTable() error {
	ports, err := m.portSources()
	if err != nil {
		return fmt.Errorf("program container source checks: %w", err)
	}
	c, err := m.nftConn()
	if err != nil {
		return err
	}
	if err := syncTable(c, portTable(m.tableName(), ports)); err != nil {
		return fmt.Errorf("program container source checks: %w", err)
	}
	return nil
}

// portSources lists the attached containers' veths with the MAC and
// address each may use.
func (m *Manager) portSources() ([]portSource, error) {
	links, err := m.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []portSource
	for _, l := range links {
		owner, ok := m.ownerOfAlias(l.Attrs().Alias)
		if !ok {
			continue
		}
		p := portSource{veth: l.Attrs().Name}
		if m.ipam != nil {
			if addr, ok := m.ipam.Lookup(owner); ok {
				p.addr, p.mac = addr, containerMAC(addr)
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// kernelVXLANSources reads the VXLAN sources the host table holds; none
// if there is no table.
func (m *Manager) kernelVXLANSources(c *nftables.Conn) ([]netip.Addr, error) {
	tbl := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: m.tableName()}
	// The library reports a missing table or set only as text: look first.
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == tbl.Name }) {
		return []netip.Addr{}, nil
	}
	sets, err := c.GetSets(tbl)
	if err != nil {
		return nil, fmt.Errorf("list sets of nftables table %s: %w", tbl.Name, err)
	}
	if !slices.ContainsFunc(sets, func(s *nftables.Set) bool { return s.Name == setVXLANSources }) {
		return []netip.Addr{}, nil // a table of an older version
	}
	elems, err := c.GetSetElements(&nftables.Set{Table: tbl, Name: setVXLANSources})
	if err != nil {
		return nil, fmt.Errorf("read VXLAN sources of nftables table %s: %w", tbl.Name, err)
	}
	out := []netip.Addr{}
	for _, e := range elems {
		if a, ok := netip.AddrFromSlice(e.Key); ok && a.Is4() {
			out = append(out, a)
		}
	}
	return out, nil
}

// maxElementsPerMessage keeps one element list well under the 64 KiB a
// netlink attribute can hold.
const maxElementsPerMessage = 512

// syncTable makes the kernel's table equal to t. A table that already
// matches is left alone, so its counters keep counting across the
// periodic resyncs; one that differs is replaced whole.
func syncTable(c *nftables.Conn, t *nftTable) error {
	if kernelMatches(c, t) {
		return nil
	}
	return replaceTables(c, t)
}

// kernelMatches reports whether the kernel holds t: the same chains with
// the same hooks and rules (compared by their expression counts), and the
// same set elements. Anything it cannot read counts as a mismatch.
func kernelMatches(c *nftables.Conn, t *nftTable) bool {
	tbl := &nftables.Table{Family: t.family, Name: t.name}
	tables, err := c.ListTablesOfFamily(t.family)
	if err != nil || !slices.ContainsFunc(tables, func(k *nftables.Table) bool { return k.Name == t.name }) {
		return false
	}
	chains, err := c.ListChainsOfTableFamily(t.family)
	if err != nil {
		return false
	}
	have := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == t.name {
			have[ch.Name] = ch
		}
	}
	if len(have) != len(t.chains) {
		return false
	}
	for _, want := range t.chains {
		ch, ok := have[want.name]
		if !ok || ch.Hooknum == nil || *ch.Hooknum != *want.hook || ch.Priority == nil || int32(*ch.Priority) != want.priority || ch.Type != want.typ {
			return false
		}
		rules, err := c.GetRules(tbl, ch)
		if err != nil || len(rules) != len(want.rules) {
			return false
		}
		for i, r := range rules {
			if len(r.Exprs) != len(want.rules[i].exprs) {
				return false
			}
		}
	}
	sets, err := c.GetSets(tbl)
	if err != nil || len(sets) != len(t.sets) {
		return false
	}
	for _, want := range t.sets {
		i := slices.IndexFunc(sets, func(s *nftables.Set) bool { return s.Name == want.name })
		if i < 0 || sets[i].KeyType.Bytes != want.key.Bytes {
			return false
		}
		elems, err := c.GetSetElements(sets[i])
		if err != nil || len(elems) != len(want.elements) {
			return false
		}
		keys := make([]string, len(elems))
		for j, e := range elems {
			keys[j] = string(e.Key)
		}
		slices.Sort(keys)
		wantKeys := make([]string, len(want.elements))
		for j, k := range want.elements {
			wantKeys[j] = string(k)
		}
		slices.Sort(wantKeys)
		if !slices.Equal(keys, wantKeys) {
			return false
		}
	}
	return true
}

// replaceTables deletes and rebuilds the tables in one batch. The kernel
// commits a batch whole or not at all, so there is no moment without the
// rules, and a rejected batch leaves the old rules working; building from
// nothing also replaces whatever layout an older version left.
func replaceTables(c *nftables.Conn, tables ...*nftTable) error {
	for _, t := range tables {
		tbl := &nftables.Table{Family: t.family, Name: t.name}
		// Adding first makes the delete succeed when there is no table.
		c.AddTable(tbl)
		c.DelTable(tbl)
		c.AddTable(tbl)
		ids := map[string]uint32{}
		for _, s := range t.sets {
			set := &nftables.Set{Table: tbl, Name: s.name, KeyType: s.key, Concatenation: s.concat}
			if err := c.AddSet(set, nil); err != nil {
				return fmt.Errorf("add set %s: %w", s.name, err)
			}
			ids[s.name] = set.ID
			for chunk := range slices.Chunk(s.elements, maxElementsPerMessage) {
				elems := make([]nftables.SetElement, len(chunk))
				for i, k := range chunk {
					elems[i] = nftables.SetElement{Key: k}
				}
				if err := c.SetAddElements(set, elems); err != nil {
					return fmt.Errorf("add elements to set %s: %w", s.name, err)
				}
			}
		}
		accept := nftables.ChainPolicyAccept
		for _, ch := range t.chains {
			prio := nftables.ChainPriority(ch.priority)
			chain := c.AddChain(&nftables.Chain{Name: ch.name, Table: tbl, Type: ch.typ, Hooknum: ch.hook, Priority: &prio, Policy: &accept})
			for _, r := range ch.rules {
				exprs := make([]expr.Any, len(r.exprs))
				for i, e := range r.exprs {
					if l, ok := e.(*expr.Lookup); ok {
						// Sets added in this batch are found by their ID.
						cp := *l
						cp.SetID = ids[l.SetName]
						e = &cp
					}
					exprs[i] = e
				}
				c.AddRule(&nftables.Rule{Table: tbl, Chain: chain, Exprs: exprs})
			}
		}
	}
	if err := c.Flush(); err != nil {
		names := make([]string, len(tables))
		for i, t := range tables {
			names[i] = t.name
		}
		return fmt.Errorf("replace nftables table %s: %w", strings.Join(names, ", "), err)
	}
	return nil
}

// deleteTables removes both tables; missing tables are fine. Adding each
// first in the same batch makes the delete succeed either way.
func (m *Manager) deleteTables() error {
	c, err := m.nftConn()
	if err != nil {
		return err
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyBridge} {
		t := c.AddTable(&nftables.Table{Family: fam, Name: m.tableName()})
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete nftables tables %s: %w", m.tableName(), err)
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
