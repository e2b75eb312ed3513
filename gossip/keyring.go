package gossip

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/hashicorp/memberlist"
	"github.com/hashicorp/serf/serf"
)

// Gossip key rotation. memberlist holds a keyring: it encrypts with the
// primary key and decrypts with any key in the ring, so a new key can be
// installed everywhere, made primary everywhere, and the old one removed,
// without a moment when two nodes cannot talk. serf carries each step to
// every member as a query and, on every member, saves the ring to
// DATA_DIR/serf.keyring, which wins over the configured key on the next
// start (the configured key may be stale after a rotation).

// keyringFile holds the keyring after a rotation: a JSON list of base64
// keys, the primary first (serf's format).
const keyringFile = "serf.keyring"

// ErrNoKeyring is returned by key operations on a cluster without a gossip
// key (dev mode): there is nothing to rotate.
var ErrNoKeyring = errors.New("gossip encryption is off (no gossip key): there is no keyring")

// KeyID names a gossip key without revealing it: 16 hex digits of a hash
// of the key. Secrets sealed under a key record its id.
func KeyID(key []byte) string {
	h := sha256.New()
	h.Write([]byte("shoal gossip key id v1\x00"))
	h.Write(key)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// loadKeyring returns the keyring a node starts with: the one saved in
// dataDir by an earlier rotation, else the configured key alone.
func loadKeyring(dataDir string, configured []byte, log *slog.Logger) (*memberlist.Keyring, string, error) {
	path := filepath.Join(dataDir, keyringFile)
	raw, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		kr, err := memberlist.NewKeyring(nil, configured)
		if err != nil {
			return nil, "", fmt.Errorf("gossip keyring: %w", err)
		}
		return kr, path, nil
	case err != nil:
		return nil, "", fmt.Errorf("read gossip keyring: %w", err)
	}
	keys, err := parseKeyring(raw)
	if err != nil {
		return nil, "", fmt.Errorf("gossip keyring %s: %w (remove it to start from the configured gossip key alone)", path, err)
	}
	if !slices.ContainsFunc(keys, func(k []byte) bool { return string(k) == string(configured) }) {
		// Expected after a rotation whose new key was not copied into the
		// key file; the saved ring is what the cluster uses.
		log.Warn("the configured gossip key is not in this node's saved keyring; using the keyring",
			"keyring", path, "configured_key_id", KeyID(configured), "primary_key_id", KeyID(keys[0]))
	}
	kr, err := memberlist.NewKeyring(keys, keys[0])
	if err != nil {
		return nil, "", fmt.Errorf("gossip keyring %s: %w", path, err)
	}
	return kr, path, nil
}

// parseKeyring decodes serf's keyring file.
func parseKeyring(raw []byte) ([][]byte, error) {
	var encoded []string
	if err := json.Unmarshal(raw, &encoded); err != nil {
		return nil, fmt.Errorf("not a JSON list of keys: %w", err)
	}
	if len(encoded) == 0 {
		return nil, errors.New("no keys")
	}
	keys := make([][]byte, 0, len(encoded))
	for i, s := range encoded {
		k, err := ParseKey(s)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// Keys returns the gossip keys this node holds, the primary first; nil
// without encryption. The keys must not be modified.
func (c *Cluster) Keys() [][]byte {
	if c.keyring == nil {
		return nil
	}
	// A copy: memberlist's RemoveKey shifts the ring's array in place.
	return slices.Clone(c.keyring.GetKeys())
}

// KeyResult is what the members answered to a keyring change.
type KeyResult struct {
	// Nodes is how many members were asked; Responded how many answered.
	Nodes, Responded int
	// Messages maps a member to what it reported: why it failed, or a
	// warning.
	Messages map[string]string
}

// KeyringList is the cluster's view of its keys, by key id.
type KeyringList struct {
	KeyResult
	// Installed maps a key id to the number of members that hold it.
	Installed map[string]int
	// Primary maps a key id to the number of members that encrypt with it.
	Primary map[string]int
}

// InstallKey adds key to every member's keyring. The cluster keeps
// encrypting with its primary key.
func (c *Cluster) InstallKey(key []byte) (KeyResult, error) {
	return c.keyOp("install", key, (*serf.KeyManager).InstallKey)
}

// UseKey makes key, already installed everywhere, every member's primary.
func (c *Cluster) UseKey(key []byte) (KeyResult, error) {
	return c.keyOp("use", key, (*serf.KeyManager).UseKey)
}

// RemoveKey removes key from every member's keyring. Members refuse to
// remove their primary key.
func (c *Cluster) RemoveKey(key []byte) (KeyResult, error) {
	return c.keyOp("remove", key, (*serf.KeyManager).RemoveKey)
}

func (c *Cluster) keyOp(op string, key []byte, fn func(*serf.KeyManager, string) (*serf.KeyResponse, error)) (KeyResult, error) {
	if c.keyring == nil {
		return KeyResult{}, ErrNoKeyring
	}
	if err := memberlist.ValidateKey(key); err != nil {
		return KeyResult{}, fmt.Errorf("%s gossip key: %w", op, err)
	}
	resp, err := fn(c.serf.KeyManager(), base64.StdEncoding.EncodeToString(key))
	res := keyResult(resp)
	if err != nil {
		return res, fmt.Errorf("%s gossip key %s: %w", op, KeyID(key), err)
	}
	return res, nil
}

// ListKeys asks every member which keys it holds.
func (c *Cluster) ListKeys() (KeyringList, error) {
	if c.keyring == nil {
		return KeyringList{}, ErrNoKeyring
	}
	resp, err := c.serf.KeyManager().ListKeys()
	out := KeyringList{KeyResult: keyResult(resp), Installed: map[string]int{}, Primary: map[string]int{}}
	if resp != nil {
		for k, n := range resp.Keys {
			out.Installed[encodedKeyID(k)] += n
		}
		for k, n := range resp.PrimaryKeys {
			if k != "" {
				out.Primary[encodedKeyID(k)] += n
			}
		}
	}
	if err != nil {
		return out, fmt.Errorf("list gossip keys: %w", err)
	}
	return out, nil
}

func keyResult(resp *serf.KeyResponse) KeyResult {
	if resp == nil {
		return KeyResult{Messages: map[string]string{}}
	}
	return KeyResult{Nodes: resp.NumNodes, Responded: resp.NumResp, Messages: maps.Clone(resp.Messages)}
}

// encodedKeyID is KeyID of a base64 key as serf reports it.
func encodedKeyID(s string) string {
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return "invalid"
	}
	return KeyID(k)
}
