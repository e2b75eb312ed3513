package node

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The names `shoal keygen --dir` gives a cluster's credential files.
const (
	// GossipKeyFile holds the gossip key, base64 on one line.
	GossipKeyFile = "gossip.key"
	// APITokenFile holds the API token: every call.
	APITokenFile = "api.token"
	// APIReadTokenFile holds the read-only API token: GET calls only.
	APIReadTokenFile = "api-read.token"
	// CACertFile is the cluster CA's certificate: public, given to every
	// agent and client.
	CACertFile = "ca.pem"
	// CAKeyFile is the cluster CA's private key: given to every agent,
	// which issues its own serving certificate with it.
	CAKeyFile = "ca.key"
)

// ErrCredentialsExist is returned by GenerateCredentials when a file it
// would write exists and overwriting was not asked for.
var ErrCredentialsExist = errors.New("credential files exist")

// Credentials are a cluster's secrets as GenerateCredentials wrote them.
type Credentials struct {
	Dir string
	// GossipKey is base64, as in gossip.key.
	GossipKey    string
	APIToken     string
	APIReadToken string
}

// Path is the path of one of the credential files in c.Dir.
func (c Credentials) Path(file string) string { return filepath.Join(c.Dir, file) }

// NewGossipKey returns a random 32-byte (AES-256) gossip key in base64.
func NewGossipKey() (string, error) {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		return "", fmt.Errorf("generate gossip key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(k), nil
}

// NewAPIToken returns a random API token: 24 bytes in URL-safe base64, so
// it needs no quoting in a header or a shell.
func NewAPIToken() (string, error) {
	t := make([]byte, 24)
	if _, err := rand.Read(t); err != nil {
		return "", fmt.Errorf("generate API token: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(t), nil
}

// GenerateCredentials writes a new cluster's credentials into dir
// (created 0700 if missing): the gossip key, the API token, the read-only
// API token and the cluster CA (ECDSA P-256). Secrets are mode 0600,
// ca.pem 0644. Unless overwrite is set it writes nothing when any of the
// files exists: replacing a running cluster's credentials locks its
// agents out of each other.
func GenerateCredentials(dir string, overwrite bool, now time.Time) (Credentials, error) {
	c := Credentials{Dir: dir}
	var err error
	if c.GossipKey, err = NewGossipKey(); err != nil {
		return c, err
	}
	if c.APIToken, err = NewAPIToken(); err != nil {
		return c, err
	}
	if c.APIReadToken, err = NewAPIToken(); err != nil {
		return c, err
	}
	caCert, caKey, err := NewCA(now)
	if err != nil {
		return c, err
	}
	files := []struct {
		name string
		data []byte
		mode fs.FileMode
	}{
		{GossipKeyFile, []byte(c.GossipKey + "\n"), 0o600},
		{APITokenFile, []byte(c.APIToken + "\n"), 0o600},
		{APIReadTokenFile, []byte(c.APIReadToken + "\n"), 0o600},
		{CACertFile, caCert, 0o644},
		{CAKeyFile, caKey, 0o600},
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return c, fmt.Errorf("create credentials directory: %w", err)
	}
	if !overwrite {
		var existing []string
		for _, f := range files {
			if _, err := os.Lstat(c.Path(f.name)); err == nil {
				existing = append(existing, c.Path(f.name))
			}
		}
		if len(existing) > 0 {
			return c, fmt.Errorf("%w: %s", ErrCredentialsExist, strings.Join(existing, ", "))
		}
	}
	for _, f := range files {
		if err := writeCredential(c.Path(f.name), f.data, f.mode, overwrite); err != nil {
			return c, err
		}
	}
	return c, nil
}

// writeCredential writes a file through a temporary one in the same
// directory, so a reader never sees it half written or with a wider mode
// than perm. Without overwrite, an existing file (one that appeared since
// the caller looked) is left alone and reported.
func writeCredential(path string, data []byte, perm fs.FileMode, overwrite bool) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if overwrite {
		err = os.Rename(tmp.Name(), path)
	} else {
		// A hard link fails if the name exists: create-if-absent, atomically.
		err = os.Link(tmp.Name(), path)
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s", ErrCredentialsExist, path)
		}
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// maxSecretFile bounds what is read as a secret: keys and tokens are
// short, and a wrong path should not read a disk image into memory.
const maxSecretFile = 64 << 10

// ReadSecretFile returns the content of a key or token file with the
// surrounding white space (the final newline) removed. The value never
// appears in its errors.
func ReadSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxSecretFile+1))
	if err != nil {
		return "", fmt.Errorf("read secret file %s: %w", path, err)
	}
	if len(raw) > maxSecretFile {
		return "", fmt.Errorf("read secret file %s: larger than %d bytes; is it the right file?", path, maxSecretFile)
	}
	v := strings.TrimSpace(string(raw))
	if v == "" {
		return "", fmt.Errorf("read secret file %s: it is empty", path)
	}
	return v, nil
}

// OthersCanRead reports whether users other than the file's owner may
// read it, with its mode, for a warning about a secret left readable.
func OthersCanRead(path string) (fs.FileMode, bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, false
	}
	return fi.Mode().Perm(), fi.Mode().Perm()&0o044 != 0
}
