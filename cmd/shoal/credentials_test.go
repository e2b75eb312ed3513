package main

import (
	"bytes"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/node"
)

// runCLIOutput runs the CLI and returns what it wrote and its error.
func runCLIOutput(args ...string) (string, error) {
	root := newRootCmd()
	root.SetArgs(args)
	var out strings.Builder
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.Execute()
	return out.String(), err
}

func TestHelpNeverShowsASecretFromTheEnvironment(t *testing.T) {
	secrets := map[string]string{
		"SHOAL_GOSSIP_KEY":     "Z29zc2lwLWtleS1mcm9tLWVudi0xMjM0NTY3ODkwMTI=",
		"SHOAL_API_TOKEN":      "api-token-from-env",
		"SHOAL_API_READ_TOKEN": "read-token-from-env",
		"SHOAL_TOKEN":          "cli-token-from-env",
	}
	for k, v := range secrets {
		t.Setenv(k, v)
	}
	for _, args := range [][]string{{"agent", "--help"}, {"--help"}, {"nodes", "--help"}, {"run", "--help"}} {
		out, err := runCLIOutput(args...)
		if err != nil {
			t.Fatalf("shoal %s: %v", strings.Join(args, " "), err)
		}
		for k, v := range secrets {
			if strings.Contains(out, v) {
				t.Errorf("shoal %s shows %s's value:\n%s", strings.Join(args, " "), k, out)
			}
		}
	}
	out, _ := runCLIOutput("agent", "--help")
	for _, flag := range []string{"--gossip-key-file", "--api-token-file", "--api-read-token-file", "--tls-ca", "--tls-ca-key", "--api-insecure", "discouraged"} {
		if !strings.Contains(out, flag) {
			t.Errorf("agent --help lacks %s", flag)
		}
	}
}

func TestAgentSecretsComeFromFileFlagOrEnvironment(t *testing.T) {
	dir := t.TempDir()
	key := "MDEyMzQ1Njc4OWFiY2RlZg==" // 16 bytes
	envKey := "ZmVkY2JhOTg3NjU0MzIxMA=="
	keyFile := writeTemp(t, dir, "gossip.key", key+"\n")
	tokenFile := writeTemp(t, dir, "api.token", "file-token\n")
	readFile := writeTemp(t, dir, "api-read.token", "read-token\n")
	shared := writeTemp(t, dir, "shared.token", "shared-token\n")
	if err := os.Chmod(shared, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SHOAL_GOSSIP_KEY", envKey)
	t.Setenv("SHOAL_API_TOKEN", "env-token")
	t.Setenv("SHOAL_API_READ_TOKEN", "env-read-token")

	resolve := func(s agentSecrets) (node.Config, string, error) {
		var logs bytes.Buffer
		cfg := node.DefaultConfig()
		err := s.apply(&cfg, slog.New(slog.NewTextHandler(&logs, nil)))
		return cfg, logs.String(), err
	}
	cfg, logs, err := resolve(agentSecrets{gossipKeyFile: keyFile, apiTokenFile: tokenFile, readTokenFile: readFile})
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := gossip.ParseKey(key); !bytes.Equal(cfg.Gossip.GossipKey, want) || cfg.APIToken != "file-token" || cfg.APIReadToken != "read-token" {
		t.Errorf("files: key %x token %q read %q", cfg.Gossip.GossipKey, cfg.APIToken, cfg.APIReadToken)
	}
	if logs != "" {
		t.Errorf("0600 files logged: %s", logs)
	}

	cfg, _, err = resolve(agentSecrets{})
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := gossip.ParseKey(envKey); !bytes.Equal(cfg.Gossip.GossipKey, want) || cfg.APIToken != "env-token" || cfg.APIReadToken != "env-read-token" {
		t.Errorf("environment: key %x token %q read %q", cfg.Gossip.GossipKey, cfg.APIToken, cfg.APIReadToken)
	}

	cfg, _, err = resolve(agentSecrets{apiToken: "flag-token"})
	if err != nil || cfg.APIToken != "flag-token" {
		t.Errorf("value flag: %q, %v", cfg.APIToken, err)
	}

	cfg, logs, err = resolve(agentSecrets{apiTokenFile: shared})
	if err != nil || cfg.APIToken != "shared-token" {
		t.Fatalf("shared file: %q, %v", cfg.APIToken, err)
	}
	if !strings.Contains(logs, "readable by other users") || !strings.Contains(logs, shared) || strings.Contains(logs, "shared-token") {
		t.Errorf("a 0644 token file: want a warning naming the file, not the token:\n%s", logs)
	}

	if _, _, err := resolve(agentSecrets{apiToken: "a", apiTokenFile: tokenFile}); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("value and file: %v", err)
	}
	bad := writeTemp(t, dir, "bad.key", "not-base64-secret-value!\n")
	if _, _, err := resolve(agentSecrets{gossipKeyFile: bad}); err == nil || strings.Contains(err.Error(), "not-base64-secret-value") {
		t.Errorf("a bad key file: want an error without the value, got %v", err)
	}
}

func TestConfigFileNamesTheCredentialFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	content := "gossip_key_file: /etc/shoal/gossip.key\napi_token_file: /etc/shoal/api.token\n" +
		"api_read_token_file: /etc/shoal/api-read.token\ntls_ca: /etc/shoal/ca.pem\ntls_ca_key: /etc/shoal/ca.key\n" +
		"tls_san: [api.example.com, 10.0.0.9]\napi: 0.0.0.0:7700\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newAgentCmd()
	if err := applyConfigFile(cmd.Flags(), path); err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	for flag, want := range map[string]string{
		"gossip-key-file": "/etc/shoal/gossip.key", "api-token-file": "/etc/shoal/api.token",
		"api-read-token-file": "/etc/shoal/api-read.token", "tls-ca": "/etc/shoal/ca.pem", "tls-ca-key": "/etc/shoal/ca.key",
		"tls-san": "[api.example.com,10.0.0.9]",
	} {
		if got := get(flag); got != want {
			t.Errorf("%s = %q, want %q", flag, got, want)
		}
	}
}

func TestExampleAgentConfigIsValid(t *testing.T) {
	cmd := newAgentCmd()
	if err := applyConfigFile(cmd.Flags(), "../../examples/agent/agent.yaml"); err != nil {
		t.Fatal(err)
	}
	if got := cmd.Flags().Lookup("gossip-key-file").Value.String(); got != "/etc/shoal/gossip.key" {
		t.Errorf("gossip-key-file = %q", got)
	}
}

func TestKeygenDirWritesTheFilesOnceUnlessForced(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "creds")
	out, err := runCLIOutput("keygen", "--dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"gossip.key", "api.token", "api-read.token", "ca.pem", "ca.key"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		want := os.FileMode(0o600)
		if f == "ca.pem" {
			want = 0o644
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", f, fi.Mode().Perm(), want)
		}
		if !strings.Contains(out, filepath.Join(dir, f)) {
			t.Errorf("output does not name %s:\n%s", f, out)
		}
	}
	token, _ := node.ReadSecretFile(filepath.Join(dir, "api.token"))
	key, _ := node.ReadSecretFile(filepath.Join(dir, "gossip.key"))
	if strings.Contains(out, token) || strings.Contains(out, key) {
		t.Errorf("keygen --dir printed a secret:\n%s", out)
	}
	for _, want := range []string{"read-only", "--tls-ca " + filepath.Join(dir, "ca.pem"), "SHOAL_CACERT="} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	if _, err := runCLIOutput("keygen", "--dir", dir); err == nil || !strings.Contains(err.Error(), "--force") || !strings.Contains(err.Error(), "gossip.key") {
		t.Errorf("second keygen --dir: %v", err)
	}
	if again, _ := node.ReadSecretFile(filepath.Join(dir, "api.token")); again != token {
		t.Error("a refused keygen replaced the token")
	}
	if _, err := runCLIOutput("keygen", "--dir", dir, "--force"); err != nil {
		t.Fatalf("keygen --force: %v", err)
	}
	if again, _ := node.ReadSecretFile(filepath.Join(dir, "api.token")); again == token {
		t.Error("keygen --force kept the token")
	}
}

func TestPlainKeygenPrintsExports(t *testing.T) {
	out, err := runCLIOutput("keygen")
	if err != nil {
		t.Fatal(err)
	}
	vals := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok || !strings.HasPrefix(line, "export ") {
			t.Fatalf("line %q is not an export", line)
		}
		vals[k] = v
	}
	if key, err := gossip.ParseKey(vals["SHOAL_GOSSIP_KEY"]); err != nil || len(key) != 32 {
		t.Errorf("gossip key %q: %v", vals["SHOAL_GOSSIP_KEY"], err)
	}
	if len(vals["SHOAL_API_TOKEN"]) != 32 || len(vals["SHOAL_API_READ_TOKEN"]) != 32 || vals["SHOAL_API_TOKEN"] == vals["SHOAL_API_READ_TOKEN"] {
		t.Errorf("tokens: %v", vals)
	}
}

