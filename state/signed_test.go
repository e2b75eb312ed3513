package state

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"path/filepath"
	"testing"
)

func signedSample() Record {
	return Record{Kind: "endpoint", ID: "web.0.b", Version: Version{WallNanos: 7, Logical: 1, Node: "b"},
		Body: []byte(`{"job":"web","replica":0,"node":"b"}`), Sig: bytes.Repeat([]byte{0xab}, 64)}
}

func TestSignedRecordRoundTrip(t *testing.T) {
	recs := append(sampleRecords(), signedSample())
	b := EncodeRecords(recs)
	got, err := DecodeRecords(b, len(b))
	if err != nil {
		t.Fatal(err)
	}
	last := got[len(got)-1]
	if !bytes.Equal(last.Sig, signedSample().Sig) || !sameRecord(last, signedSample()) {
		t.Fatalf("signed record changed in a round trip: %+v", last)
	}
	for _, r := range got[:len(got)-1] {
		if r.Sig != nil {
			t.Fatalf("unsigned record %s decoded with a signature", r.Key())
		}
	}
}

func TestDecodeRejectsBadSignatures(t *testing.T) {
	r := signedSample()
	r.Sig = nil
	unsigned := EncodeRecords([]Record{r})
	// The flags byte is the one before the body length and body.
	flagAt := len(unsigned) - len(r.Body) - 2
	if unsigned[flagAt] != 0 {
		t.Fatalf("test found flags %#x at %d, not a flags byte", unsigned[flagAt], flagAt)
	}
	emptySig := append(bytes.Clone(unsigned), 0)
	emptySig[flagAt] = flagSigned
	missingSig := bytes.Clone(unsigned)
	missingSig[flagAt] = flagSigned
	long := signedSample()
	long.Sig = make([]byte, MaxSigLen+1)
	for name, in := range map[string][]byte{
		"signed flag, empty signature": emptySig,
		"signed flag, no signature":    missingSig,
		"signature over the limit":     EncodeRecords([]Record{long}),
	} {
		if _, err := DecodeRecords(in, len(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", name, err)
		}
	}
}

func TestSignedBytesCoverVersionAndBody(t *testing.T) {
	base := signedSample()
	seen := map[string]string{string(base.SignedBytes()): "base"}
	variants := map[string]func(*Record){
		"newer version":  func(r *Record) { r.Version.WallNanos++ },
		"other writer":   func(r *Record) { r.Version.Node = "c" },
		"other id":       func(r *Record) { r.ID = "web.0.c" },
		"other body":     func(r *Record) { r.Body = []byte(`{"job":"web","replica":0,"node":"c"}`) },
		"deleted":        func(r *Record) { r.Deleted, r.Body = true, nil },
		"other kind":     func(r *Record) { r.Kind = "usage" },
		"logical ticked": func(r *Record) { r.Version.Logical++ },
	}
	for name, change := range variants {
		r := signedSample()
		change(&r)
		if prev, dup := seen[string(r.SignedBytes())]; dup {
			t.Errorf("%s signs the same bytes as %s", name, prev)
		}
		seen[string(r.SignedBytes())] = name
	}
	other := base
	other.Sig = []byte{1}
	if !bytes.Equal(base.SignedBytes(), other.SignedBytes()) {
		t.Error("the signature is part of what it signs")
	}
}

func TestWriteSignedSignsTheStoredVersion(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	path := filepath.Join(t.TempDir(), "state.db")
	s, err := Open(path, Options{Node: "b"})
	if err != nil {
		t.Fatal(err)
	}
	sign := func(b []byte) ([]byte, error) { return ed25519.Sign(priv, b), nil }
	rec, err := s.WriteSigned("endpoint", "web.0.b", []byte(`{"node":"b"}`), sign)
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(pub, rec.SignedBytes(), rec.Sig) {
		t.Fatal("signature does not verify over the written record")
	}
	replay := rec
	replay.Version.WallNanos += 1000
	if ed25519.Verify(pub, replay.SignedBytes(), replay.Sig) {
		t.Fatal("signature still verifies under a newer version")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The signature is kept on disk and sent as stored.
	s2 := openFile(t, path, "b", nil)
	got := s2.BucketRecords(BucketOf("endpoint", "web.0.b"))
	if len(got) != 1 || !ed25519.Verify(pub, got[0].SignedBytes(), got[0].Sig) {
		t.Fatalf("signature lost across a restart: %+v", got)
	}
	if _, err := s2.WriteSigned("endpoint", "x", []byte(`{}`), nil); err == nil {
		t.Error("WriteSigned without a signer succeeded")
	}
	if _, err := s2.WriteSigned("endpoint", "x", []byte(`{}`), func([]byte) ([]byte, error) { return nil, nil }); err == nil {
		t.Error("WriteSigned stored an empty signature")
	}
}

func TestWinsMatchesApply(t *testing.T) {
	s := openMemory(t, "a", nil)
	r := signedSample()
	if !s.Wins(r) {
		t.Fatal("a record the store lacks does not win")
	}
	if _, err := s.Apply([]Record{r}); err != nil {
		t.Fatal(err)
	}
	if s.Wins(r) {
		t.Fatal("the stored copy wins over itself")
	}
	older := r
	older.Version.WallNanos--
	if s.Wins(older) {
		t.Fatal("an older copy wins")
	}
	newer := r
	newer.Version.WallNanos++
	if !s.Wins(newer) {
		t.Fatal("a newer copy does not win")
	}
}
