package api

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strings"
	"unicode/utf8"
)

// Kinds of named data a job can mount: secrets (values never leave the
// cluster through the API, and are encrypted at rest) and configs (values
// readable through the API).
const (
	KindSecret = "secret"
	KindConfig = "config"
)

// Limits of secrets and configs.
const (
	MaxDataBytes = 256 << 10
	maxDataKeys  = 256
)

// Data is the body of PUT /v1/secrets/{name} and /v1/configs/{name}: file
// names (keys) and their contents.
type Data struct {
	Data map[string]string `json:"data"`
}

// DataInfo describes a stored secret or config. Values is set only for
// configs read one at a time.
type DataInfo struct {
	Name    string            `json:"name"`
	Keys    []string          `json:"keys"`
	Bytes   int               `json:"bytes"`
	Version string            `json:"version"`
	Values  map[string]string `json:"values,omitempty"`
}

// ValidateData checks a secret or config name and its data.
func ValidateData(name string, d Data) *FieldError {
	if msg := dnsLabelProblem(name); msg != "" {
		return fieldErr("name", "%s", msg)
	}
	if len(d.Data) == 0 {
		return fieldErr("data", "required: at least one key")
	}
	if len(d.Data) > maxDataKeys {
		return fieldErr("data", "at most %d keys", maxDataKeys)
	}
	size := 0
	for k, v := range d.Data {
		if !isDataKey(k) {
			return fieldErr(key("data", k), "a key is a file name: 1-128 letters, digits, '.', '-' and '_', not starting with '.'")
		}
		if !utf8.ValidString(v) {
			return fieldErr(key("data", k), "must be UTF-8 text (JSON cannot carry other bytes): base64-encode binary content")
		}
		size += len(k) + len(v)
	}
	if size > MaxDataBytes {
		return fieldErr("data", "takes %d bytes; the limit is %d", size, MaxDataBytes)
	}
	return nil
}

func isDataKey(k string) bool {
	if k == "" || len(k) > 128 || k[0] == '.' {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// SortedKeys returns the keys of d in order.
func (d Data) SortedKeys() []string {
	keys := make([]string, 0, len(d.Data))
	for k := range d.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func dataPath(kind string) string { return "/v1/" + kind + "s" }

// PutData stores a secret or config (kind KindSecret or KindConfig).
func (c *Client) PutData(ctx context.Context, kind, name string, d Data) (DataInfo, error) {
	var out DataInfo
	err := c.Do(ctx, http.MethodPut, dataPath(kind)+"/"+url.PathEscape(name), d, &out)
	return out, err
}

// ListData lists the secrets or configs, without values.
func (c *Client) ListData(ctx context.Context, kind string) ([]DataInfo, error) {
	var out []DataInfo
	err := c.Do(ctx, http.MethodGet, dataPath(kind), nil, &out)
	return out, err
}

// GetData describes one secret or config; a config comes with its values.
func (c *Client) GetData(ctx context.Context, kind, name string) (DataInfo, error) {
	var out DataInfo
	err := c.Do(ctx, http.MethodGet, dataPath(kind)+"/"+url.PathEscape(name), nil, &out)
	return out, err
}

// DeleteData removes a secret or config.
func (c *Client) DeleteData(ctx context.Context, kind, name string) error {
	return c.Do(ctx, http.MethodDelete, dataPath(kind)+"/"+url.PathEscape(name), nil, nil)
}

// DataMount places a secret or config in a task's filesystem: a read-only
// directory with one file per key.
type DataMount struct {
	Name string `json:"name"`
	// Path is absolute and clean; default /run/secrets/NAME for secrets
	// and /etc/config/NAME for configs.
	Path string `json:"path,omitempty"`
}

func validateDataMounts(field string, ms []DataMount, driver string) *FieldError {
	seen := map[string]bool{}
	for i, m := range ms {
		f := fmt.Sprintf("%s[%d]", field, i)
		if msg := dnsLabelProblem(m.Name); msg != "" {
			return fieldErr(f+".name", "%s", msg)
		}
		if err := validateMountPath(f+".path", m.Path); err != nil {
			return err
		}
		if seen[m.Path] {
			return fieldErr(f+".path", "%s is mounted twice", m.Path)
		}
		seen[m.Path] = true
		if driver != DriverContainerd {
			return fieldErr(f, "secrets and configs are mounted into containers: they need the containerd driver")
		}
	}
	return nil
}

func validateMountPath(field, p string) *FieldError {
	switch {
	case p == "":
		return fieldErr(field, "required")
	case len(p) > maxPathLen:
		return fieldErr(field, "must be at most %d characters", maxPathLen)
	case !path.IsAbs(p):
		return fieldErr(field, "must be absolute")
	case path.Clean(p) != p:
		return fieldErr(field, "must be clean (%q)", clip(path.Clean(p), 256))
	case p == "/":
		return fieldErr(field, "cannot be /")
	case strings.IndexByte(p, 0) >= 0:
		return fieldErr(field, "must not contain NUL bytes")
	}
	return nil
}
