package node

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/internal/freeport"
)

func freePort(t *testing.T) int {
	t.Helper()
	return freeport.Get(t, "127.0.0.1")
}

// startAgent runs an agent on loopback until the test ends.
func startAgent(t *testing.T, name, token string) *Agent {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Gossip.NodeName = name
	cfg.Gossip.BindAddr = "127.0.0.1"
	cfg.Gossip.GossipPort = freePort(t)
	cfg.Gossip.P2PPort = freePort(t)
	cfg.Gossip.DataDir = t.TempDir()
	cfg.Gossip.GossipKey = []byte("0123456789abcdef")
	cfg.APIAddr = "127.0.0.1:0"
	cfg.APIToken = token
	// Loopback agents share the test's network namespace: the overlay,
	// which builds devices in it, is tested in e2e namespaces instead.
	cfg.OverlayEnabled = false
	cfg.LB = LBOff
	a, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("start agent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent run: %v", err)
		}
	})
	return a
}

func TestAgentRefusesToStartWithoutSecretsOutsideDevMode(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Gossip.NodeName = "a"
	cfg.Gossip.BindAddr = "127.0.0.1"
	cfg.Gossip.DataDir = t.TempDir()
	if _, err := New(cfg, slog.Default()); !errors.Is(err, ErrInsecure) {
		t.Fatalf("want ErrInsecure, got %v", err)
	}
}

func TestAPIRequiresTokenExceptHealthz(t *testing.T) {
	a := startAgent(t, "a", "s3cret")
	ctx := context.Background()
	anon := api.NewClient(a.APIAddr(), "", nil)
	if _, err := anon.Health(ctx); err != nil {
		t.Fatalf("healthz without token: %v", err)
	}
	for _, c := range []*api.Client{anon, api.NewClient(a.APIAddr(), "wrong", nil)} {
		_, err := c.Nodes(ctx)
		var se *api.StatusError
		if !errors.As(err, &se) || se.Code != http.StatusUnauthorized || se.Message == "" {
			t.Fatalf("want 401 with a JSON error, got %v", err)
		}
	}
	var se *api.StatusError
	if err := anon.Do(ctx, "GET", "/metrics", nil, nil); !errors.As(err, &se) || se.Code != 401 {
		t.Fatalf("metrics without token: want 401, got %v", err)
	}
	nodes, err := api.NewClient(a.APIAddr(), "s3cret", nil).Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].Name != "a" || nodes[0].Status != "alive" {
		t.Fatalf("nodes = %+v, %v", nodes, err)
	}
	if nodes[0].Capacity.CPUMillis <= 0 || nodes[0].Capacity.MemoryMB <= 0 || nodes[0].PeerID == "" {
		t.Fatalf("node lacks capacity or peer id: %+v", nodes[0])
	}
}

func rawRequest(t *testing.T, a *Agent, method, path, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+a.APIAddr()+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode >= 400 && !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s %s: error with content type %q", method, path, ct)
	}
	return resp.StatusCode, string(raw)
}

func TestBadInputGetsJSONErrors(t *testing.T) {
	a := startAgent(t, "a", "tok")
	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", "/v1/join", `{"addrs":[]}`, 400, "addrs: must list at least one address"},
		{"POST", "/v1/join", `{"addrs":["a b"]}`, 400, `addrs[0]`},
		{"POST", "/v1/join", `{"adrs":["x"]}`, 400, `unknown field`},
		{"POST", "/v1/join", `{"addrs":`, 400, "request body"},
		{"POST", "/v1/join", ``, 400, "empty"},
		{"POST", "/v1/join", `{"addrs":["x"]} {}`, 400, "trailing"},
		{"POST", "/v1/join", `{"addrs":["` + strings.Repeat("a", 70000) + `"]}`, 413, "exceeds"},
		{"POST", "/v1/join", `{"addrs":["127.0.0.1:1"]}`, 502, "127.0.0.1:1"},
		{"DELETE", "/v1/nodes", ``, 405, "not allowed"},
		{"GET", "/v1/nope", ``, 404, "no such endpoint"},
	} {
		code, body := rawRequest(t, a, tc.method, tc.path, "tok", tc.body)
		if code != tc.code || !strings.Contains(body, `"error"`) || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s %.40q: got %d %s; want %d containing %q", tc.method, tc.path, tc.body, code, body, tc.code, tc.want)
		}
	}
}

