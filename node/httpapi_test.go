package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoalmesh/shoal/api"
)

// startTestAgent runs an agent on loopback, changed by change, until the
// test ends.
func startTestAgent(t *testing.T, change func(*Config)) *Agent {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Gossip.NodeName = "a"
	cfg.Gossip.BindAddr = "127.0.0.1"
	cfg.Gossip.GossipPort = freePort(t)
	cfg.Gossip.P2PPort = freePort(t)
	cfg.Gossip.DataDir = t.TempDir()
	cfg.Gossip.GossipKey = []byte("0123456789abcdef")
	cfg.APIAddr = "127.0.0.1:0"
	cfg.APIToken = "full-token"
	cfg.OverlayEnabled = false
	cfg.LB = LBOff
	change(&cfg)
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

func TestReadOnlyTokenReadsButCannotWrite(t *testing.T) {
	a := startTestAgent(t, func(c *Config) { c.APIReadToken = "read-token" })
	ctx := context.Background()
	ro := api.NewClient(a.APIAddr(), "read-token", nil)
	if _, err := ro.Nodes(ctx); err != nil {
		t.Errorf("read-only token, GET /v1/nodes: %v", err)
	}
	if _, err := ro.Jobs(ctx); err != nil {
		t.Errorf("read-only token, GET /v1/jobs: %v", err)
	}
	if _, err := ro.Events(ctx, 0, ""); err != nil {
		t.Errorf("read-only token, GET /v1/events: %v", err)
	}
	if err := ro.Do(ctx, "GET", "/metrics", nil, nil); err != nil && !strings.Contains(err.Error(), "decode") {
		t.Errorf("read-only token, GET /metrics: %v", err)
	}
	// Logs are a read: a job that does not exist is a 404, not a 403.
	var se *api.StatusError
	if _, err := ro.Logs(ctx, "nope", 0, 10, false); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Errorf("read-only token, logs of a missing job: %v", err)
	}

	two := 2
	job := api.Job{ID: "web", Replicas: &two, Task: api.Task{Driver: "exec", Command: []string{"/bin/true"},
		Resources: api.Resources{CPUMillis: 10, MemoryMB: 16}}}
	job.ApplyDefaults()
	for _, write := range []struct {
		what string
		call func() error
	}{
		{"submit a job", func() error { _, err := ro.PutJob(ctx, job); return err }},
		{"delete a job", func() error { _, err := ro.DeleteJob(ctx, "web"); return err }},
		{"join", func() error { _, err := ro.Join(ctx, []string{"127.0.0.1:1"}); return err }},
		{"put a secret", func() error {
			_, err := ro.PutData(ctx, api.KindSecret, "db", api.Data{Data: map[string]string{"password": "x"}})
			return err
		}},
	} {
		err := write.call()
		if !errors.As(err, &se) || se.Code != http.StatusForbidden || !strings.Contains(se.Message, "read-only") {
			t.Errorf("read-only token may %s: %v", write.what, err)
		}
	}
	code, body := rawRequest(t, a, "POST", "/v1/jobs", "read-token", "{}")
	var e api.Error
	if code != http.StatusForbidden || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
		t.Errorf("403 answer: %d %q, want a JSON error", code, body)
	}
	// The full token still writes.
	if _, err := api.NewClient(a.APIAddr(), "full-token", nil).PutJob(ctx, job); err != nil {
		t.Errorf("API token, submit a job: %v", err)
	}
	if _, err := api.NewClient(a.APIAddr(), "other", nil).Nodes(ctx); !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
		t.Errorf("a wrong token: %v", err)
	}
}

