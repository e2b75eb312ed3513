package gossip

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/internal/freeport"
)

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// freePort returns a TCP port that was free a moment ago on ip.
func freePort(t *testing.T, ip string) int {
	t.Helper()
	return freeport.Get(t, ip)
}

func testConfig(t *testing.T, name string, key []byte) Config {
	t.Helper()
	cfg := DefaultConfig()
	cfg.NodeName = name
	cfg.BindAddr = "127.0.0.1"
	cfg.GossipPort = freePort(t, cfg.BindAddr)
	cfg.P2PPort = freePort(t, cfg.BindAddr)
	cfg.GossipKey = key
	cfg.DataDir = t.TempDir()
	cfg.ProbeInterval = 200 * time.Millisecond
	cfg.ProbeTimeout = 100 * time.Millisecond
	cfg.SuspicionMult = 2
	cfg.PushPullInterval = 2 * time.Second
	return cfg
}

func newKey(t *testing.T) []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func startCluster(t *testing.T, cfg Config) *Cluster {
	t.Helper()
	c, err := NewCluster(cfg, Meta{Health: HealthOK, Capacity: Capacity{CPUMillis: 1000, MemoryMB: 512}}, quietLogger())
	if err != nil {
		t.Fatalf("start %s: %v", cfg.NodeName, err)
	}
	t.Cleanup(func() { _ = c.Shutdown() })
	return c
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func countStatus(c *Cluster, status string) int {
	n := 0
	for _, m := range c.Members() {
		if m.Status == status {
			n++
		}
	}
	return n
}

func TestThreeMembersConvergeAndSeeAFailure(t *testing.T) {
	key := newKey(t)
	a := startCluster(t, testConfig(t, "a", key))
	b := startCluster(t, testConfig(t, "b", key))
	c := startCluster(t, testConfig(t, "c", key))
	seed := net.JoinHostPort("127.0.0.1", itoa(a.cfg.GossipPort))
	for _, n := range []*Cluster{b, c} {
		if _, err := n.Join(context.Background(), []string{seed}); err != nil {
			t.Fatalf("join: %v", err)
		}
	}
	for _, n := range []*Cluster{a, b, c} {
		waitFor(t, n.LocalName()+" sees 3 alive", func() bool { return countStatus(n, StatusAlive) == 3 })
	}
	// An ungraceful stop is a failure, not a leave.
	_ = c.Shutdown()
	waitFor(t, "a sees c failed", func() bool { return memberStatus(a, "c") == StatusFailed })
	// A graceful leave is reported as left.
	if err := b.Leave(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a sees b left", func() bool { return memberStatus(a, "b") == StatusLeft })
}

func memberStatus(c *Cluster, name string) string {
	for _, m := range c.Members() {
		if m.Name == name {
			return m.Status
		}
	}
	return ""
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestWrongGossipKeyCannotJoin(t *testing.T) {
	a := startCluster(t, testConfig(t, "a", newKey(t)))
	intruder := startCluster(t, testConfig(t, "intruder", newKey(t)))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := intruder.Join(ctx, []string{net.JoinHostPort("127.0.0.1", itoa(a.cfg.GossipPort))}); err == nil {
		t.Fatal("join with a different gossip key succeeded")
	}
	time.Sleep(500 * time.Millisecond)
	if n := len(a.Members()); n != 1 {
		t.Fatalf("a has %d members after a foreign join attempt, want 1", n)
	}
}

func TestMetadataTravelsInTags(t *testing.T) {
	key := newKey(t)
	a := startCluster(t, testConfig(t, "a", key))
	b := startCluster(t, testConfig(t, "b", key))
	if _, err := b.Join(context.Background(), []string{net.JoinHostPort("127.0.0.1", itoa(a.cfg.GossipPort))}); err != nil {
		t.Fatal(err)
	}
	if err := b.UpdateMeta(func(m *Meta) { m.Load.Replicas = 7; m.Load.CPUPercent = 42 }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a sees b's load", func() bool {
		for _, m := range a.Members() {
			if m.Name == "b" && m.Meta.Load.Replicas == 7 && m.Meta.Load.CPUPercent == 42 {
				return true
			}
		}
		return false
	})
}

func TestMetaRoundTrip(t *testing.T) {
	in := Meta{PeerID: "12D3KooWabc", P2PPort: 7947, Capacity: Capacity{2000, 4096},
		Load: Load{CPUPercent: 12, MemoryUsedMB: 100, Replicas: 3}, Health: HealthOK,
		Labels: map[string]string{"zone": "a", "disk": "ssd"}}
	out := ParseMeta(in.Tags())
	if out.PeerID != in.PeerID || out.P2PPort != in.P2PPort || out.Capacity != in.Capacity ||
		out.Load != in.Load || out.Health != in.Health || out.Labels["zone"] != "a" || out.Labels["disk"] != "ssd" {
		t.Fatalf("round trip changed meta: %+v -> %+v", in, out)
	}
}

func TestOversizedLabelsAreRefused(t *testing.T) {
	labels := map[string]string{}
	for i := 0; i < 40; i++ {
		labels["label-"+itoa(i)] = strings.Repeat("x", 20)
	}
	cfg := testConfig(t, "a", nil)
	_, err := NewCluster(cfg, Meta{Labels: labels}, quietLogger())
	if err == nil || !strings.Contains(err.Error(), "512") {
		t.Fatalf("want a metadata size error, got %v", err)
	}
}

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		in      string
		wantErr string
	}{
		{"c2hvYWwtc2hvYWwtc2hvYWw=", "16, 24 or 32"}, // 17 bytes
		{"not base64!", "base64"},
		{"MDEyMzQ1Njc4OWFiY2RlZg==", ""}, // 16 bytes
		{"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=", ""},
	} {
		_, err := ParseKey(tc.in)
		if tc.wantErr == "" && err != nil {
			t.Errorf("ParseKey(%q): %v", tc.in, err)
		}
		if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("ParseKey(%q) = %v, want error containing %q", tc.in, err, tc.wantErr)
		}
	}
}

