package lb

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Table owns one nftables table and keeps it equal to the desired services.
// Its methods are safe for concurrent use; syncs are serialised.
type Table struct {
	cfg Config

	mu     sync.Mutex
	ns     netns.NsHandle // -1 when programming the caller's namespace
	closed bool
}

// SyncStats reports one Sync, for logs and metrics (rule syncs, sync
// duration, endpoints per service).
type SyncStats struct {
	// Duration is the whole Sync; Program is the part spent computing the
	// ruleset, the rest is netlink.
	Duration, Program time.Duration
	// Services lists each programmed service and its endpoint count.
	Services []ServiceStat
	// Endpoints is the total number of endpoints receiving traffic.
	Endpoints int
	// Chains, Rules, Sets and Elements count the objects in the table.
	Chains, Rules, Sets, Elements int
	// Messages is the number of netlink messages in the batch.
	Messages int
	// Deleted counts chains and sets of services that went away.
	Deleted int
	// Replaced is set when the kernel refused the usual batch and the table
	// was replaced whole instead (see Table.Apply).
	Replaced bool
	// Invalid lists the services and endpoints left out of the table.
	Invalid []error
}

// NewTable validates cfg and returns a Table that programs it. Nothing is
// changed in the kernel until Sync.
func NewTable(cfg Config) (*Table, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	t := &Table{cfg: cfg, ns: -1}
	if cfg.NetNS != "" {
		ns, err := netns.GetFromPath(cfg.NetNS)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", cfg.NetNS, err)
		}
		t.ns = ns
	}
	return t, nil
}

// Config returns the table's configuration with defaults filled in.
func (t *Table) Config() Config { return t.cfg }

// Sync makes the kernel table equal to Program(cfg, services) in one atomic
// batch. On error the previous table keeps working unchanged.
func (t *Table) Sync(services []Service) (SyncStats, error) {
	start := time.Now()
	rs, err := Program(t.cfg, services)
	if err != nil {
		return SyncStats{}, err
	}
	st := SyncStats{Program: time.Since(start), Services: rs.Services(), Invalid: rs.Invalid()}
	for _, s := range st.Services {
		st.Endpoints += s.Endpoints
	}
	st.Chains, st.Rules, st.Sets, st.Elements = rs.Counts()
	err = t.Apply(rs, &st)
	st.Duration = time.Since(start)
	return st, err
}

// ErrClosed is returned by a Table, DNS or Proxy used after Close.
var ErrClosed = errors.New("lb: closed")

// Apply writes a ruleset computed by Program (for this table's Config) to
// the kernel; Sync is Program followed by Apply. st, if not nil, receives
// the message and deletion counts.
func (t *Table) Apply(rs *Ruleset, st *SyncStats) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	if st == nil {
		st = &SyncStats{}
	}
	if rs.table != t.cfg.Table {
		return fmt.Errorf("apply ruleset of table %s to table %s: %w", rs.table, t.cfg.Table, ErrInvalidConfig)
	}
	conn, err := t.conn(estimateBatch(rs))
	if err != nil {
		return err
	}
	have, err := listTable(conn, rs.table)
	if err != nil {
		return fmt.Errorf("list nftables table %s: %w", rs.table, err)
	}
	n, deleted, err := writeBatch(conn, rs, have, false)
	if err != nil && have.exists {
		// The table holds something the update cannot build on: a set of
		// another type left by an older version, or, before Linux 6.2, a
		// chain the kernel still counts as referenced by the map element
		// flushed in the same batch. Replace the table whole, still in one
		// atomic batch.
		conn, err2 := t.conn(estimateBatch(rs))
		if err2 != nil {
			return err2
		}
		n, _, err2 = writeBatch(conn, rs, have, true)
		if err2 != nil {
			return fmt.Errorf("apply nftables table %s: update: %w; replace (%d messages): %w", rs.table, err, n, err2)
		}
		st.Replaced, deleted, err = true, 0, nil
	}
	st.Messages, st.Deleted = n, deleted
	if err != nil {
		return fmt.Errorf("apply nftables table %s (%d messages): %w", rs.table, n, err)
	}
	return nil
}