func TestAPIServesHTTPSWithACertificateFromTheClusterCA(t *testing.T) {
	creds, err := GenerateCredentials(t.TempDir(), false, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a := startTestAgent(t, func(c *Config) {
		c.APIToken = creds.APIToken
		c.TLS.CAFile, c.TLS.CAKeyFile = creds.Path(CACertFile), creds.Path(CAKeyFile)
	})
	ctx := context.Background()
	pool, err := api.LoadCACert(creds.Path(CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	// A bare host:port with a CA means HTTPS.
	c := api.NewClientWithOptions(a.APIAddr(), api.ClientOptions{Token: creds.APIToken, RootCAs: pool})
	if nodes, err := c.Nodes(ctx); err != nil || len(nodes) != 1 {
		t.Fatalf("HTTPS with the cluster CA: %v", err)
	}
	_, port, _ := net.SplitHostPort(a.APIAddr())
	if _, err := api.NewClientWithOptions("https://localhost:"+port, api.ClientOptions{RootCAs: pool}).Health(ctx); err != nil {
		t.Errorf("https://localhost: %v", err)
	}
	if _, err := api.NewClient(a.APIAddr(), creds.APIToken, nil).Nodes(ctx); !errors.Is(err, api.ErrAgentWantsHTTPS) {
		t.Errorf("plain HTTP: got %v, want %v", err, api.ErrAgentWantsHTTPS)
	}
	other, err := GenerateCredentials(t.TempDir(), false, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	otherPool, _ := api.LoadCACert(other.Path(CACertFile))
	start := time.Now()
	_, err = api.NewClientWithOptions(a.APIAddr(), api.ClientOptions{RootCAs: otherPool}).Health(ctx)
	if !errors.Is(err, api.ErrUntrustedCert) || !strings.Contains(err.Error(), "unknown authority") {
		t.Errorf("another cluster's CA: got %v, want %v", err, api.ErrUntrustedCert)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("a wrong CA took %s to fail", time.Since(start))
	}
	if _, err := api.NewClient("https://"+a.APIAddr(), "", nil).Health(ctx); !errors.Is(err, api.ErrUntrustedCert) {
		t.Errorf("https:// without the CA: %v", err)
	}
}

func TestAgentWithAPlainNonLoopbackAPIIsRefused(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Gossip.NodeName = "a"
	cfg.Gossip.BindAddr = "127.0.0.1"
	cfg.Gossip.DataDir = t.TempDir()
	cfg.Gossip.GossipKey = []byte("0123456789abcdef")
	cfg.APIToken = "tok"
	cfg.APIAddr = "0.0.0.0:0"
	if _, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))); !errors.Is(err, ErrPlainAPI) {
		t.Fatalf("got %v, want %v", err, ErrPlainAPI)
	}
}

// TestMetricsDoNotGrowWithMadeUpPaths sends 1,500 requests to paths that
// do not exist, with odd methods and with no, a wrong, a read-only or the
// right token: the API's series must be the same set before and after.
func TestMetricsDoNotGrowWithMadeUpPaths(t *testing.T) {
	a := startTestAgent(t, func(c *Config) { c.APIReadToken = "read-token" })
	client := &http.Client{}
	send := func(method, path, token string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+a.APIAddr()+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	noise := func(i int) {
		path := fmt.Sprintf("/madeup-%d/x", i)
		if i%2 == 0 {
			path = fmt.Sprintf("/v1/madeup-%d", i)
		}
		methods := []string{"GET", "POST", "DELETE", fmt.Sprintf("M%d", i)}
		tokens := []string{"", "wrong", "read-token", "full-token"}
		send(methods[i%4], path, tokens[(i/4)%4])
	}
	apiSeries := func() []string {
		t.Helper()
		req, _ := http.NewRequest("GET", "http://"+a.APIAddr()+"/metrics", nil)
		req.Header.Set("Authorization", "Bearer full-token")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var lines []string
		for _, l := range strings.Split(string(raw), "\n") {
			if strings.HasPrefix(l, "shoal_api_") {
				// The series, without its value.
				lines = append(lines, l[:strings.LastIndexByte(l, ' ')])
			}
		}
		return lines
	}
	send("GET", "/v1/jobs/some-job", "full-token")
	send("GET", "/metrics", "full-token")
	for i := range 32 { // every combination of the cycle below once
		noise(i)
	}
	before := apiSeries()
	for i := 32; i < 1532; i++ {
		noise(i)
	}
	after := apiSeries()
	if len(after) != len(before) {
		t.Errorf("1,500 requests to made-up paths grew the API series from %d to %d lines", len(before), len(after))
	}
	text := strings.Join(after, "\n")
	if strings.Contains(text, "madeup") || strings.Contains(text, `method="M`) {
		t.Errorf("a client's path or method became a label:\n%s", text)
	}
	for _, want := range []string{`route="/v1/jobs/{id}"`, `route="unmatched"`, `route="/metrics"`, `method="other"`, `code="401"`, `code="403"`} {
		if !strings.Contains(text, want) {
			t.Errorf("no series with %s:\n%s", want, text)
		}
	}
}

// TestLongRunningRoutesOutliveTheServerDeadlines runs a handler that
// answers after the server's read and write timeouts have passed: wrapped
// in longRunning (and behind the metrics recorder, as the API wraps it)
// its answer arrives; unwrapped it is cut off.
func TestLongRunningRoutesOutliveTheServerDeadlines(t *testing.T) {
	slow := func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		select {
		case <-time.After(600 * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "late line")
	}
	m := &metrics{
		apiRequests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "requests"}, []string{"method", "route", "code"}),
		apiLatency:  prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "latency"}, []string{"route"}),
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /long", longRunning(slow))
	mux.HandleFunc("GET /short", slow)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: m.instrument(mux, mux), ReadTimeout: 200 * time.Millisecond, WriteTimeout: 200 * time.Millisecond}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	get := func(path string) (string, error) {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		return string(raw), err
	}
	if body, err := get("/long"); err != nil || body != "late line" {
		t.Errorf("long-running route: %q, %v", body, err)
	}
	if body, err := get("/short"); err == nil && body == "late line" {
		t.Error("the server's write timeout did not apply to an ordinary route: the test proves nothing")
	}
}
