package overlay

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// ErrSubnetFull is returned by Allocate when every host address of the
// subnet is held.
var ErrSubnetFull = errors.New("no free address in the node subnet")

// Allocation is one address held by one owner.
type Allocation struct {
	Owner string
	Addr  netip.Addr
}

// IPAM hands out the host addresses of one node subnet to owners
// (containers) and remembers them in a file, so a restarted agent gives
// every container the address it already has. It never hands out the
// network address, the gateway or the broadcast address, and it allocates
// round robin: a released address is reused only after the rest of the
// subnet has been, so a stale DNS record or conntrack entry elsewhere is
// unlikely to reach a new container. Safe for concurrent use.
type IPAM struct {
	mu     sync.Mutex
	path   string // "" keeps the state in memory only
	subnet netip.Prefix
	owners map[string]netip.Addr
	addrs  map[netip.Addr]string
	// next is where the search for a free address starts.
	next netip.Addr
}

// ipamFile is the on-disk form; a version field leaves room to change it.
type ipamFile struct {
	Version     int                   `json:"version"`
	Subnet      netip.Prefix          `json:"subnet"`
	Next        netip.Addr            `json:"next"`
	Allocations map[string]netip.Addr `json:"allocations"`
}

const ipamFileVersion = 1

// OpenIPAM loads the allocations kept at path for subnet, or starts empty
// if the file does not exist. If the file is for another subnet (the node
// lost a subnet conflict and re-picked), its allocations are dropped: the
// addresses are no longer this node's to give. An empty path keeps
// allocations in memory only.
func OpenIPAM(path string, subnet netip.Prefix) (*IPAM, error) {
	if err := checkIPAMSubnet(subnet); err != nil {
		return nil, err
	}
	m := &IPAM{path: path, subnet: subnet}
	m.reset(subnet)
	if path == "" {
		return m, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return m, m.save()
	}
	if err != nil {
		return nil, fmt.Errorf("open ipam %s: %w", path, err)
	}
	var f ipamFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("open ipam %s: decode: %w", path, err)
	}
	if f.Version != ipamFileVersion {
		return nil, fmt.Errorf("open ipam %s: unknown version %d", path, f.Version)
	}
	if f.Subnet != subnet {
		// Re-picked subnet: start over, and say so on disk at once.
		return m, m.save()
	}
	for owner, a := range f.Allocations {
		if !m.usable(a) {
			return nil, fmt.Errorf("open ipam %s: %s holds %s, not a host address of %s", path, owner, a, subnet)
		}
		if other, dup := m.addrs[a]; dup {
			return nil, fmt.Errorf("open ipam %s: %s is held by both %s and %s", path, a, owner, other)
		}
		m.owners[owner] = a
		m.addrs[a] = owner
	}
	if m.usable(f.Next) {
		m.next = f.Next
	}
	return m, nil
}

func checkIPAMSubnet(subnet netip.Prefix) error {
	if !subnet.IsValid() || !subnet.Addr().Is4() || subnet.Masked() != subnet || subnet.Bits() > 30 {
		return fmt.Errorf("ipam subnet %s: want a masked IPv4 prefix of at most /30", subnet)
	}
	return nil
}

// reset forgets every allocation and serves subnet from its start.
func (m *IPAM) reset(subnet netip.Prefix) {
	m.subnet = subnet
	m.owners = make(map[string]netip.Addr)
	m.addrs = make(map[netip.Addr]string)
	m.next = Gateway(subnet).Next()
}

// Subnet is the subnet addresses are handed out from.
func (m *IPAM) Subnet() netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.subnet
}

// SetSubnet switches to another subnet, dropping every allocation (see
// OpenIPAM); the same subnet changes nothing. It returns what was dropped,
// so the caller can re-address those owners.
func (m *IPAM) SetSubnet(subnet netip.Prefix) ([]Allocation, error) {
	if err := checkIPAMSubnet(subnet); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if subnet == m.subnet {
		return nil, nil
	}
	dropped := m.listLocked()
	oldSubnet, oldOwners, oldAddrs, oldNext := m.subnet, m.owners, m.addrs, m.next
	m.reset(subnet)
	if err := m.save(); err != nil {
		m.subnet, m.owners, m.addrs, m.next = oldSubnet, oldOwners, oldAddrs, oldNext
		return nil, err
	}
	return dropped, nil
}

