package state

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strings"
	"testing"
)

func TestRecordsRoundTrip(t *testing.T) {
	for _, recs := range [][]Record{nil, sampleRecords()} {
		b := EncodeRecords(recs)
		got, err := DecodeRecords(b, len(b))
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if len(got) != len(recs) {
			t.Fatalf("decoded %d records, want %d", len(got), len(recs))
		}
		for i := range recs {
			if !sameRecord(got[i], recs[i]) {
				t.Errorf("record %d: got %+v, want %+v", i, got[i], recs[i])
			}
		}
	}
}

func TestDecodedRecordsDoNotAliasInput(t *testing.T) {
	b := EncodeRecords(sampleRecords()[:1])
	got, err := DecodeRecords(b, len(b))
	if err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] = 'x'
	}
	if string(got[0].Body) != `{"image":"nginx","replicas":3}` {
		t.Fatalf("body changed with the input buffer: %s", got[0].Body)
	}
}

func TestEncodedRecordIsCompact(t *testing.T) {
	r := sampleRecords()[1]
	b := EncodeRecords([]Record{r})
	overhead := len(b) - len(r.Kind) - len(r.ID) - len(r.Version.Node) - len(r.Body)
	if overhead > 20 {
		t.Errorf("one record costs %d bytes beyond its strings, want at most 20", overhead)
	}
}

func TestDecodeRecordsRejectsInputOverTheLimit(t *testing.T) {
	b := EncodeRecords(sampleRecords())
	if _, err := DecodeRecords(b, len(b)-1); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrTooLarge", err)
	}
}

func TestDecodeRecordsRejectsEveryTruncation(t *testing.T) {
	b := EncodeRecords(sampleRecords())
	for n := range len(b) {
		if _, err := DecodeRecords(b[:n], len(b)); !errors.Is(err, ErrMalformed) {
			t.Fatalf("prefix of %d/%d bytes: got %v, want ErrMalformed", n, len(b), err)
		}
	}
}

func TestDecodeRecordsRejectsMalformedInput(t *testing.T) {
	str := func(b []byte, s string) []byte { return appendString(b, s) }
	// rec builds one encoded record from raw fields.
	rec := func(kind, id string, wall, logical uint64, node string, flags byte, body string) []byte {
		b := []byte{recordsTag, 1}
		b = str(b, kind)
		b = str(b, id)
		b = binary.AppendUvarint(b, wall)
		b = binary.AppendUvarint(b, logical)
		b = str(b, node)
		b = append(b, flags)
		return str(b, body)
	}
	good := rec("job", "web", 1, 0, "n", 0, `{}`)
	if _, err := DecodeRecords(good, 1<<20); err != nil {
		t.Fatalf("control case failed: %v", err)
	}
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"wrong tag", append([]byte{'X'}, good[1:]...)},
		{"count larger than input", []byte{recordsTag, 0xff, 0xff, 0xff, 0xff, 0x0f}},
		{"varint overflow", []byte{recordsTag, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"trailing bytes", append(bytes.Clone(good), 0)},
		{"unknown flag", rec("job", "web", 1, 0, "n", 2, `{}`)},
		{"body not JSON", rec("job", "web", 1, 0, "n", 0, `{`)},
		{"empty kind", rec("", "web", 1, 0, "n", 0, `{}`)},
		{"empty id", rec("job", "", 1, 0, "n", 0, `{}`)},
		{"empty node", rec("job", "web", 1, 0, "", 0, `{}`)},
		{"kind too long", rec(strings.Repeat("k", MaxKindLen+1), "web", 1, 0, "n", 0, `{}`)},
		{"id not UTF-8", rec("job", "\xff", 1, 0, "n", 0, `{}`)},
		{"wall beyond int64", rec("job", "web", math.MaxInt64+1, 0, "n", 0, `{}`)},
		{"counter beyond uint32", rec("job", "web", 1, math.MaxUint32+1, "n", 0, `{}`)},
		{"string length beyond input", []byte{recordsTag, 1, 0x7f, 'j'}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeRecords(tt.in, 1<<20); !errors.Is(err, ErrMalformed) {
				t.Errorf("got %v, want ErrMalformed", err)
			}
		})
	}
}

func TestDigestRoundTrip(t *testing.T) {
	s := openMemory(t, "n", nil)
	for _, r := range sampleRecords() {
		if _, err := s.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []Digest{openMemory(t, "n", nil).Digest(), s.Digest()} {
		b := EncodeDigest(d)
		got, err := DecodeDigest(b)
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		if got != d {
			t.Fatalf("round trip changed the digest")
		}
	}
}

func TestDecodeDigestRejectsDamage(t *testing.T) {
	s := openMemory(t, "n", nil)
	for _, r := range sampleRecords() {
		if _, err := s.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	good := EncodeDigest(s.Digest())
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 1; return b }
	tests := []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"wrong tag", flip(0)},
		{"root changed", flip(1)},
		{"bucket hash changed", flip(len(good) - 1)},
		{"bitmap changed", flip(1 + 32)},
		{"truncated", good[:len(good)-1]},
		{"trailing bytes", append(bytes.Clone(good), 0)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodeDigest(tt.in); !errors.Is(err, ErrMalformed) {
				t.Errorf("got %v, want ErrMalformed", err)
			}
		})
	}
	if _, err := DecodeDigest(make([]byte, MaxDigestLen+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("oversized digest: got %v, want ErrTooLarge", err)
	}
}

func FuzzDecodeRecords(f *testing.F) {
	f.Add(EncodeRecords(nil))
	f.Add(EncodeRecords(sampleRecords()))
	f.Add(EncodeRecords(sampleRecords()[2:3]))
	f.Add(EncodeRecords([]Record{signedSample()}))
	f.Add([]byte{recordsTag, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte("R\x01\x03job\x03web\x01\x00\x01n\x00\x02{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := DecodeRecords(b, 1<<16)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		// Whatever decodes is valid and survives a round trip.
		again, err := DecodeRecords(EncodeRecords(recs), 1<<17)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if len(again) != len(recs) {
			t.Fatalf("round trip: %d records, then %d", len(recs), len(again))
		}
		for i := range recs {
			if err := recs[i].Validate(); err != nil {
				t.Fatalf("decoded an invalid record: %v", err)
			}
			if !sameRecord(recs[i], again[i]) {
				t.Fatalf("record %d changed in a round trip", i)
			}
		}
	})
}

func FuzzDecodeDigest(f *testing.F) {
	f.Add(EncodeDigest(Digest{}))
	s, _ := OpenMemory(Options{Node: "n"})
	f.Add(EncodeDigest(s.Digest()))
	for _, r := range sampleRecords() {
		s.Put(r)
	}
	f.Add(EncodeDigest(s.Digest()))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := DecodeDigest(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		if !bytes.Equal(EncodeDigest(d), b) {
			t.Fatalf("a decoded digest does not re-encode to its input")
		}
	})
}
