package overlay

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
)

// claimFile is the on-disk form of a node's own claim.
type claimFile struct {
	Node      string       `json:"node"`
	Subnet    netip.Prefix `json:"subnet"`
	ClaimedAt int64        `json:"claimed_at"`
}

// SaveClaim persists the node's own claim at path (atomically). The claim
// time must survive restarts: a node that came back with a fresh time would
// lose its subnet to any node that claimed it meanwhile, and moving would
// re-address all its containers.
func SaveClaim(path string, c Claim) error {
	data, err := json.Marshal(claimFile{Node: c.Node, Subnet: c.Subnet, ClaimedAt: c.ClaimedAt})
	if err != nil {
		return fmt.Errorf("encode subnet claim: %w", err)
	}
	if err := writeFileAtomic(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("save subnet claim %s: %w", c.Subnet, err)
	}
	return nil
}

// LoadClaim reads a claim saved by SaveClaim. A missing file is the zero
// Claim and no error: the node has never claimed a subnet.
func LoadClaim(path string) (Claim, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return Claim{}, nil
	}
	if err != nil {
		return Claim{}, fmt.Errorf("load subnet claim: %w", err)
	}
	var f claimFile
	if err := json.Unmarshal(data, &f); err != nil {
		return Claim{}, fmt.Errorf("load subnet claim %s: %w", path, err)
	}
	if !f.Subnet.IsValid() || f.ClaimedAt <= 0 {
		return Claim{}, fmt.Errorf("load subnet claim %s: incomplete claim %+v", path, f)
	}
	return Claim{Node: f.Node, Subnet: f.Subnet, ClaimedAt: f.ClaimedAt}, nil
}
