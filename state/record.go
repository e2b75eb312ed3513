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
	MaxSigLen  = 256     // bytes in Record.Sig
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
// and Sig with the store: treat them as read-only.
//
// Sig, when set, is the writer's signature over SignedBytes: it lives
// beside the body rather than in it, so the body stays the plain document
// every reader decodes, and it covers the version, so a signed body cannot
// be replayed under a newer version. This package neither makes nor checks
// signatures; it stores and carries them.
type Record struct {
	Kind    string          `json:"kind"`
	ID      string          `json:"id"`
	Version Version         `json:"version"`
	Body    json.RawMessage `json:"body,omitempty"`
	Deleted bool            `json:"deleted,omitempty"`
	Sig     []byte          `json:"sig,omitempty"`
}

// signedPrefix separates record signatures from any other use of the key.
const signedPrefix = "shoal signed record v1\x00"

// SignedBytes returns what a record signature covers: a domain prefix and
// the record's wire encoding without its signature (kind, id, version,
// deleted flag and body, each length-prefixed, so no two records share
// them).
func (r Record) SignedBytes() []byte {
	r.Sig = nil
	b := make([]byte, 0, len(signedPrefix)+encodedRecordLen(&r))
	b = append(b, signedPrefix...)
	return appendRecord(b, &r)
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
	if len(r.Sig) > MaxSigLen {
		return fmt.Errorf("%w: signature is %d bytes, limit %d", ErrInvalidRecord, len(r.Sig), MaxSigLen)
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
// its name; for them a tombstone wins, then the greater body bytes, then
// the greater signature, so that every node still picks the same winner.
// Because Merge picks the maximum of a total order it is commutative,
// associative and idempotent.
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
	if c := bytes.Compare(a.Sig, b.Sig); c != 0 {
		return c
	}
	if c := cmp.Compare(a.Kind, b.Kind); c != 0 {
		return c
	}
	return cmp.Compare(a.ID, b.ID)
}
