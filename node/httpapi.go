package node

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	r.handle("GET", "/v1/jobs/{id}/logs", a.handleLogs)
	r.handle("GET", "/v1/images", a.handleListImages)
	r.handle("GET", "/v1/events", a.handleEvents)
	r.handle("GET", "/v1/services", a.handleServices)
	for _, kind := range []string{api.KindSecret, api.KindConfig} {
		r.handle("GET", "/v1/"+kind+"s", a.handleListData(kind))
		r.handle("PUT", "/v1/"+kind+"s/{name}", a.handlePutData(kind))
		r.handle("GET", "/v1/"+kind+"s/{name}", a.handleGetData(kind))
		r.handle("DELETE", "/v1/"+kind+"s/{name}", a.handleDeleteData(kind))
	}
	r.handle("POST", "/v1/images", a.handleLoadImage)
	return a.metrics.instrument(a.authenticate(r.mux))
}

// authenticate requires the bearer token on everything but /healthz.
func (a *Agent) authenticate(next http.Handler) http.Handler {
	if a.cfg.APIToken == "" {
		return next
	}
	want := []byte("Bearer " + a.cfg.APIToken)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			next.ServeHTTP(w, r)
			return
		}
		got := []byte(r.Header.Get("Authorization"))
		if subtle.ConstantTimeCompare(got, want) != 1 {
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
		Name:     m.Name,
		Addr:     fmt.Sprintf("%s:%d", m.Addr, m.Port),
		Status:   m.Status,
		Tags:     m.Tags,
		Labels:   m.Meta.Labels,
		Capacity: api.Capacity(m.Meta.Capacity),
		Load:     api.Load(m.Meta.Load),
		Health:   m.Meta.Health,
		PeerID:   m.Meta.PeerID,
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
