package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// DefaultAddr is where the CLI looks for an agent when none is given.
const DefaultAddr = "127.0.0.1:7700"

// Client talks to one agent's HTTP API.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// StatusError is a non-2xx answer from the API.
type StatusError struct {
	Code    int
	Message string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Code)
}

// ClientOptions are a Client's settings beyond the agent's address.
type ClientOptions struct {
	// Token is sent as the bearer token of every request.
	Token string
	// RootCAs verifies the agent's certificate (the cluster's ca.pem, see
	// LoadCACert). With it, an address without a scheme means HTTPS.
	RootCAs *x509.CertPool
	// Dial, if set, makes the connections: a way to reach agents in other
	// network namespaces.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// NewClient returns a client for addr ("host:port" or a URL) speaking
// plain HTTP unless addr says https://. A custom dialer may be given to
// reach agents in other network namespaces.
func NewClient(addr, token string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *Client {
	return NewClientWithOptions(addr, ClientOptions{Token: token, Dial: dial})
}

// NewClientWithOptions returns a client for addr: "host:port" (HTTPS when
// o.RootCAs is set, plain HTTP otherwise), or an http:// or https:// URL.
func NewClientWithOptions(addr string, o ClientOptions) *Client {
	base := addr
	if !strings.Contains(base, "://") {
		scheme := "http://"
		if o.RootCAs != nil {
			scheme = "https://"
		}
		base = scheme + base
	}
	tr := &http.Transport{
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
		// A peer that accepts the connection but never finishes the
		// handshake fails the call instead of hanging it.
		TLSHandshakeTimeout: 10 * time.Second,
		TLSClientConfig:     &tls.Config{RootCAs: o.RootCAs, MinVersion: tls.VersionTLS12},
	}
	if o.Dial != nil {
		tr.DialContext = o.Dial
	}
	return &Client{
		base:  strings.TrimRight(base, "/"),
		token: o.Token,
		http:  &http.Client{Transport: tr, Timeout: 30 * time.Second},
	}
}

// LoadCACert reads a PEM file of CA certificates (the cluster's ca.pem)
// for ClientOptions.RootCAs.
func LoadCACert(path string) (*x509.CertPool, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(raw) {
		return nil, fmt.Errorf("read CA certificate %s: no PEM certificate in it", path)
	}
	return pool, nil
}

// Errors of the connection itself, for callers to add advice.
var (
	// ErrUntrustedCert: the agent's certificate is not signed by a CA the
	// client trusts (no CA given, or another cluster's).
	ErrUntrustedCert = errors.New("the agent's certificate is not signed by the CA this client trusts")
	// ErrAgentWantsHTTPS: a plain HTTP request reached an HTTPS agent.
	ErrAgentWantsHTTPS = errors.New("the agent serves HTTPS only and refused a plain HTTP request")
	// ErrAgentSpeaksHTTP: an HTTPS request reached a plain HTTP agent.
	ErrAgentSpeaksHTTP = errors.New("the agent serves plain HTTP, not HTTPS")
)

// transportError makes what went wrong below HTTP recognisable: the bare
// errors of crypto/tls and net/http do not say what to do about them.
func transportError(err error) error {
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	switch {
	case errors.As(err, &unknown):
		return fmt.Errorf("%w (x509: certificate signed by unknown authority): give the cluster's ca.pem", ErrUntrustedCert)
	case errors.As(err, &host):
		return fmt.Errorf("the agent's certificate does not name the address dialled (%v): use its node name or an address it listens on", err)
	case errors.As(err, &invalid):
		return fmt.Errorf("the agent's certificate is not valid (%v): check the clocks and the cluster CA's validity", err)
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("%w: use an http:// address", ErrAgentSpeaksHTTP)
	}
	return err
}

// Do sends a request with an optional JSON body and decodes a JSON answer
// into out (when out is non-nil).
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("build request %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	return c.send(req, out)
}

// send adds the token, sends req and decodes a JSON answer into out.
func (c *Client) send(req *http.Request, out any) error {
	method, path := req.Method, req.URL.Path
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, transportError(err))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		return answerError(resp.StatusCode, raw)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// answerError turns a non-2xx answer into a *StatusError, or into
// ErrAgentWantsHTTPS for net/http's answer to plain HTTP on a TLS port.
func answerError(code int, raw []byte) error {
	var e Error
	if json.Unmarshal(raw, &e) != nil || e.Error == "" {
		e.Error = strings.TrimSpace(string(raw))
		if code == http.StatusBadRequest && strings.Contains(e.Error, "HTTP request to an HTTPS server") {
			return fmt.Errorf("%w: use an https:// address or give the cluster's ca.pem", ErrAgentWantsHTTPS)
		}
	}
	return &StatusError{Code: code, Message: e.Error}
}

// Nodes lists the cluster members the agent knows.
func (c *Client) Nodes(ctx context.Context) ([]Node, error) {
	var nodes []Node
	err := c.Do(ctx, http.MethodGet, "/v1/nodes", nil, &nodes)
	return nodes, err
}

// Join asks the agent to join the given gossip addresses.
func (c *Client) Join(ctx context.Context, addrs []string) (JoinResponse, error) {
	var r JoinResponse
	err := c.Do(ctx, http.MethodPost, "/v1/join", JoinRequest{Addrs: addrs}, &r)
	return r, err
}

// Health calls GET /healthz.
func (c *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := c.Do(ctx, http.MethodGet, "/healthz", nil, &h)
	return h, err
}

// PutJobSpec submits a raw job spec (JSON, or YAML with contentType
// application/yaml) as POST /v1/jobs and returns the stored job.
func (c *Client) PutJobSpec(ctx context.Context, spec []byte, contentType string) (JobStatus, error) {
	var st JobStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/jobs", bytes.NewReader(spec))
	if err != nil {
		return st, fmt.Errorf("build request: %w", err)
	}
	if contentType == "" {
		contentType = "application/json"
	}
	req.Header.Set("Content-Type", contentType)
	err = c.send(req, &st)
	return st, err
}

// PutJob submits a job.
func (c *Client) PutJob(ctx context.Context, j Job) (JobStatus, error) {
	var st JobStatus
	err := c.Do(ctx, http.MethodPost, "/v1/jobs", j, &st)
	return st, err
}

// Jobs lists every job.
func (c *Client) Jobs(ctx context.Context) ([]JobStatus, error) {
	var out []JobStatus
	err := c.Do(ctx, http.MethodGet, "/v1/jobs", nil, &out)
	return out, err
}

// Job returns one job.
func (c *Client) Job(ctx context.Context, id string) (JobStatus, error) {
	var st JobStatus
	err := c.Do(ctx, http.MethodGet, "/v1/jobs/"+url.PathEscape(id), nil, &st)
	return st, err
}

// DeleteJob deletes a job.
func (c *Client) DeleteJob(ctx context.Context, id string) (DeleteResponse, error) {
	var r DeleteResponse
	err := c.Do(ctx, http.MethodDelete, "/v1/jobs/"+url.PathEscape(id), nil, &r)
	return r, err
}

// Logs streams a replica's log from whichever node runs it. With follow,
// the stream stays open until ctx ends; the caller closes the reader.
func (c *Client) Logs(ctx context.Context, id string, replica, tail int, follow bool) (io.ReadCloser, error) {
	q := url.Values{}
	q.Set("replica", strconv.Itoa(replica))
	q.Set("tail", strconv.Itoa(tail))
	q.Set("follow", strconv.FormatBool(follow))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/jobs/"+url.PathEscape(id)+"/logs?"+q.Encode(), nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	// No overall timeout: a followed log lasts as long as ctx.
	streaming := &http.Client{Transport: c.http.Transport}
	resp, err := streaming.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET logs of %s: %w", id, transportError(err))
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return nil, answerError(resp.StatusCode, raw)
	}
	return resp.Body, nil
}

// LoadImage uploads an OCI image archive to the agent, which imports it
// into its containerd namespace. Uploads are bounded by ctx only: a large
// image may take longer than the client's usual timeout.
func (c *Client) LoadImage(ctx context.Context, archive io.Reader) ([]Image, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/images", archive)
	if err != nil {
		return nil, fmt.Errorf("build request POST /v1/images: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-tar")
	upload := *c.http
	upload.Timeout = 0
	var out []Image
	err = (&Client{base: c.base, token: c.token, http: &upload}).send(req, &out)
	return out, err
}

// Images lists the images in the agent's containerd namespace.
func (c *Client) Images(ctx context.Context) ([]Image, error) {
	var out []Image
	err := c.Do(ctx, http.MethodGet, "/v1/images", nil, &out)
	return out, err
}

// Events returns the called node's events after seq (0 for all it keeps),
// optionally of one job.
func (c *Client) Events(ctx context.Context, since uint64, job string) ([]Event, error) {
	q := url.Values{}
	q.Set("since", strconv.FormatUint(since, 10))
	if job != "" {
		q.Set("job", job)
	}
	var out []Event
	err := c.Do(ctx, http.MethodGet, "/v1/events?"+q.Encode(), nil, &out)
	return out, err
}

// Services lists every service as the called node programs it.
func (c *Client) Services(ctx context.Context) ([]ServiceStatus, error) {
	var out []ServiceStatus
	err := c.Do(ctx, http.MethodGet, "/v1/services", nil, &out)
	return out, err
}