// Allocate returns owner's address, allocating one if it has none. Calling
// it again for the same owner returns the same address.
func (m *IPAM) Allocate(owner string) (netip.Addr, error) {
	if owner == "" {
		return netip.Addr{}, errors.New("allocate address: empty owner")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if a, ok := m.owners[owner]; ok {
		return a, nil
	}
	a, ok := m.findFree()
	if !ok {
		return netip.Addr{}, fmt.Errorf("allocate address for %s in %s (%d held): %w", owner, m.subnet, len(m.owners), ErrSubnetFull)
	}
	prevNext := m.next
	m.owners[owner] = a
	m.addrs[a] = owner
	m.next = m.wrap(a.Next())
	if err := m.save(); err != nil {
		delete(m.owners, owner)
		delete(m.addrs, a)
		m.next = prevNext
		return netip.Addr{}, fmt.Errorf("allocate address for %s: %w", owner, err)
	}
	return a, nil
}

// findFree scans the host addresses once, starting at the cursor.
func (m *IPAM) findFree() (netip.Addr, bool) {
	first, last := m.firstHost(), broadcast(m.subnet).Prev()
	n := int(addrToUint32(last) - addrToUint32(first) + 1)
	a := m.wrap(m.next)
	for i := 0; i < n; i++ {
		if _, held := m.addrs[a]; !held {
			return a, true
		}
		a = m.wrap(a.Next())
	}
	return netip.Addr{}, false
}

// firstHost is the first address handed out: the one after the gateway.
func (m *IPAM) firstHost() netip.Addr { return Gateway(m.subnet).Next() }

// wrap brings an address past the last host address back to the first.
func (m *IPAM) wrap(a netip.Addr) netip.Addr {
	if !m.usable(a) {
		return m.firstHost()
	}
	return a
}

// usable reports whether a may be handed out at all.
func (m *IPAM) usable(a netip.Addr) bool {
	return a.IsValid() && m.subnet.Contains(a) && a != m.subnet.Addr() && a != Gateway(m.subnet) && a != broadcast(m.subnet)
}

// Release frees owner's address; an owner without one is not an error.
func (m *IPAM) Release(owner string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.owners[owner]
	if !ok {
		return nil
	}
	delete(m.owners, owner)
	delete(m.addrs, a)
	if err := m.save(); err != nil {
		m.owners[owner] = a
		m.addrs[a] = owner
		return fmt.Errorf("release %s of %s: %w", a, owner, err)
	}
	return nil
}

// Lookup returns owner's address, if it holds one.
func (m *IPAM) Lookup(owner string) (netip.Addr, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	a, ok := m.owners[owner]
	return a, ok
}

// List returns every allocation, in address order.
func (m *IPAM) List() []Allocation {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.listLocked()
}

func (m *IPAM) listLocked() []Allocation {
	out := make([]Allocation, 0, len(m.owners))
	for o, a := range m.owners {
		out = append(out, Allocation{Owner: o, Addr: a})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out
}

// remove deletes the state file (Manager.Teardown).
func (m *IPAM) remove() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reset(m.subnet)
	if m.path == "" {
		return nil
	}
	if err := os.Remove(m.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove ipam state: %w", err)
	}
	return nil
}

// save writes the state atomically: a reader (or a crash) sees either the
// old file or the new one, never a torn one.
func (m *IPAM) save() error {
	if m.path == "" {
		return nil
	}
	data, err := json.MarshalIndent(ipamFile{
		Version:     ipamFileVersion,
		Subnet:      m.subnet,
		Next:        m.next,
		Allocations: m.owners,
	}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode ipam state: %w", err)
	}
	if err := writeFileAtomic(m.path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save ipam state: %w", err)
	}
	return nil
}

// writeFileAtomic replaces path with data: write a temporary file in the
// same directory, fsync it, rename it over path, fsync the directory so
// the rename itself survives a crash.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	ok = true
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
