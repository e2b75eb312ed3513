package node

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
)

// Request body limits.
const (
	maxSmallBody = 64 << 10
)

// Limits of the API's HTTP server. Reads and writes are bounded so a slow
// or stalled client cannot hold a connection and a goroutine forever; the
// routes that stream (a followed log) or upload (an image) lift them for
// their own request once the caller is authenticated (longRunning).
const (
	apiReadHeaderTimeout = 10 * time.Second
	apiReadTimeout       = 30 * time.Second
	apiWriteTimeout      = 2 * time.Minute
	apiIdleTimeout       = 2 * time.Minute
	apiMaxHeaderBytes    = 64 << 10
)

// newAPIServer listens on the API address and builds the server: HTTPS
// with a certificate issued from the cluster CA when one is configured,
// plain HTTP otherwise (Validate allows that on loopback, in dev mode or
// with APIInsecure only).
func (a *Agent) newAPIServer() (net.Listener, *http.Server, error) {
	srv := &http.Server{
		Handler:           a.routes(),
		ReadHeaderTimeout: apiReadHeaderTimeout,
		ReadTimeout:       apiReadTimeout,
		WriteTimeout:      apiWriteTimeout,
		IdleTimeout:       apiIdleTimeout,
		MaxHeaderBytes:    apiMaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	if a.cfg.TLS.Enabled() {
		ca, err := LoadCA(a.cfg.TLS.CAFile, a.cfg.TLS.CAKeyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("api tls: %w", err)
		}
		names := servingNames(a.cfg.Gossip.NodeName, a.cfg.Gossip.BindAddr, a.cfg.APIAddr, a.cfg.TLS.ExtraNames)
		certs, err := newCertSource(ca, names, a.cfg.TLS.CertLifetime, time.Now, a.log.With("component", "api-tls"))
		if err != nil {
			return nil, nil, fmt.Errorf("api tls: issue the serving certificate: %w", err)
		}
		srv.TLSConfig = certs.tlsConfig()
		a.log.Info("api serves https", "names", names, "expires", certs.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	} else if host, _, _ := net.SplitHostPort(a.cfg.APIAddr); !isLoopback(host) {
		a.log.Warn("api serves plain HTTP beyond loopback: tokens cross the network in clear", "api", a.cfg.APIAddr)
	}
	ln, err := net.Listen("tcp", a.cfg.APIAddr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen for API on %s: %w", a.cfg.APIAddr, err)
	}
	return ln, srv, nil
}

// serveAPI serves on the API listener until the server is shut down.
func (a *Agent) serveAPI() error {
	if a.server.TLSConfig != nil {
		return a.server.ServeTLS(a.ln, "", "")
	}
	return a.server.Serve(a.ln)
}

// router registers method-specific handlers and answers other methods on a
// known path with a JSON 405, and unknown paths with a JSON 404.
type router struct {
	mux     *http.ServeMux
	allowed map[string][]string
}

func newRouter() *router {
	r := &router{mux: http.NewServeMux(), allowed: map[string][]string{}}
	r.mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: %s %s", req.Method, req.URL.Path)
	})
	return r
}

func (r *router) handle(method, path string, h http.HandlerFunc) {
	r.mux.HandleFunc(method+" "+path, h)
	if _, seen := r.allowed[path]; !seen {
		r.mux.HandleFunc(path, func(w http.ResponseWriter, req *http.Request) {
			w.Header().Set("Allow", strings.Join(r.allowed[path], ", "))
			writeError(w, http.StatusMethodNotAllowed, "method %s not allowed on %s (allowed: %s)", req.Method, path, strings.Join(r.allowed[path], ", "))
		})
	}
	r.allowed[path] = append(r.allowed[path], method)
}

func (a *Agent) routes() http.Handler {
	r := newRouter()
	r.handle("GET", "/healthz", a.handleHealth)
	r.handle("GET", "/metrics", a.metrics.handler().ServeHTTP)
	r.handle("GET", "/v1/nodes", a.handleNodes)
	r.handle("POST", "/v1/join", a.handleJoin)
	r.handle("GET", "/v1/jobs", a.handleListJobs)
	r.handle("POST", "/v1/jobs", a.handlePutJob)
	r.handle("GET", "/v1/jobs/{id}", a.handleGetJob)
	r.handle("DELETE", "/v1/jobs/{id}", a.handleDeleteJob)
	r.handle("GET", "/v1/jobs/{id}/logs", longRunning(a.handleLogs))
	r.handle("GET", "/v1/images", a.handleListImages)
	r.handle("GET", "/v1/events", a.handleEvents)
	r.handle("GET", "/v1/services", a.handleServices)
	for _, kind := range []string{api.KindSecret, api.KindConfig} {
		r.handle("GET", "/v1/"+kind+"s", a.handleListData(kind))
		r.handle("PUT", "/v1/"+kind+"s/{name}", a.handlePutData(kind))
		r.handle("GET", "/v1/"+kind+"s/{name}", a.handleGetData(kind))
		r.handle("DELETE", "/v1/"+kind+"s/{name}", a.handleDeleteData(kind))
	}
	r.handle("POST", "/v1/images", longRunning(a.handleLoadImage))
	r.handle("GET", "/v1/keys", a.handleListKeys)
	r.handle("POST", "/v1/keys", a.handleInstallKey)
	r.handle("POST", "/v1/keys/use", a.handleUseKey)
	r.handle("POST", "/v1/keys/remove", a.handleRemoveKey)
	return a.metrics.instrument(r.mux, a.authenticate(r.mux))
}

