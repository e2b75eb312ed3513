package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(args ...string) error {
	root := newRootCmd()
	root.SetArgs(args)
	root.SetOut(new(strings.Builder))
	root.SetErr(new(strings.Builder))
	return root.Execute()
}

func TestAgentRejectsBadInputWithClearErrors(t *testing.T) {
	dir := t.TempDir()
	badConfig := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badConfig, []byte("nmae: a\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keyFile := writeTemp(t, dir, "gossip.key", "MDEyMzQ1Njc4OWFiY2RlZg==\n")
	tokenFile := writeTemp(t, dir, "api.token", "tok\n")
	emptyFile := writeTemp(t, dir, "empty", "\n")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"agent", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"agent", "--gossip-key", "%%%", "--api-token", "t"}, "gossip key: not valid base64"},
		{[]string{"agent", "--gossip-key", "c2hvcnQ=", "--api-token", "t"}, "must decode to 16, 24 or 32 bytes"},
		{[]string{"agent", "--data-dir", dir}, "refusing to start without a gossip key and an API token"},
		{[]string{"agent", "--gossip-key-file", filepath.Join(dir, "missing"), "--api-token", "t"}, "--gossip-key-file: read secret file"},
		{[]string{"agent", "--gossip-key", "x", "--gossip-key-file", keyFile}, "give --gossip-key or --gossip-key-file, not both"},
		{[]string{"agent", "--gossip-key-file", keyFile, "--api-token-file", emptyFile}, "--api-token-file: read secret file " + emptyFile + ": it is empty"},
		{[]string{"agent", "--data-dir", dir, "--gossip-key-file", keyFile, "--api-token-file", tokenFile, "--api", "0.0.0.0:7700"}, "--api-insecure"},
		{[]string{"agent", "--data-dir", dir, "--gossip-key-file", keyFile, "--api-token-file", tokenFile, "--tls-ca", "ca.pem"}, "give both the CA certificate"},
		{[]string{"agent", "--data-dir", dir, "--gossip-key-file", keyFile, "--api-token-file", tokenFile, "--api-read-token-file", tokenFile}, "must differ from the API token"},
		{[]string{"agent", "--dev", "--data-dir", dir, "--bind", "not-an-ip"}, `bind address "not-an-ip"`},
		{[]string{"agent", "--dev", "--data-dir", dir, "--labels", "zone"}, "--labels"},
		{[]string{"agent", "--dev", "--data-dir", dir, "--join", "a b"}, "join"},
		{[]string{"agent", "--config", badConfig}, `unknown key "nmae"`},
		{[]string{"agent", "--dev", "--data-dir", dir, "--probe-interval", "100ms", "--probe-timeout", "1s"}, "probe timing"},
		{[]string{"nodes", "extra"}, "unknown command"},
	} {
		err := runCLI(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("shoal %s: got %v, want error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

func TestConfigFileFillsUnsetFlags(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(path, []byte("name: from-file\njoin: [10.0.0.1, 10.0.0.2]\nlabels: {zone: a}\nprobe_interval: 700ms\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := newAgentCmd()
	if err := cmd.ParseFlags([]string{"--config", path, "--name", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	if err := applyConfigFile(cmd.Flags(), path); err != nil {
		t.Fatal(err)
	}
	get := func(name string) string { return cmd.Flags().Lookup(name).Value.String() }
	if get("name") != "from-flag" {
		t.Errorf("flag must win over file: name=%s", get("name"))
	}
	if get("join") != "[10.0.0.1,10.0.0.2]" || get("labels") != "zone=a" || get("probe-interval") != "700ms" {
		t.Errorf("file values not applied: join=%s labels=%s probe=%s", get("join"), get("labels"), get("probe-interval"))
	}
}

func writeTemp(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
