package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
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

// NewClient returns a client for addr ("host:port" or a URL). A custom
// dialer may be given to reach agents in other network namespaces.
func NewClient(addr, token string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) *Client {
	base := addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second}
	if dial != nil {
		tr.DialContext = dial
	}
	return &Client{
		base:  strings.TrimRight(base, "/"),
		token: token,
		http:  &http.Client{Transport: tr, Timeout: 30 * time.Second},
	}
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
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e Error
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(raw))
		}
		return &StatusError{Code: resp.StatusCode, Message: e.Error}
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
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
		return nil, fmt.Errorf("GET logs of %s: %w", id, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e Error
		if json.Unmarshal(raw, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(raw))
		}
		return nil, &StatusError{Code: resp.StatusCode, Message: e.Error}
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