// longRunning lifts the server's read and write deadlines for one
// request: a followed log streams for as long as the client reads it, and
// an image upload takes as long as the image is big. Only authenticated
// requests get here.
func longRunning(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		// Both matter: a read deadline that passes cancels the request's
		// context even while the handler only writes.
		_ = rc.SetReadDeadline(time.Time{})
		_ = rc.SetWriteDeadline(time.Time{})
		h(w, r)
	}
}

// authenticate requires a bearer token on everything but /healthz: the
// API token for every call, or the read-only token for GET calls.
func (a *Agent) authenticate(next http.Handler) http.Handler {
	if a.cfg.APIToken == "" {
		return next
	}
	full := []byte("Bearer " + a.cfg.APIToken)
	var read []byte
	if a.cfg.APIReadToken != "" {
		read = []byte("Bearer " + a.cfg.APIReadToken)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return
		}
		got := []byte(r.Header.Get("Authorization"))
		switch {
		case subtle.ConstantTimeCompare(got, full) == 1:
		case read != nil && subtle.ConstantTimeCompare(got, read) == 1:
			if r.Method != http.MethodGet && r.Method != http.MethodHead {
				writeError(w, http.StatusForbidden, "the read-only token may only read (GET): %s %s needs the API token", r.Method, r.URL.Path)
				return
			}
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="shoal"`)
			msg := "missing bearer token: send Authorization: Bearer TOKEN"
			if len(got) > 0 {
				msg = "invalid bearer token"
			}
			writeError(w, http.StatusUnauthorized, "%s", msg)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (a *Agent) handleHealth(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, api.Health{Status: "ok", Node: a.cfg.Gossip.NodeName})
}

func (a *Agent) handleNodes(w http.ResponseWriter, _ *http.Request) {
	members := a.cluster.Members()
	out := make([]api.Node, 0, len(members))
	for _, m := range members {
		out = append(out, nodeView(m))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, out)
}

func nodeView(m gossip.Member) api.Node {
	return api.Node{
		Name:            m.Name,
		Addr:            fmt.Sprintf("%s:%d", m.Addr, m.Port),
		Status:          m.Status,
		Tags:            m.Tags,
		Labels:          m.Meta.Labels,
		Capacity:        api.Capacity(m.Meta.Capacity),
		Load:            api.Load(m.Meta.Load),
		Health:          m.Meta.Health,
		DisabledDrivers: m.Meta.Disabled,
		PeerID:          m.Meta.PeerID,
	}
}

func (a *Agent) handleJoin(w http.ResponseWriter, r *http.Request) {
	var req api.JoinRequest
	if !decodeJSON(w, r, maxSmallBody, &req) {
		return
	}
	if len(req.Addrs) == 0 {
		writeError(w, http.StatusBadRequest, "addrs: must list at least one address")
		return
	}
	for i, addr := range req.Addrs {
		if _, err := gossip.NormalizeAddr(addr, gossip.DefaultGossipPort); err != nil {
			writeError(w, http.StatusBadRequest, "addrs[%d]: %v", i, err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), 15*time.Second)
	defer cancel()
	n, err := a.cluster.Join(ctx, req.Addrs)
	if err != nil {
		writeError(w, http.StatusBadGateway, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, api.JoinResponse{Joined: n})
}

// decodeJSON strictly decodes one JSON value, answering the client itself
// (400 or 413) when the body is unusable.
func decodeJSON(w http.ResponseWriter, r *http.Request, limit int64, into any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			writeError(w, http.StatusRequestEntityTooLarge, "request body exceeds %d bytes", limit)
		case errors.Is(err, io.EOF):
			writeError(w, http.StatusBadRequest, "request body: empty, want a JSON object")
		default:
			writeError(w, http.StatusBadRequest, "request body: %v", err)
		}
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "request body: trailing data after the JSON object")
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, api.Error{Error: fmt.Sprintf(format, args...)})
}
