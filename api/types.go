// Package api holds the JSON wire types of Shoal's HTTP API and a Go client
// for it, used by the CLI and the tests. It must not import node.
package api

import "time"

// Node is one cluster member as GET /v1/nodes reports it.
type Node struct {
	Name     string            `json:"name"`
	Addr     string            `json:"addr"`
	Status   string            `json:"status"`
	Tags     map[string]string `json:"tags"`
	Labels   map[string]string `json:"labels,omitempty"`
	Capacity Capacity          `json:"capacity"`
	Load     Load              `json:"load"`
	Health   string            `json:"health"`
	// DisabledDrivers are the task drivers the node cannot run (a cgroup
	// controller is missing); its log and events say why.
	DisabledDrivers []string `json:"disabled_drivers,omitempty"`
	PeerID          string   `json:"peer_id,omitempty"`
}

// Capacity is what a node offers to placement.
type Capacity struct {
	CPUMillis int64 `json:"cpu_millis"`
	MemoryMB  int64 `json:"memory_mb"`
}

// Load is a node's current usage.
type Load struct {
	CPUPercent   float64 `json:"cpu_percent"`
	MemoryUsedMB int64   `json:"memory_used_mb"`
	Replicas     int     `json:"replicas"`
	// ReplicaCPUMillis and ReplicaMemoryMB are what this node's replicas
	// use, summed from their cgroups.
	ReplicaCPUMillis int64 `json:"replica_cpu_millis"`
	ReplicaMemoryMB  int64 `json:"replica_memory_mb"`
}

// Image is an image in a node's containerd namespace.
type Image struct {
	Name      string    `json:"name"`
	Digest    string    `json:"digest"`
	Size      int64     `json:"size"`
	CreatedAt time.Time `json:"created_at"`
}

// JoinRequest is the body of POST /v1/join.
type JoinRequest struct {
	Addrs []string `json:"addrs"`
}

// JoinResponse reports how many addresses answered.
type JoinResponse struct {
	Joined int `json:"joined"`
}

// Error is the body of every non-2xx response.
type Error struct {
	Error string `json:"error"`
}

// Health is the body of GET /healthz.
type Health struct {
	Status string `json:"status"`
	Node   string `json:"node"`
}

// DeleteResponse answers DELETE /v1/jobs/{id}.
type DeleteResponse struct {
	ID      string `json:"id"`
	Deleted bool   `json:"deleted"`
	Version string `json:"version"`
}

// Event is something that happened on a node, as GET /v1/events reports
// it: replicas started, stopped, exited, handed over, health flips, image
// pulls.
type Event struct {
	// Seq orders the node's events; ask for those after it with ?since=.
	Seq     uint64    `json:"seq"`
	Time    time.Time `json:"time"`
	Node    string    `json:"node"`
	Kind    string    `json:"kind"`
	Job     string    `json:"job,omitempty"`
	Replica int       `json:"replica"`
	Message string    `json:"message"`
}

// ServiceStatus is one service as GET /v1/services reports it: what the
// called node programs.
type ServiceStatus struct {
	Name      string            `json:"name"`
	Job       string            `json:"job"`
	VIP       string            `json:"vip"`
	Port      int               `json:"port"`
	Protocol  string            `json:"protocol"`
	NodePort  int               `json:"node_port,omitempty"`
	Strategy  string            `json:"strategy"`
	Endpoints []ServiceEndpoint `json:"endpoints"`
}

// ServiceEndpoint is one replica behind a service.
type ServiceEndpoint struct {
	Node    string `json:"node"`
	Replica int    `json:"replica"`
	IP      string `json:"ip"`
	Port    int    `json:"port"`
	Healthy bool   `json:"healthy"`
}
