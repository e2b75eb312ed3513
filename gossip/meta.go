package gossip

import (
	"fmt"
	"strconv"
	"strings"
)

// Tag keys are short because memberlist caps a member's metadata at 512
// bytes for the whole encoded map.
const (
	tagPeerID   = "id"
	tagP2PPort  = "pp"
	tagCPU      = "cpu"
	tagMemory   = "mem"
	tagLoadCPU  = "lc"
	tagLoadMem  = "lm"
	tagReplicas = "lr"
	tagRepCPU   = "rc"
	tagRepMem   = "rm"
	tagHealth   = "h"
	tagOverlay  = "ov"
	tagDisabled = "dd"
	labelPrefix = "l."
	HealthOK    = "ok"
	HealthDrain = "draining"
	// HealthDegraded says the node's container runtime is unreachable:
	// its replicas keep their last known state until it answers again.
	HealthDegraded = "degraded"
)

// Capacity is what a node offers to placement.
type Capacity struct {
	CPUMillis int64 `json:"cpu_millis"`
	MemoryMB  int64 `json:"memory_mb"`
}

// Load is a node's current usage, refreshed every few seconds.
type Load struct {
	CPUPercent   float64 `json:"cpu_percent"`
	MemoryUsedMB int64   `json:"memory_used_mb"`
	Replicas     int     `json:"replicas"`
	// ReplicaCPUMillis and ReplicaMemoryMB are what the node's replicas
	// use, summed from their cgroups.
	ReplicaCPUMillis int64 `json:"replica_cpu_millis"`
	ReplicaMemoryMB  int64 `json:"replica_memory_mb"`
}

// Meta is the metadata one node publishes in its serf tags.
type Meta struct {
	PeerID   string
	P2PPort  int
	Capacity Capacity
	Load     Load
	Health   string
	Labels   map[string]string
	// Disabled names the task drivers this node cannot run (a cgroup
	// controller is missing); the reasons are in its log and events.
	Disabled []string
	// Overlay is the node's overlay advert (subnet, claim time, VTEP MAC),
	// opaque here; the overlay package encodes it.
	Overlay string
}

// Tags encodes m as serf tags.
func (m Meta) Tags() map[string]string {
	t := map[string]string{
		tagPeerID:   m.PeerID,
		tagP2PPort:  strconv.Itoa(m.P2PPort),
		tagCPU:      strconv.FormatInt(m.Capacity.CPUMillis, 10),
		tagMemory:   strconv.FormatInt(m.Capacity.MemoryMB, 10),
		tagLoadCPU:  strconv.FormatFloat(m.Load.CPUPercent, 'f', 0, 64),
		tagLoadMem:  strconv.FormatInt(m.Load.MemoryUsedMB, 10),
		tagReplicas: strconv.Itoa(m.Load.Replicas),
		tagRepCPU:   strconv.FormatInt(m.Load.ReplicaCPUMillis, 10),
		tagRepMem:   strconv.FormatInt(m.Load.ReplicaMemoryMB, 10),
		tagHealth:   m.Health,
	}
	if m.Overlay != "" {
		t[tagOverlay] = m.Overlay
	}
	if len(m.Disabled) > 0 {
		t[tagDisabled] = strings.Join(m.Disabled, ",")
	}
	for k, v := range m.Labels {
		t[labelPrefix+k] = v
	}
	return t
}

// ParseMeta decodes serf tags. Unknown keys are ignored and malformed
// numbers read as zero, so a newer peer's tags never break an older node.
func ParseMeta(tags map[string]string) Meta {
	m := Meta{
		PeerID:  tags[tagPeerID],
		Health:  tags[tagHealth],
		Overlay: tags[tagOverlay],
	}
	if d := tags[tagDisabled]; d != "" {
		m.Disabled = strings.Split(d, ",")
	}
	m.P2PPort, _ = strconv.Atoi(tags[tagP2PPort])
	m.Capacity.CPUMillis, _ = strconv.ParseInt(tags[tagCPU], 10, 64)
	m.Capacity.MemoryMB, _ = strconv.ParseInt(tags[tagMemory], 10, 64)
	m.Load.CPUPercent, _ = strconv.ParseFloat(tags[tagLoadCPU], 64)
	m.Load.MemoryUsedMB, _ = strconv.ParseInt(tags[tagLoadMem], 10, 64)
	m.Load.Replicas, _ = strconv.Atoi(tags[tagReplicas])
	m.Load.ReplicaCPUMillis, _ = strconv.ParseInt(tags[tagRepCPU], 10, 64)
	m.Load.ReplicaMemoryMB, _ = strconv.ParseInt(tags[tagRepMem], 10, 64)
	for k, v := range tags {
		if name, ok := strings.CutPrefix(k, labelPrefix); ok {
			if m.Labels == nil {
				m.Labels = map[string]string{}
			}
			m.Labels[name] = v
		}
	}
	return m
}

// ParseLabels parses "k=v,k2=v2". Keys must be non-empty and unique.
func ParseLabels(s string) (map[string]string, error) {
	labels := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return labels, nil
	}
	for _, pair := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", pair)
		}
		if _, dup := labels[k]; dup {
			return nil, fmt.Errorf("label %q: duplicate key", k)
		}
		if strings.ContainsAny(k, " \t") {
			return nil, fmt.Errorf("label %q: key must not contain spaces", k)
		}
		labels[k] = v
	}
	return labels, nil
}

// encodedSize approximates the msgpack size serf checks against the 512
// byte metadata limit, so an oversized label set is refused with a clear
// message before serf refuses it with a vague one.
func encodedSize(tags map[string]string) int {
	n := 3
	for k, v := range tags {
		n += len(k) + len(v) + 4
	}
	return n
}
