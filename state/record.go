package state

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// Size limits on a record's fields. They bound what a peer can make a node
// store and what a decoder will allocate.
const (
	MaxKindLen = 64      // bytes in Record.Kind
	MaxIDLen   = 256     // bytes in Record.ID
	MaxNodeLen = 256     // bytes in Version.Node
	MaxBodyLen = 1 << 20 // bytes in Record.Body
)

// Errors callers branch on. Returned errors wrap them with context.
var (
	// ErrInvalidRecord means a record breaks the rules in Record.Validate.
	ErrInvalidRecord = errors.New("invalid record")
	// ErrMalformed means encoded input could not be decoded.
	ErrMalformed = errors.New("malformed input")
	// ErrTooLarge means encoded input is larger than the caller allows.
	ErrTooLarge = errors.New("input too large")
	// ErrClosed means the store has been closed.
	ErrClosed = errors.New("state store closed")
	// ErrFutureVersion means records were skipped because their versions
	// are further ahead of this node's clock than Options.MaxClockDrift.
	// The error is a *FutureVersionsError.
	ErrFutureVersion = errors.New("version too far ahead of the clock")
)

// Key identifies a record.
type Key struct {
	Kind string `json:"kind"`
	ID   string `json:"id"`
}

// String formats k as kind/id, for logs and errors.
func (k Key) String() string { return k.Kind + "/" + k.ID }

// Record is one replicated entry. Kind names the record type ("job",
// "endpoint", ...); ID is unique within the kind. A deleted record is kept
// as a tombstone (Deleted true, no body) so the delete replicates.
//
// Body is a JSON document. Records handed out by a Store share their Body
// with the store: treat it as read-only.
type Record struct {
	Kind    string          `json:"kind"`
	ID      string          `json:"id"`
	Version Version         `json:"version"`
	Body    json.RawMessage `json:"body,omitempty"`
	Deleted bool            `json:"deleted,omitempty"`
}

// Key returns the record's key.
func (r Record) Key() Key { return Key{Kind: r.Kind, ID: r.ID} }

// Validate reports whether r may be stored: kind, id and version node are
// non-empty valid UTF-8 within their size limits, the wall time is not
// negative, and the body is empty or valid JSON of at most MaxBodyLen bytes.
func (r Record) Validate() error {
	if err := checkName("kind", r.Kind, MaxKindLen); err != nil {
		return err
	}
	if err := checkName("id", r.ID, MaxIDLen); err != nil {
		return err
	}
	if err := checkName("version node", r.Version.Node, MaxNodeLen); err != nil {
		return err
	}
	if r.Version.WallNanos < 0 {
		return fmt.Errorf("%w: negative version wall time %d", ErrInvalidRecord, r.Version.WallNanos)
	}
	if len(r.Body) > MaxBodyLen {
		return fmt.Errorf("%w: body is %d bytes, limit %d", ErrInvalidRecord, len(r.Body), MaxBodyLen)
	}
	if len(r.Body) > 0 && !json.Valid(r.Body) {
		return fmt.Errorf("%w: body is not valid JSON", ErrInvalidRecord)
	}
	return nil
}

func checkName(what, s string, limit int) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: empty %s", ErrInvalidRecord, what)
	case len(s) > limit:
		return fmt.Errorf("%w: %s is %d bytes, limit %d", ErrInvalidRecord, what, len(s), limit)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidRecord, what)
	}
	return nil
}

// Merge returns whichever of local and remote wins under last-writer-wins:
// the one with the newer Version. Merge is meant for two copies of one key.
//
// Versions from different writes never tie (the node name breaks ties of wall
// time and counter). Two copies with identical versions but different
// contents can only come from a bug or a node that lost its disk and reused
// its name; for them a tombstone wins, then the greater body bytes, so that
// every node still picks the same winner. Because Merge picks the maximum of
// a total order it is commutative, associative and idempotent.
func Merge(local, remote Record) Record {
	if compareRecords(remote, local) > 0 {
		return remote
	}
	return local
}

// compareRecords is the total order Merge maximises.
func compareRecords(a, b Record) int {
	if c := a.Version.Compare(b.Version); c != 0 {
		return c
	}
	if a.Deleted != b.Deleted {
		if a.Deleted {
			return 1
		}
		return -1
	}
	if c := bytes.Compare(a.Body, b.Body); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Kind, b.Kind); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}