// Teardown deletes the table and everything in it; a missing table is not
// an error.
func (t *Table) Teardown() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	conn, err := t.conn(0)
	if err != nil {
		return err
	}
	have, err := listTable(conn, t.cfg.Table)
	if err != nil {
		return fmt.Errorf("list nftables table %s: %w", t.cfg.Table, err)
	}
	if !have.exists {
		return nil
	}
	conn.DelTable(&nftables.Table{Name: t.cfg.Table, Family: nftables.TableFamilyIPv4})
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("delete nftables table %s: %w", t.cfg.Table, err)
	}
	return nil
}

// Close releases the namespace handle; it does not touch the table (the
// rules keep working while the agent restarts).
func (t *Table) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	if t.ns >= 0 {
		return t.ns.Close()
	}
	return nil
}

// conn opens a netlink connection for a batch of about batchBytes bytes.
func (t *Table) conn(batchBytes int) (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.WithSockOptions(bufferOption(batchBytes))}
	if t.ns >= 0 {
		opts = append(opts, nftables.WithNetNSFd(int(t.ns)))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink: %w", err)
	}
	return conn, nil
}

// bufferOption sizes the socket buffers for a batch. The kernel takes a
// batch in one sendmsg (so the send buffer must hold all of it) and queues
// one acknowledgement per message before the first is read (so the receive
// buffer must hold all of those); the defaults (~200 KB) overflow at a few
// hundred services. The *FORCE options need CAP_NET_ADMIN, which
// programming nftables needs anyway.
func bufferOption(batchBytes int) nftables.SockOption {
	size := max(4<<20, 2*batchBytes)
	size = min(size, 1<<30)
	return func(c *netlink.Conn) error {
		raw, err := c.SyscallConn()
		if err != nil {
			return fmt.Errorf("netlink socket: %w", err)
		}
		var serr error
		err = raw.Control(func(fd uintptr) {
			for _, opt := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
				if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, size); e != nil {
					serr = fmt.Errorf("set netlink socket buffer to %d bytes: %w", size, e)
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}

// estimateBatch guesses the bytes of a batch and of its acknowledgements
// (an ack costs about 1 KB of receive buffer).
func estimateBatch(rs *Ruleset) int {
	chains, rules, sets, elements := rs.Counts()
	msgs := 8 + chains + 2*rules + 2*sets + elements/256
	return msgs*1024 + elements*128 + rules*512
}

// existing is what the kernel holds of the table before a sync.
type existing struct {
	exists bool
	chains map[string]bool
	sets   map[string]bool // named sets only
}

func listTable(conn *nftables.Conn, table string) (existing, error) {
	have := existing{chains: map[string]bool{}, sets: map[string]bool{}}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return have, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == table {
			have.exists = true
		}
	}
	if !have.exists {
		return have, nil
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return have, fmt.Errorf("list chains: %w", err)
	}
	for _, c := range chains {
		if c.Table != nil && c.Table.Name == table {
			have.chains[c.Name] = true
		}
	}
	sets, err := conn.GetSets(&nftables.Table{Name: table, Family: nftables.TableFamilyIPv4})
	if err != nil {
		return have, fmt.Errorf("list sets: %w", err)
	}
	for _, s := range sets {
		if !s.Anonymous && !strings.HasPrefix(s.Name, "__") {
			have.sets[s.Name] = true
		}
	}
	return have, nil
}

// writeBatch queues the whole table into conn and flushes it as one batch.
// It returns the number of messages and of deleted objects.
//
// An update keeps the table and its sets: it flushes every rule and map,
// deletes the chains and sets no longer wanted and adds everything again.
// Order matters inside the batch: the rule flush releases every reference
// to sets and chains, flushed maps release their verdicts' chains, and only
// then can unused objects be deleted; chains and sets must exist before
// rules and elements that name them. A replace deletes the table and
// builds it from nothing.
func writeBatch(conn *nftables.Conn, rs *Ruleset, have existing, replace bool) (msgs, deleted int, err error) {
	tbl := &nftables.Table{Name: rs.table, Family: nftables.TableFamilyIPv4}
	conn.AddTable(tbl)
	msgs++
	if replace {
		conn.DelTable(tbl)
		conn.AddTable(tbl)
		msgs += 2
		have = existing{chains: map[string]bool{}, sets: map[string]bool{}}
	} else {
		conn.FlushTable(tbl)
		msgs++
	}

	wantChains := map[string]bool{}
	for _, c := range rs.chains {
		wantChains[c.name] = true
	}
	wantSets := map[string]bool{}
	for _, s := range rs.sets {
		wantSets[s.name] = true
	}
	for name := range have.sets {
		if wantSets[name] {
			conn.FlushSet(&nftables.Set{Table: tbl, Name: name})
		} else {
			conn.DelSet(&nftables.Set{Table: tbl, Name: name})
			deleted++
		}
		msgs++
	}
	for name := range have.chains {
		if !wantChains[name] {
			conn.DelChain(&nftables.Chain{Table: tbl, Name: name})
			deleted++
			msgs++
		}
	}

	for _, c := range rs.chains {
		ch := &nftables.Chain{Name: c.name, Table: tbl}
		if c.hook != nil {
			prio := nftables.ChainPriority(c.priority)
			ch.Type, ch.Hooknum, ch.Priority = c.typ, c.hook, &prio
		}
		conn.AddChain(ch)
		msgs++
	}
	for _, s := range rs.sets {
		n, err := addSet(conn, tbl, s, !have.sets[s.name])
		msgs += n
		if err != nil {
			return msgs, deleted, err
		}
	}
	for _, r := range rs.rules {
		if r.anon != nil {
			n, err := addSet(conn, tbl, r.anon, true)
			msgs += n
			if err != nil {
				return msgs, deleted, err
			}
		}
		conn.AddRule(&nftables.Rule{Table: tbl, Chain: &nftables.Chain{Name: r.chain, Table: tbl}, Exprs: r.exprs})
		msgs++
	}
	return msgs, deleted, conn.Flush()
}

// maxElemBytes bounds one element message: the element list is a single
// netlink attribute, whose length field has 16 bits.
const maxElemBytes = 48 << 10

// addSet queues a set (unless it exists) and its elements, split over as
// many messages as the attribute size limit needs.
func addSet(conn *nftables.Conn, tbl *nftables.Table, s *setSpec, create bool) (int, error) {
	set := &nftables.Set{
		Table:         tbl,
		ID:            s.id,
		Name:          s.name,
		Anonymous:     s.anonymous,
		Constant:      s.anonymous,
		IsMap:         s.isMap,
		Concatenation: s.concat,
		KeyType:       s.key,
		DataType:      s.data,
	}
	msgs := 0
	if create {
		// No elements here: AddSet would declare their count as the size
		// of a constant set, and later chunks would not fit.
		if err := conn.AddSet(set, nil); err != nil {
			return 0, fmt.Errorf("add set %s: %w", s.name, err)
		}
		msgs++
	}
	// SetAddElements refuses anonymous sets by type, but the kernel accepts
	// elements for one until a rule binds it, found by its batch ID.
	target := *set
	target.Anonymous = false
	var chunk []nftables.SetElement
	size := 0
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		if err := conn.SetAddElements(&target, chunk); err != nil {
			return fmt.Errorf("add elements to set %s: %w", s.name, err)
		}
		msgs++
		chunk, size = nil, 0
		return nil
	}
	for _, e := range s.elements {
		el := nftables.SetElement{Key: e.key, Val: e.val, VerdictData: e.verdict}
		n := 48 + len(e.key) + len(e.val)
		if e.verdict != nil {
			n += len(e.verdict.Chain)
		}
		if size+n > maxElemBytes {
			if err := flush(); err != nil {
				return msgs, err
			}
		}
		chunk = append(chunk, el)
		size += n
	}
	return msgs, flush()
}
