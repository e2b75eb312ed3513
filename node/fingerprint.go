package node

import (
	"fmt"
	"hash/fnv"
	"slices"
	"sort"

	"github.com/shoalmesh/shoal/gossip"
)

// membershipKey fingerprints what placement, the overlay and the load
// balancer read from membership: names, addresses, status and the tags
// they act on, but not the load figures every node republishes every few
// seconds. A tag change that leaves it equal needs no work.
func membershipKey(members []gossip.Member) uint64 {
	members = slices.Clone(members) // the cluster may share its slice
	sort.Slice(members, func(i, j int) bool { return members[i].Name < members[j].Name })
	h := fnv.New64a()
	for _, m := range members {
		labels := make([]string, 0, len(m.Meta.Labels))
		for k, v := range m.Meta.Labels {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		fmt.Fprintf(h, "%s|%s|%d|%s|%s|%s|%d|%d|%v\n", m.Name, m.Addr, m.Port, m.Status, m.Meta.Health, m.Meta.Overlay,
			m.Meta.Capacity.CPUMillis, m.Meta.Capacity.MemoryMB, labels)
	}
	return h.Sum64()
}
