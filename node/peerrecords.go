package node

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/state"
)

// Peers are not trusted blindly. Anyone holding the gossip key can open
// state streams, so every record a peer sends is checked here before the
// store takes it (gossip.SyncConfig.Accept), exactly as the API checks what
// a user sends: a job parses strictly and validates, a secret's or
// config's keys are file names, automatic records decode. Endpoint and
// usage records must in addition carry the signature of the node they name
// (its p2p identity key, checked against the peer id it publishes in
// gossip), so a key holder cannot steer traffic to itself or skew another
// node's usage. A record that fails is dropped, not stored and not
// forwarded; state sync counts and logs it.
//
// Tombstones are not checked: they carry no body, and a forged delete of
// an endpoint or usage record is undone by its owner's next write.

// peerCheck validates records from peers.
type peerCheck struct {
	// verify checks that a record carries the named node's signature
	// (gossip.Cluster.VerifyRecord).
	verify func(node string, r state.Record) error
	// keys are the gossip keyring's keys, to open sealed secrets.
	keys func() [][]byte
}

// accept returns nil for a record this node may store, else why not.
func (c peerCheck) accept(r state.Record) error {
	if r.Deleted {
		return nil
	}
	var err error
	switch r.Kind {
	case kindJob:
		err = validatePeerJob(r)
	case api.KindSecret, api.KindConfig:
		err = validatePeerData(c.keys(), r)
	case kindEndpoint:
		err = c.checkEndpoint(r)
	case kindUsage:
		err = c.checkUsage(r)
	case kindScale:
		var s scaleRecord
		if s, err = decodeScale(r); err == nil && (s.Replicas < 0 || s.Replicas > api.MaxReplicas) {
			err = fmt.Errorf("scale record %s: %d replicas, limit %d", r.ID, s.Replicas, api.MaxReplicas)
		}
	case kindRolloutMark:
		_, err = decodeRolloutMark(r)
	default:
		// Kinds this version does not know are stored and passed on, never
		// acted on: a newer node's records must not split the digests.
	}
	return err
}

// validatePeerJob checks a job record as the API checks a submitted job:
// strict parsing, the id, and Validate (which checks the job as
// ApplyDefaults completes it). It does not insist on the stored form
// having every default filled in: a release that adds a default would make
// every node drop the jobs stored before it, and readers already treat a
// missing field as its default.
func validatePeerJob(r state.Record) error {
	j, err := api.ParseJob(r.Body, "application/json")
	if err != nil {
		return fmt.Errorf("job %s: %w", r.ID, err)
	}
	if j.ID != r.ID {
		return fmt.Errorf("job %s: body names job %q", r.ID, j.ID)
	}
	if err := j.Validate(); err != nil {
		return fmt.Errorf("job %s: %w", r.ID, err)
	}
	if j.Rollout != nil && j.Rollout.PreviousTask != nil {
		// A rollback makes the previous task the running one.
		if err := validatePreviousTask(j); err != nil {
			return fmt.Errorf("job %s: rollout.previous_task: %w", r.ID, err)
		}
	}
	return nil
}

// validatePreviousTask validates the task a rollback would restore, in the
// job as it was: the service and health check may name ports the previous
// task did not have, and its mounts may name volumes since removed, which
// are still held to the rules of volume names.
func validatePreviousTask(j api.Job) error {
	c := j.Clone()
	c.Task = (api.Job{Task: *j.Rollout.PreviousTask}).Clone().Task
	c.Service, c.Health, c.Rollout = nil, nil, nil
	for _, m := range c.Task.Mounts {
		if !slices.ContainsFunc(c.Volumes, func(v api.Volume) bool { return v.Name == m.Volume }) {
			c.Volumes = append(c.Volumes, api.Volume{Name: m.Volume, Type: api.VolumeEphemeral})
		}
	}
	return c.Validate()
}

// validatePeerData checks a secret or config as the API checks one: the
// name, and the keys and values once opened. A secret must be sealed when
// the cluster has a gossip key, so no plaintext reaches a state file.
func validatePeerData(keys [][]byte, r state.Record) error {
	data, body, err := openData(keys, r.Kind, r.ID, r.Body)
	if err != nil {
		return err
	}
	switch {
	case r.Kind == api.KindSecret && len(keys) > 0 && body.Sealed == nil:
		return fmt.Errorf("secret %s: stored in the clear in a cluster with a gossip key", r.ID)
	case r.Kind == api.KindConfig && body.Sealed != nil:
		return fmt.Errorf("config %s: sealed, and configs never are", r.ID)
	}
	if ferr := api.ValidateData(r.ID, api.Data{Data: data}); ferr != nil {
		return fmt.Errorf("%s %s: %w", r.Kind, r.ID, ferr)
	}
	d := api.Data{Data: data}
	size := 0
	for k, v := range data {
		size += len(k) + len(v)
	}
	if !slices.Equal(body.Keys, d.SortedKeys()) || body.Bytes != size {
		return fmt.Errorf("%s %s: listed keys or size disagree with the data", r.Kind, r.ID)
	}
	return nil
}

// checkEndpoint decodes an endpoint record, checks what load balancers
// act on, and its owner's signature.
func (c peerCheck) checkEndpoint(r state.Record) error {
	ep, err := decodeEndpoint(r)
	if err != nil {
		return err
	}
	if err := api.ValidateID(ep.Job); err != nil || ep.Replica >= api.MaxReplicas {
		return fmt.Errorf("endpoint %s: names no possible replica", r.ID)
	}
	if ep.IP != "" {
		if _, err := netip.ParseAddr(ep.IP); err != nil {
			return fmt.Errorf("endpoint %s: ip: %w", r.ID, err)
		}
	}
	for name, port := range ep.Ports {
		if port < 1 || port > 65535 {
			return fmt.Errorf("endpoint %s: port %q is %d", r.ID, clipName(name), port)
		}
	}
	return c.checkOwner(ep.Node, r)
}

// checkUsage decodes a usage record and checks its owner's signature.
func (c peerCheck) checkUsage(r state.Record) error {
	u, err := decodeUsage(r)
	if err != nil {
		return err
	}
	if u.Replicas < 0 || u.CPUMillis < 0 || u.MemoryMB < 0 {
		return fmt.Errorf("usage %s: negative usage", r.ID)
	}
	return c.checkOwner(u.Node, r)
}

// checkOwner checks that owner wrote r: the version names it and the
// signature is its.
func (c peerCheck) checkOwner(owner string, r state.Record) error {
	if r.Version.Node != owner {
		return fmt.Errorf("%s: written by %q, owned by %q: %w", r.Key(), r.Version.Node, owner, gossip.ErrBadSignature)
	}
	if c.verify == nil {
		return errors.New("no signature check configured")
	}
	return c.verify(owner, r)
}

func clipName(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
