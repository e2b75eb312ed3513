package lb

import (
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
)

// picker chooses a backend per connection with a service's strategy,
// the same way the nftables rules do: source_hash and maglev compute the
// kernel's jhash of the client address with the same seed and table, so a
// client lands on the same backend through the proxy as through nftables.
// A picker is immutable except for the round-robin counter, which it
// shares with the picker it replaces so an update does not restart the
// rotation.
type picker struct {
	svc      string // the service's key, for logs and errors
	strategy string
	backends []netip.AddrPort
	table    []int // maglev buckets -> backend index
	seed     uint32
	next     *atomic.Uint64
}

func newPicker(s Service, backends []Endpoint, maglevSize int, seed uint32, prev *picker) (*picker, error) {
	p := &picker{svc: s.Key(), strategy: s.strategy(), seed: seed}
	if prev != nil {
		p.next = prev.next
	} else {
		p.next = new(atomic.Uint64)
	}
	ids := make([]string, len(backends))
	for i, b := range backends {
		p.backends = append(p.backends, netip.AddrPortFrom(b.IP, b.Port))
		ids[i] = b.ID()
	}
	if p.strategy == StrategyMaglev && len(backends) > 1 {
		t, err := Maglev(ids, maglevSize)
		if err != nil {
			return nil, err
		}
		p.table = t
	}
	return p, nil
}

// pick returns the index of the backend for a client; callers that fail
// to reach it move on to the next indexes. ok is false when there is no
// backend.
func (p *picker) pick(client netip.Addr) (int, bool) {
	n := len(p.backends)
	switch {
	case n == 0:
		return 0, false
	case n == 1:
		return 0, true
	case p.strategy == StrategyRandom:
		return rand.IntN(n), true
	case p.strategy == StrategySourceHash && client.Is4():
		return int(addrBucket(client, uint32(n), p.seed)), true
	case p.strategy == StrategyMaglev && client.Is4():
		return p.table[addrBucket(client, uint32(len(p.table)), p.seed)], true
	default: // round robin, and hashing strategies for non-IPv4 clients
		return int(p.next.Add(1) % uint64(n)), true
	}
}
