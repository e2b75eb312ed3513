package gossip

import (
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoalmesh/shoal/state"
)

// Errors of record signature checks. State sync counts dropped records by
// them, so an Accept hook wraps them rather than replacing them.
var (
	// ErrBadSignature means a record that must be signed by its owner is
	// unsigned, or its signature does not verify against the owner's
	// peer id.
	ErrBadSignature = errors.New("bad record signature")
	// ErrUnknownSigner means the owner named by a record is not a member
	// this node knows, or publishes no usable peer id. The record is
	// dropped for now; anti-entropy offers it again once the member is
	// known.
	ErrUnknownSigner = errors.New("record signer is not a known member")
)

// Sign signs data with this node's libp2p identity key (ed25519), the key
// its peer id is derived from, so that any member can check the signature
// against the peer id the node publishes in gossip.
func (h *Host) Sign(data []byte) ([]byte, error) {
	key := h.h.Peerstore().PrivKey(h.h.ID())
	if key == nil {
		return nil, errors.New("sign: the p2p host has no private key")
	}
	sig, err := key.Sign(data)
	if err != nil {
		return nil, fmt.Errorf("sign with p2p identity: %w", err)
	}
	return sig, nil
}

// VerifyRecord checks that r carries node's signature over its
// SignedBytes, against the public key of the peer id node publishes in its
// tags. Members that failed or left still count as known while serf
// remembers them, so their last records keep verifying until they are
// collected.
func (c *Cluster) VerifyRecord(node string, r state.Record) error {
	m, ok := c.member(node)
	if !ok || m.Meta.PeerID == "" {
		return fmt.Errorf("verify %s: node %q: %w", r.Key(), node, ErrUnknownSigner)
	}
	return VerifyRecordFrom(m.Meta.PeerID, r)
}

// VerifyRecordFrom checks r's signature against the public key of a libp2p
// peer id (ed25519 ids embed their key).
func VerifyRecordFrom(peerID string, r state.Record) error {
	pid, err := peer.Decode(peerID)
	if err != nil {
		return fmt.Errorf("verify %s: peer id %q: %v: %w", r.Key(), peerID, err, ErrUnknownSigner)
	}
	pub, err := pid.ExtractPublicKey()
	if err != nil {
		return fmt.Errorf("verify %s: peer id %s embeds no public key: %v: %w", r.Key(), peerID, err, ErrUnknownSigner)
	}
	if len(r.Sig) == 0 {
		return fmt.Errorf("verify %s: unsigned: %w", r.Key(), ErrBadSignature)
	}
	ok, err := pub.Verify(r.SignedBytes(), r.Sig)
	if err != nil || !ok {
		return fmt.Errorf("verify %s: signature does not match %s: %w", r.Key(), peerID, ErrBadSignature)
	}
	return nil
}
