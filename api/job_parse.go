package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"sigs.k8s.io/yaml"
)

// ParseJob decodes a job spec. The body is JSON unless contentType names
// YAML (application/yaml, application/x-yaml, text/yaml), which is
// converted to JSON first. Decoding is strict: unknown fields (matched
// case-sensitively), values of the wrong type and data after the job are
// errors naming the field. Empty lists and maps are returned as nil, so
// that a parsed job marshals and parses back to itself. ParseJob neither
// applies defaults nor validates; see ApplyDefaults and Validate.
func ParseJob(body []byte, contentType string) (Job, error) {
	if len(body) > MaxJobSize {
		return Job{}, fmt.Errorf("job spec is %d bytes; the limit is %d", len(body), MaxJobSize)
	}
	isYAML := isYAMLType(contentType)
	data := body
	if isYAML {
		var err error
		if data, err = yamlToJSON(body); err != nil {
			return Job{}, err
		}
	}

	// First decode into a generic tree: it gives exact syntax errors,
	// catches trailing data, and lets shapeChecker name the exact path
	// (with list indexes) of an unknown field or a mistyped value, which
	// encoding/json's own errors do not.
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return Job{}, syntaxError(data, err, isYAML)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Job{}, errors.New("invalid JSON: unexpected data after the job object")
	}
	if _, ok := tree.(map[string]any); !ok {
		return Job{}, errors.New("job spec must be an object")
	}
	if err := (shapeChecker{yaml: isYAML}).check(jobType, tree, ""); err != nil {
		return Job{}, err
	}

	// The tree is known to fit Job, so this decode should not fail; the
	// strict options stay as a second line of defence.
	var j Job
	dec = json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return Job{}, fmt.Errorf("decode job: %w", err)
	}
	j.dropEmpty()
	return j, nil
}

func isYAMLType(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	switch strings.ToLower(strings.TrimSpace(mt)) {
	case "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml":
		return true
	}
	return false
}

func yamlToJSON(body []byte) (data []byte, err error) {
	// The YAML parser is third-party code fed with user input; a panic in
	// it must become a 400, not take the agent down.
	defer func() {
		if r := recover(); r != nil {
			data, err = nil, fmt.Errorf("invalid YAML: %v", r)
		}
	}()
	// Strict: YAML forbids duplicate keys, and silently keeping one of
	// them would hide a mistake.
	data, err = yaml.YAMLToJSONStrict(body)
	if err != nil {
		// go-yaml spreads a list of errors over several lines; one line
		// reads better in a JSON error answer.
		msg := strings.Join(strings.Fields(err.Error()), " ")
		return nil, fmt.Errorf("invalid YAML: %s", clip(strings.TrimPrefix(msg, "yaml: "), 300))
	}
	// Aliases can make a small document expand a lot.
	if len(data) > 4*MaxJobSize {
		return nil, fmt.Errorf("invalid YAML: expands to %d bytes of JSON", len(data))
	}
	return data, nil
}

