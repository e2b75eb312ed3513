package node

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/gossip"
)

func TestGenerateCredentialsWritesEveryFileWithItsMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "creds")
	c, err := GenerateCredentials(dir, false, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("directory: %v, mode %v; want 0700", err, fi.Mode().Perm())
	}
	for file, mode := range map[string]os.FileMode{
		GossipKeyFile: 0o600, APITokenFile: 0o600, APIReadTokenFile: 0o600, CAKeyFile: 0o600, CACertFile: 0o644,
	} {
		fi, err := os.Stat(c.Path(file))
		if err != nil {
			t.Errorf("%s: %v", file, err)
			continue
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", file, fi.Mode().Perm(), mode)
		}
	}
	raw, _ := os.ReadFile(c.Path(GossipKeyFile))
	if string(raw) != c.GossipKey+"\n" || strings.Count(string(raw), "\n") != 1 {
		t.Errorf("gossip.key is not the key on one line: %q", raw)
	}
	if key, err := gossip.ParseKey(strings.TrimSpace(string(raw))); err != nil || len(key) != 32 {
		t.Errorf("gossip.key does not parse as a 32-byte key: %v", err)
	}
	for file, want := range map[string]string{APITokenFile: c.APIToken, APIReadTokenFile: c.APIReadToken} {
		got, err := ReadSecretFile(c.Path(file))
		if err != nil || got != want || len(got) != 32 || strings.ContainsAny(got, "+/= ") {
			t.Errorf("%s: %q, %v; want %q (32 URL-safe characters)", file, got, err, want)
		}
	}
	if c.APIToken == c.APIReadToken {
		t.Error("the read-only token equals the API token")
	}
	if _, err := LoadCA(c.Path(CACertFile), c.Path(CAKeyFile)); err != nil {
		t.Errorf("the CA files do not load: %v", err)
	}
	// No temporary file is left behind.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 5 {
		t.Errorf("directory holds %d entries, want the 5 files", len(entries))
	}
}

func TestGenerateCredentialsRefusesToOverwriteUnlessAsked(t *testing.T) {
	dir := t.TempDir()
	first, err := GenerateCredentials(dir, false, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, err = GenerateCredentials(dir, false, time.Now())
	if !errors.Is(err, ErrCredentialsExist) || !strings.Contains(err.Error(), first.Path(GossipKeyFile)) {
		t.Fatalf("second run without overwrite: %v", err)
	}
	if got, _ := ReadSecretFile(first.Path(APITokenFile)); got != first.APIToken {
		t.Fatal("a refused run changed the token")
	}
	// One existing file is enough to refuse, and nothing else is written.
	other := t.TempDir()
	writeFile(t, filepath.Join(other, APITokenFile), "mine\n", 0o600)
	if _, err := GenerateCredentials(other, false, time.Now()); !errors.Is(err, ErrCredentialsExist) {
		t.Fatalf("over one existing file: %v", err)
	}
	if _, err := os.Stat(filepath.Join(other, GossipKeyFile)); err == nil {
		t.Error("a refused run wrote gossip.key")
	}
	second, err := GenerateCredentials(dir, true, time.Now())
	if err != nil {
		t.Fatalf("overwrite: %v", err)
	}
	if got, _ := ReadSecretFile(second.Path(APITokenFile)); got == first.APIToken || got != second.APIToken {
		t.Error("overwrite did not replace the token")
	}
}

func TestReadSecretFileTrimsAndRejectsEmptyFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	writeFile(t, path, "  s3cret\n\n", 0o600)
	if v, err := ReadSecretFile(path); err != nil || v != "s3cret" {
		t.Errorf("got %q, %v", v, err)
	}
	writeFile(t, path, "\n", 0o600)
	if _, err := ReadSecretFile(path); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty file: %v", err)
	}
	if _, err := ReadSecretFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file accepted")
	}
	writeFile(t, path, strings.Repeat("x", maxSecretFile+1), 0o600)
	if _, err := ReadSecretFile(path); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("huge file: %v", err)
	}
}

func TestOthersCanReadFlagsGroupOrWorldReadableFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "key")
	for mode, shared := range map[os.FileMode]bool{0o600: false, 0o400: false, 0o640: true, 0o644: true, 0o604: true} {
		writeFile(t, path, "k", mode)
		if got, s := OthersCanRead(path); s != shared || got != mode {
			t.Errorf("mode %v: shared %v (mode %v), want %v", mode, s, got, shared)
		}
	}
}

func TestConfigServesPlainHTTPOnLoopbackOnly(t *testing.T) {
	base := DefaultConfig()
	base.Gossip.NodeName = "a"
	base.Gossip.BindAddr = "127.0.0.1"
	base.Gossip.DataDir = t.TempDir()
	base.Gossip.GossipKey = []byte("0123456789abcdef")
	base.APIToken = "tok"
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string // "" for valid
	}{
		{"loopback v4", func(c *Config) { c.APIAddr = "127.0.0.1:7700" }, ""},
		{"loopback v6", func(c *Config) { c.APIAddr = "[::1]:7700" }, ""},
		{"localhost", func(c *Config) { c.APIAddr = "localhost:7700" }, ""},
		{"every address", func(c *Config) { c.APIAddr = "0.0.0.0:7700" }, "--api-insecure"},
		{"empty host", func(c *Config) { c.APIAddr = ":7700" }, "--tls-ca"},
		{"node address", func(c *Config) { c.APIAddr = "10.0.0.1:7700" }, "plain HTTP beyond loopback"},
		{"a host name", func(c *Config) { c.APIAddr = "api.example.com:7700" }, "plain HTTP beyond loopback"},
		{"insecure asked", func(c *Config) { c.APIAddr = "10.0.0.1:7700"; c.APIInsecure = true }, ""},
		{"dev", func(c *Config) { c.APIAddr = "10.0.0.1:7700"; c.Dev = true }, ""},
		{"tls", func(c *Config) { c.APIAddr = "10.0.0.1:7700"; c.TLS.CAFile, c.TLS.CAKeyFile = "ca.pem", "ca.key" }, ""},
		{"ca without key", func(c *Config) { c.TLS.CAFile = "ca.pem" }, "give both"},
		{"key without ca", func(c *Config) { c.TLS.CAKeyFile = "ca.key" }, "give both"},
		{"short certificates", func(c *Config) { c.TLS.CAFile, c.TLS.CAKeyFile, c.TLS.CertLifetime = "ca.pem", "ca.key", time.Minute }, "at least 1h"},
		{"read token", func(c *Config) { c.APIReadToken = "read" }, ""},
		{"read token equals token", func(c *Config) { c.APIReadToken = "tok" }, "must differ"},
		{"read token alone", func(c *Config) { c.Dev, c.APIToken, c.APIReadToken = true, "", "read" }, "needs an API token"},
	} {
		c := base
		tc.change(&c)
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}
