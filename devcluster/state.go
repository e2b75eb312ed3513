package devcluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
)

// stateFile is written into the cluster directory before Up creates
// anything, so Down knows what a (possibly partial) cluster was made of.
const stateFile = "cluster.json"

// state is what Up records for Down and Status. Secrets are not in it:
// they are in the credential files next to it (node.GenerateCredentials).
type state struct {
	Name   string `json:"name"`
	Subnet string `json:"subnet"`
	Nodes  int    `json:"nodes"`
	// Containerd is the socket the agents use; empty until chosen.
	Containerd string `json:"containerd,omitempty"`
	// PrivateContainerd is set when Up started that containerd, so Down
	// stops it (and never a daemon it did not start).
	PrivateContainerd bool `json:"private_containerd,omitempty"`
	// Executable is the shoal binary the agents run.
	Executable string `json:"executable,omitempty"`
	Image      string `json:"image,omitempty"`
}

func writeState(dir string, st state) error {
	raw, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode cluster state: %w", err)
	}
	// Readable by all: it holds no secret, and lets `dev status` work
	// without root.
	return writeFileAtomic(filepath.Join(dir, stateFile), append(raw, '\n'), 0o644)
}

// readState returns the recorded state, ok=false when there is none.
func readState(dir string) (state, bool, error) {
	var st state
	raw, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, false, nil
	}
	if err != nil {
		return st, false, fmt.Errorf("read cluster state: %w", err)
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		return st, false, fmt.Errorf("read cluster state %s: %w", filepath.Join(dir, stateFile), err)
	}
	return st, true, nil
}

// planFromState rebuilds the plan of a recorded cluster; without a record
// (or with a damaged one) it falls back to the default subnet, which only
// the addresses depend on: Down finds everything by name.
func planFromState(name, dir string, st state, nodes int) Plan {
	subnet, err := netip.ParsePrefix(st.Subnet)
	if err != nil {
		subnet = netip.MustParsePrefix(DefaultSubnet)
	}
	if nodes < 1 {
		nodes = 1
	}
	p, err := NewPlan(name, nodes, subnet, dir)
	if err != nil {
		// A subnet too small for the node count seen: addresses do not
		// matter for teardown, so lay out the names on a roomy subnet.
		p, _ = NewPlan(name, min(nodes, MaxNodes), netip.MustParsePrefix(DefaultSubnet), dir)
	}
	return p
}

func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Chmod(tmp, perm); err != nil { // WriteFile's perm is masked by umask
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ResolveDir returns the directory of cluster name: dir if given, else
// the default location or the directory its symlink points to.
func ResolveDir(name, dir string) (string, error) {
	if dir != "" {
		if !filepath.IsAbs(dir) {
			return "", fmt.Errorf("cluster directory %q must be absolute", dir)
		}
		return filepath.Clean(dir), nil
	}
	def := DefaultDir(name)
	if target, err := os.Readlink(def); err == nil {
		if !filepath.IsAbs(target) {
			target = filepath.Join(BaseDir, target)
		}
		return filepath.Clean(target), nil
	}
	return def, nil
}