// syntaxError turns a decoding error of the generic tree into a message
// with a line and column.
func syntaxError(data []byte, err error, isYAML bool) error {
	if err == io.EOF {
		return errors.New("job spec is empty")
	}
	var se *json.SyntaxError
	if errors.As(err, &se) && !isYAML {
		off := min(max(int(se.Offset), 0), len(data))
		line := 1 + bytes.Count(data[:off], []byte("\n"))
		col := off - bytes.LastIndexByte(data[:off], '\n')
		return fmt.Errorf("invalid JSON at line %d, column %d: %s", line, col, strings.TrimPrefix(se.Error(), "json: "))
	}
	return fmt.Errorf("invalid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
}

var (
	jobType      = reflect.TypeFor[Job]()
	durationType = reflect.TypeFor[Duration]()
	timeType     = reflect.TypeFor[time.Time]()
)

// shapeChecker walks a generic JSON tree alongside the Go type it will be
// decoded into, and reports the first key the type does not have or value
// of the wrong kind, with its full path.
type shapeChecker struct {
	yaml bool // add hints that only make sense to YAML writers
}

func (c shapeChecker) check(t reflect.Type, v any, at string) error {
	if v == nil {
		return nil // null leaves the zero value, as encoding/json does
	}
	if t == durationType {
		s, ok := v.(string)
		if !ok {
			return fieldErr(at, `must be a duration string such as "1.5s" or "2m"`)
		}
		if _, err := time.ParseDuration(s); err != nil {
			return fieldErr(at, `invalid duration %q: write it like "1.5s" or "2m"`, clip(s, 64))
		}
		return nil
	}
	// Times are structs in Go but strings on the wire; a job read back
	// from the API carries some, and must be accepted as it was sent.
	if t == timeType {
		s, ok := v.(string)
		if !ok {
			return fieldErr(at, `must be an RFC 3339 time string such as "2025-01-02T15:04:05Z"`)
		}
		var tm time.Time
		if err := tm.UnmarshalText([]byte(s)); err != nil {
			return fieldErr(at, `invalid time %q: write it like "2025-01-02T15:04:05Z"`, clip(s, 64))
		}
		return nil
	}
	switch t.Kind() {
	case reflect.Pointer:
		return c.check(t.Elem(), v, at)
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return fieldErr(at, "must be an object")
		}
		names := make([]string, 0, t.NumField())
		for i := range t.NumField() {
			names = append(names, jsonName(t.Field(i)))
		}
		keys := sortedKeys(obj)
		for _, k := range keys {
			if slices.Contains(names, k) {
				continue
			}
			// encoding/json would accept a different case; we do not, so
			// say what was probably meant.
			for _, n := range names {
				if strings.EqualFold(n, k) {
					return fieldErr(join(at, k), "unknown field (did you mean %q?)", n)
				}
			}
			if !isFieldName(k) {
				return fieldErr(key(at, k), "unknown field")
			}
			return fieldErr(join(at, k), "unknown field")
		}
		for i, n := range names {
			if sub, ok := obj[n]; ok {
				if err := c.check(t.Field(i).Type, sub, join(at, n)); err != nil {
					return err
				}
			}
		}
	case reflect.Slice:
		list, ok := v.([]any)
		if !ok {
			return fieldErr(at, "must be a list")
		}
		for i, e := range list {
			if err := c.check(t.Elem(), e, index(at, i)); err != nil {
				return err
			}
		}
	case reflect.Map:
		obj, ok := v.(map[string]any)
		if !ok {
			return fieldErr(at, "must be an object")
		}
		for _, k := range sortedKeys(obj) {
			if err := c.check(t.Elem(), obj[k], key(at, k)); err != nil {
				return err
			}
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			if c.yaml {
				return fieldErr(at, "must be a string (quote it in YAML)")
			}
			return fieldErr(at, "must be a string")
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return fieldErr(at, "must be true or false")
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := v.(json.Number)
		if !ok {
			return fieldErr(at, "must be an integer")
		}
		// The same parse encoding/json does, so the two agree.
		if _, err := strconv.ParseInt(n.String(), 10, t.Bits()); err != nil {
			if errors.Is(err, strconv.ErrRange) {
				return fieldErr(at, "integer %s is out of range", clip(n.String(), 32))
			}
			return fieldErr(at, "must be an integer, not %s", clip(n.String(), 32))
		}
	}
	return nil
}

// jsonName is the name encoding/json uses for a field of our types (all
// have a tag; none is embedded or skipped).
func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "" {
		return f.Name
	}
	return name
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// join, index and key build field paths such as task.ports[1].port and
// task.env["HOME"].
func join(at, name string) string {
	if at == "" {
		return name
	}
	return at + "." + name
}

func index(at string, i int) string { return at + "[" + strconv.Itoa(i) + "]" }

func key(at, k string) string { return at + "[" + strconv.Quote(clip(k, 64)) + "]" }

// isFieldName reports whether k can stand in a dotted path as it is.
func isFieldName(k string) bool {
	if k == "" || len(k) > 64 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// clip shortens user input quoted in an error message: an error answer
// should not echo back a megabyte of request.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