func TestJoinOverAPIAndMetrics(t *testing.T) {
	a := startAgent(t, "a", "tok")
	b := startAgent(t, "b", "tok")
	ctx := context.Background()
	cb := api.NewClient(b.APIAddr(), "tok", nil)
	seed := "127.0.0.1:" + strconv.Itoa(a.cfg.Gossip.GossipPort)
	if r, err := cb.Join(ctx, []string{seed}); err != nil || r.Joined != 1 {
		t.Fatalf("join: %+v %v", r, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		nodes, err := api.NewClient(a.APIAddr(), "tok", nil).Nodes(ctx)
		if err == nil && len(nodes) == 2 && nodes[0].Status == "alive" && nodes[1].Status == "alive" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a never saw b: %+v %v", nodes, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	code, body := rawRequest(t, a, "GET", "/metrics", "tok", "")
	for _, want := range []string{`shoal_members{status="alive"} 2`, `shoal_api_requests_total{code="200",method="GET",route="/v1/nodes"}`, "shoal_gossip_events_total", "shoal_memberlist_msg_alive"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
}

func TestJobAPIAcceptsYAMLAndRejectsBadSpecs(t *testing.T) {
	a := startAgent(t, "a", "tok")
	yamlSpec := "id: web\nreplicas: 2\ntask:\n  driver: containerd\n  image: docker.io/library/hello:v1\n  resources: {cpu_millis: 100, memory_mb: 64}\n  ports: [{name: http, port: 8080}]\n"
	req, _ := http.NewRequest("POST", "http://"+a.APIAddr()+"/v1/jobs", strings.NewReader(yamlSpec))
	req.Header.Set("Authorization", "Bearer tok")
	req.Header.Set("Content-Type", "application/yaml")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || !strings.Contains(string(body), `"version"`) {
		t.Fatalf("YAML create: %d %s", resp.StatusCode, body)
	}
	for _, tc := range []struct {
		method, path, body string
		code               int
		want               string
	}{
		{"POST", "/v1/jobs", `{"id":"web","replicas":2,"task":{"driver":"containerd","image":"x","resources":{"cpu_millis":1,"memory_mb":1}},"bogus":1}`, 400, "bogus"},
		{"POST", "/v1/jobs", `{"id":"Web_1","task":{"driver":"containerd","image":"x","resources":{"cpu_millis":1,"memory_mb":1}}}`, 400, "id"},
		{"POST", "/v1/jobs", `{"id":"web","replicas":20000,"task":{"driver":"containerd","image":"x","resources":{"cpu_millis":1,"memory_mb":1}}}`, 400, "replicas"},
		{"POST", "/v1/jobs", `{"id":"web","task":{"driver":"docker","image":"x","resources":{"cpu_millis":1,"memory_mb":1}}}`, 400, "task.driver"},
		{"POST", "/v1/jobs", `{"id":"big","pad":"` + strings.Repeat("x", 2<<20) + `"}`, 413, "exceeds"},
		{"GET", "/v1/jobs/nope", ``, 404, "not found"},
		{"DELETE", "/v1/jobs/nope", ``, 404, "not found"},
		{"GET", "/v1/jobs/Bad_ID", ``, 400, "job id"},
		{"PUT", "/v1/jobs/web", ``, 405, "not allowed"},
	} {
		code, body := rawRequest(t, a, tc.method, tc.path, "tok", tc.body)
		if code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s %s: got %d %.200s; want %d containing %q", tc.method, tc.path, code, body, tc.code, tc.want)
		}
	}
	// The rejected writes left the stored job alone.
	st, err := api.NewClient(a.APIAddr(), "tok", nil).Job(context.Background(), "web")
	if err != nil || st.Replicas == nil || *st.Replicas != 2 {
		t.Fatalf("stored job changed: %+v %v", st, err)
	}
}

func TestRecordsOfGoneNodesAreForgotten(t *testing.T) {
	a := startAgent(t, "a", "tok")
	b := startAgent(t, "b", "tok")
	ctx := context.Background()
	seed := "127.0.0.1:" + strconv.Itoa(a.cfg.Gossip.GossipPort)
	if _, err := api.NewClient(b.APIAddr(), "tok", nil).Join(ctx, []string{seed}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); len(a.cluster.Members()) < 2; {
		if time.Now().After(deadline) {
			t.Fatal("a never saw b")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The forgetting is done by one node per gone node: find it.
	if ownerOf("gone/ghost", aliveNames(a.cluster.Members())) != "a" {
		a = b
	}
	ghost, _ := json.Marshal(Endpoint{Job: "web", Replica: 0, Node: "ghost", State: StateRunning})
	mine, _ := json.Marshal(Endpoint{Job: "web", Replica: 1, Node: a.cfg.Gossip.NodeName, State: StateRunning})
	if _, err := a.store.Write(kindEndpoint, endpointID("web", 0, "ghost"), ghost, false); err != nil {
		t.Fatal(err)
	}
	if _, err := a.store.Write(kindEndpoint, endpointID("web", 1, a.cfg.Gossip.NodeName), mine, false); err != nil {
		t.Fatal(err)
	}
	a.forgetGoneNodes()
	if _, ok := a.store.Get(kindEndpoint, endpointID("web", 0, "ghost")); ok {
		t.Error("the endpoint of a node that is not a member is still stored")
	}
	if _, ok := a.store.Get(kindEndpoint, endpointID("web", 1, a.cfg.Gossip.NodeName)); !ok {
		t.Error("the node's own endpoint was deleted")
	}
}