func TestClientTokenComesFromFlagFileOrEnvironment(t *testing.T) {
	dir := t.TempDir()
	file := writeTemp(t, dir, "tok", "from-file\n")
	for _, tc := range []struct {
		name          string
		flags         clientFlags
		env, envFile  string
		want, wantErr string
	}{
		{name: "flag", flags: clientFlags{token: "from-flag"}, env: "from-env", want: "from-flag"},
		{name: "file flag", flags: clientFlags{tokenFile: file}, env: "from-env", want: "from-file"},
		{name: "env", env: "from-env", want: "from-env"},
		{name: "env file", envFile: file, want: "from-file"},
		{name: "nothing", want: ""},
		{name: "both flags", flags: clientFlags{token: "a", tokenFile: file}, wantErr: "not both"},
		{name: "both env", env: "a", envFile: file, wantErr: "both set"},
		{name: "missing file", flags: clientFlags{tokenFile: filepath.Join(dir, "nope")}, wantErr: "--token-file"},
	} {
		t.Setenv("SHOAL_TOKEN", tc.env)
		t.Setenv("SHOAL_TOKEN_FILE", tc.envFile)
		got, err := tc.flags.resolveToken()
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%s: got %q, %v; want an error containing %q", tc.name, got, err, tc.wantErr)
		case tc.wantErr == "" && (err != nil || got != tc.want):
			t.Errorf("%s: got %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

// TestCLITalksHTTPSWithTheClusterCA runs the CLI against an HTTPS server
// whose certificate comes from a cluster CA, as an agent's does.
func TestCLITalksHTTPSWithTheClusterCA(t *testing.T) {
	creds, err := node.GenerateCredentials(t.TempDir(), false, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	ca, err := node.LoadCA(creds.Path(node.CACertFile), creds.Path(node.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Issue([]string{"n1", "127.0.0.1", "localhost"}, time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+creds.APIToken {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":"invalid bearer token"}`))
			return
		}
		w.Write([]byte(`[{"name":"n1","status":"alive"}]`))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{*cert}}
	srv.StartTLS()
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "https://")
	tokenFile := creds.Path(node.APITokenFile)
	caFile := creds.Path(node.CACertFile)
	t.Setenv("SHOAL_TOKEN", "")
	t.Setenv("SHOAL_TOKEN_FILE", "")
	t.Setenv("SHOAL_CACERT", "")

	// A bare host:port with a CA is HTTPS; so is an https:// URL.
	for _, a := range []string{addr, "https://" + addr, "https://localhost:" + strings.Split(addr, ":")[1]} {
		if err := runCLI("nodes", "--addr", a, "--token-file", tokenFile, "--cacert", caFile); err != nil {
			t.Errorf("nodes --addr %s with the cluster CA: %v", a, err)
		}
	}
	t.Setenv("SHOAL_CACERT", caFile)
	t.Setenv("SHOAL_TOKEN_FILE", tokenFile)
	if err := runCLI("nodes", "--addr", addr); err != nil {
		t.Errorf("nodes with SHOAL_CACERT and SHOAL_TOKEN_FILE: %v", err)
	}

	other, err := node.GenerateCredentials(t.TempDir(), false, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = runCLI("nodes", "--addr", addr, "--cacert", other.Path(node.CACertFile))
	if !errors.Is(err, api.ErrUntrustedCert) {
		t.Errorf("another cluster's CA: got %v, want %v", err, api.ErrUntrustedCert)
	}
	msg := withAdvice(err).Error()
	if !strings.Contains(msg, "unknown authority") || !strings.Contains(msg, "--cacert") {
		t.Errorf("wrong CA message: %s", msg)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("a wrong CA took %s to fail", took)
	}
	t.Setenv("SHOAL_CACERT", "")
	err = runCLI("nodes", "--addr", "http://"+addr)
	if !errors.Is(err, api.ErrAgentWantsHTTPS) || !strings.Contains(withAdvice(err).Error(), "--cacert") {
		t.Errorf("plain HTTP to an HTTPS agent: %v", err)
	}
	if err := runCLI("nodes", "--addr", addr, "--cacert", tokenFile); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("a CA file that is not one: %v", err)
	}
}