func TestNormalizeAddr(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.1":        "10.0.0.1:7946",
		"10.0.0.1:9000":   "10.0.0.1:9000",
		"node-1.lan":      "node-1.lan:7946",
		"[2001:db8::1]:5": "[2001:db8::1]:5",
	} {
		got, err := NormalizeAddr(in, DefaultGossipPort)
		if err != nil || got != want {
			t.Errorf("NormalizeAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a b", "10.0.0.1:0", "10.0.0.1:99999", ":80", "x:y"} {
		if _, err := NormalizeAddr(bad, DefaultGossipPort); err == nil {
			t.Errorf("NormalizeAddr(%q) accepted a bad address", bad)
		}
	}
}

func TestParseLabels(t *testing.T) {
	got, err := ParseLabels("zone=a, disk=ssd")
	if err != nil || got["zone"] != "a" || got["disk"] != "ssd" {
		t.Fatalf("ParseLabels = %v, %v", got, err)
	}
	for _, bad := range []string{"zone", "=a", "a=1,a=2"} {
		if _, err := ParseLabels(bad); err == nil {
			t.Errorf("ParseLabels(%q) accepted bad input", bad)
		}
	}
}

func startHost(t *testing.T, cfg Config) *Host {
	t.Helper()
	h, err := NewHost(cfg, quietLogger())
	if err != nil {
		t.Fatalf("start host: %v", err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func memberOf(h *Host, cfg Config) Member {
	return Member{Name: cfg.NodeName, Addr: net.ParseIP(cfg.BindAddr), Meta: Meta{PeerID: h.ID(), P2PPort: cfg.P2PPort}}
}

func TestPrivateNetworkAdmitsOnlyKeyHolders(t *testing.T) {
	key := newKey(t)
	aCfg, bCfg, strangerCfg := testConfig(t, "a", key), testConfig(t, "b", key), testConfig(t, "s", newKey(t))
	a, b, stranger := startHost(t, aCfg), startHost(t, bCfg), startHost(t, strangerCfg)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.Ping(ctx, memberOf(a, aCfg)); err != nil {
		t.Fatalf("peer with the key cannot open a stream: %v", err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer scancel()
	if _, err := stranger.Ping(sctx, memberOf(a, aCfg)); err == nil {
		t.Fatal("peer without the key opened a stream")
	}
}

func TestIdentityIsStableAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	k1, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadIdentity(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !k1.Equals(k2) {
		t.Fatal("identity changed between loads")
	}
}

func TestDerivedPSKDependsOnGossipKey(t *testing.T) {
	p1, _ := DerivePSK([]byte("0123456789abcdef"))
	p2, _ := DerivePSK([]byte("0123456789abcdeg"))
	if len(p1) != 32 || bytes.Equal(p1, p2) {
		t.Fatal("derived network keys must be 32 bytes and differ per gossip key")
	}
	if p, _ := DerivePSK(nil); p != nil {
		t.Fatal("no gossip key must mean no private network")
	}
}
