package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/node"
)

// TestSecretsAreAbsentFromCommandLinesAndHelp checks what every local
// user can read: no agent's /proc/PID/cmdline (nor its environment) holds
// a secret, and `shoal agent --help` does not print the ones it finds in
// its environment.
func TestSecretsAreAbsentFromCommandLinesAndHelp(t *testing.T) {
	c := NewCluster(t)
	c.AddNode()
	c.AddNode()
	waitStatuses(t, c.Nodes, map[string]string{"n1": "alive", "n2": "alive"}, 30*time.Second)

	caKey, err := os.ReadFile(c.Creds.Path(node.CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{
		"gossip key": c.Key, "API token": c.Token, "read-only token": c.ReadToken,
		// The base64 body of the CA key, between its PEM armour lines.
		"CA key": strings.Split(strings.TrimSpace(string(caKey)), "\n")[1],
	}
	for _, n := range c.Nodes {
		for _, file := range []string{"cmdline", "environ"} {
			raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", n.PID(), file))
			if err != nil {
				t.Fatalf("%s: %v", n.Name, err)
			}
			text := strings.ReplaceAll(string(raw), "\x00", " ")
			if file == "cmdline" && !strings.Contains(text, "--gossip-key-file "+c.Creds.Path(node.GossipKeyFile)) {
				t.Fatalf("%s: /proc/%d/cmdline is not the agent's: %s", n.Name, n.PID(), text)
			}
			for what, v := range secrets {
				if strings.Contains(text, v) {
					t.Errorf("%s: the %s is in /proc/%d/%s", n.Name, what, n.PID(), file)
				}
			}
		}
	}

	for _, args := range [][]string{{"agent", "--help"}, {"--help"}} {
		cmd := exec.Command(c.Binary, args...)
		cmd.Env = append(cliEnv(), "SHOAL_GOSSIP_KEY="+c.Key, "SHOAL_API_TOKEN="+c.Token,
			"SHOAL_API_READ_TOKEN="+c.ReadToken, "SHOAL_TOKEN="+c.Token)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("shoal %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		for what, v := range secrets {
			if strings.Contains(string(out), v) {
				t.Errorf("shoal %s prints the %s from the environment", strings.Join(args, " "), what)
			}
		}
	}
}

// TestAPIAnswersHTTPSVerifiedWithTheClusterCA reaches an agent's API from
// another machine (the hub namespace): HTTPS verified with ca.pem works,
// for the node's address and name; plain HTTP and another CA are refused
// with clear errors; and an agent without the CA will not serve plain
// HTTP beyond loopback.
func TestAPIAnswersHTTPSVerifiedWithTheClusterCA(t *testing.T) {
	c := NewCluster(t)
	n := c.AddNode(WithArgs("--api", "0.0.0.0:7700"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	addr := net.JoinHostPort(n.IP, "7700")
	fromHub := DialInNamespace(c.hub)

	nodes, err := api.NewClientWithOptions(addr, api.ClientOptions{Token: c.Token, RootCAs: c.caPool, Dial: fromHub}).Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].Name != n.Name {
		t.Fatalf("HTTPS from the hub with ca.pem: %+v, %v", nodes, err)
	}

	raw, err := fromHub(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn := tls.Client(raw, &tls.Config{RootCAs: c.caPool, ServerName: n.IP})
	if err := conn.HandshakeContext(ctx); err != nil {
		t.Fatalf("TLS handshake verified with ca.pem for %s: %v", n.IP, err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	var ips []string
	for _, ip := range leaf.IPAddresses {
		ips = append(ips, ip.String())
	}
	if !slices.Contains(leaf.DNSNames, n.Name) || !slices.Contains(leaf.DNSNames, "localhost") ||
		!slices.Contains(ips, n.IP) || !slices.Contains(ips, "127.0.0.1") {
		t.Errorf("certificate names %v %v: want the node name, its address, localhost and 127.0.0.1", leaf.DNSNames, ips)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 32*24*time.Hour {
		t.Errorf("serving certificate lives %s; want a short life that renews itself", life)
	}

	// Plain HTTP gets no API answer.
	plain := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: fromHub}}
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/v1/nodes", nil)
	req.Header.Set("Authorization", "Bearer "+c.Token)
	resp, err := plain.Do(req)
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(body), n.Name) {
			t.Errorf("plain HTTP answered %d: %s", resp.StatusCode, body)
		}
	}
	if _, err := api.NewClientWithOptions("http://"+addr, api.ClientOptions{Token: c.Token, Dial: fromHub}).Nodes(ctx); !errors.Is(err, api.ErrAgentWantsHTTPS) {
		t.Errorf("the client over plain HTTP: got %v, want %v", err, api.ErrAgentWantsHTTPS)
	}

	// The CLI: the cluster CA works, another cluster's fails fast and says why.
	if out, err := n.Shoal("nodes"); err != nil || !strings.Contains(out, n.Name) {
		t.Errorf("shoal nodes with SHOAL_CACERT: %v\n%s", err, out)
	}
	other, err := node.GenerateCredentials(filepath.Join(t.TempDir(), "other"), false, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	out, err := n.Exec(c.Binary, "nodes", "--addr", "127.0.0.1:7700", "--token", c.Token, "--cacert", other.Path(node.CACertFile))
	if err == nil || !strings.Contains(out, "unknown authority") || !strings.Contains(out, "--cacert") {
		t.Errorf("shoal nodes with another cluster's CA: %v\n%s", err, out)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("a wrong CA took %s to fail", took)
	}
	out, err = n.Exec(c.Binary, "nodes", "--addr", "http://127.0.0.1:7700", "--token", c.Token)
	if err == nil || !strings.Contains(out, "HTTPS") {
		t.Errorf("shoal nodes over plain HTTP: %v\n%s", err, out)
	}

	// Without the CA, an API beyond loopback is refused at start.
	out, err = n.Exec(c.Binary, "agent", "--name", "plain", "--bind", n.IP, "--data-dir", filepath.Join(t.TempDir(), "plain"),
		"--gossip-key-file", c.Creds.Path(node.GossipKeyFile), "--api-token-file", c.Creds.Path(node.APITokenFile),
		"--api", net.JoinHostPort(n.IP, "7701"), "--gossip-port", "7956", "--p2p-port", "7957")
	if err == nil || !strings.Contains(out, "--api-insecure") {
		t.Errorf("an agent serving plain HTTP on %s:7701: %v\n%s", n.IP, err, out)
	}
}

// TestReadOnlyTokenCanReadButNotWrite uses api-read.token against an
// agent: lists, events, logs and metrics answer; every write is a 403
// with a JSON error, through the API and the CLI.
func TestReadOnlyTokenCanReadButNotWrite(t *testing.T) {
	c := NewCluster(t)
	n := c.AddNode()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ro := n.ClientWithToken(c.ReadToken)

	if _, err := ro.Nodes(ctx); err != nil {
		t.Errorf("nodes: %v", err)
	}
	if _, err := ro.Jobs(ctx); err != nil {
		t.Errorf("jobs: %v", err)
	}
	if _, err := ro.Events(ctx, 0, ""); err != nil {
		t.Errorf("events: %v", err)
	}
	if _, err := ro.Services(ctx); err != nil {
		t.Errorf("services: %v", err)
	}
	var se *api.StatusError
	if _, err := ro.Logs(ctx, "nope", 0, 10, false); !errors.As(err, &se) || se.Code != http.StatusNotFound {
		t.Errorf("logs of a missing job: want 404 (a read), got %v", err)
	}

	one := 1
	job := api.Job{ID: "ro", Replicas: &one, Task: api.Task{Driver: "exec", Command: []string{"/bin/sleep", "1000"},
		Resources: api.Resources{CPUMillis: 10, MemoryMB: 16}}}
	job.ApplyDefaults()
	for what, write := range map[string]func() error{
		"submit a job": func() error { _, err := ro.PutJob(ctx, job); return err },
		"delete a job": func() error { _, err := ro.DeleteJob(ctx, "ro"); return err },
		"store a secret": func() error {
			_, err := ro.PutData(ctx, api.KindSecret, "s", api.Data{Data: map[string]string{"k": "v"}})
			return err
		},
		"join": func() error { _, err := ro.Join(ctx, []string{"10.99.0.200"}); return err },
	} {
		if err := write(); !errors.As(err, &se) || se.Code != http.StatusForbidden || !strings.Contains(se.Message, "read-only") {
			t.Errorf("the read-only token may %s: %v", what, err)
		}
	}
	// The 403 is a JSON error.
	var e api.Error
	err := ro.Do(ctx, "POST", "/v1/jobs", job, nil)
	if !errors.As(err, &se) || se.Code != http.StatusForbidden {
		t.Fatalf("POST /v1/jobs: %v", err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: DialInNamespace(n.NS), TLSClientConfig: &tls.Config{RootCAs: c.caPool},
	}}
	req, _ := http.NewRequestWithContext(ctx, "DELETE", "https://127.0.0.1:7700/v1/jobs/ro", nil)
	req.Header.Set("Authorization", "Bearer "+c.ReadToken)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") ||
		json.Unmarshal(body, &e) != nil || e.Error == "" {
		t.Errorf("DELETE with the read-only token: %d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}

	// The CLI with SHOAL_TOKEN_FILE naming api-read.token.
	cli := func(args ...string) (string, error) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", n.NS, c.Binary}, args...)...)
		cmd.Env = cliEnv("SHOAL_ADDR=127.0.0.1:7700", "SHOAL_TOKEN_FILE="+c.Creds.Path(node.APIReadTokenFile), "SHOAL_CACERT="+c.CAFile)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := cli("ps"); err != nil {
		t.Errorf("shoal ps with the read-only token: %v\n%s", err, out)
	}
	if out, err := cli("run", "ro", "--driver", "exec", "--command", "/bin/sleep,1000"); err == nil || !strings.Contains(out, "read-only") || !strings.Contains(out, "403") {
		t.Errorf("shoal run with the read-only token: %v\n%s", err, out)
	}

	// The API token writes.
	if _, err := n.Client().PutData(ctx, api.KindConfig, "c1", api.Data{Data: map[string]string{"k": "v"}}); err != nil {
		t.Errorf("the API token stores a config: %v", err)
	}
}
