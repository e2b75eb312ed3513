package state

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
)

// Wire format. All integers are unsigned varints unless noted.
//
//	records: 'R' count record*
//	record:  str(kind) str(id) wall logical str(node) flags str(body) [str(sig)]
//	str:     length bytes
//	flags:   one byte, bit 0 = deleted, bit 1 = signed (str(sig) follows
//	         the body), other bits zero
//
//	digest:  'D' root[32] bitmap[32] bucket*
//
// The digest bitmap has bit i (byte i/8, bit i%8) set when bucket i is not
// empty; one big-endian uint64 per set bit follows, in bucket order. An empty
// store's digest is 65 bytes, a full one 2,113.
const (
	recordsTag = 'R'
	digestTag  = 'D'

	flagDeleted = 1 << 0
	flagSigned  = 1 << 1

	// minRecordLen is the smallest encoded record: three one-byte names,
	// one-byte wall, counter, flags and body length.
	minRecordLen = 10

	bitmapLen = NumBuckets / 8
)

// MaxDigestLen is the largest encoded digest, in bytes.
const MaxDigestLen = 1 + 32 + bitmapLen + 8*NumBuckets

// EncodeRecords encodes recs for the wire. It does not validate them; the
// decoder at the other end does.
func EncodeRecords(recs []Record) []byte {
	n := 1 + binary.MaxVarintLen64
	for i := range recs {
		n += encodedRecordLen(&recs[i])
	}
	b := make([]byte, 0, n)
	b = append(b, recordsTag)
	b = binary.AppendUvarint(b, uint64(len(recs)))
	for i := range recs {
		b = appendRecord(b, &recs[i])
	}
	return b
}

// DecodeRecords decodes what EncodeRecords produced. It rejects input longer
// than max bytes with ErrTooLarge, and input that is truncated, has trailing
// bytes, or holds a record that fails Record.Validate with ErrMalformed.
// Decoded records do not share memory with b.
func DecodeRecords(b []byte, max int) ([]Record, error) {
	if len(b) > max {
		return nil, fmt.Errorf("decode records: %d bytes, limit %d: %w", len(b), max, ErrTooLarge)
	}
	if len(b) == 0 || b[0] != recordsTag {
		return nil, fmt.Errorf("decode records: missing records tag: %w", ErrMalformed)
	}
	// Bodies alias one private copy of the input: one allocation, not one
	// per record.
	d := decoder{b: append([]byte(nil), b[1:]...)}
	count := d.uvarint()
	if d.err == nil && count > uint64(len(d.b)/minRecordLen) {
		return nil, fmt.Errorf("decode records: count %d does not fit in %d bytes: %w", count, len(d.b), ErrMalformed)
	}
	recs := make([]Record, 0, count)
	for i := uint64(0); i < count && d.err == nil; i++ {
		r := d.record()
		if d.err != nil {
			return nil, fmt.Errorf("decode record %d: %w", i, d.err)
		}
		recs = append(recs, r)
	}
	if d.err != nil {
		return nil, fmt.Errorf("decode records: %w", d.err)
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("decode records: %d trailing bytes: %w", len(d.b), ErrMalformed)
	}
	return recs, nil
}

// EncodeDigest encodes d compactly: empty buckets cost one bit.
func EncodeDigest(d Digest) []byte {
	b := make([]byte, 1+32+bitmapLen, MaxDigestLen)
	b[0] = digestTag
	copy(b[1:], d.Root[:])
	bitmap := b[1+32:]
	for i, h := range d.Buckets {
		if h != 0 {
			bitmap[i/8] |= 1 << (i % 8)
			b = binary.BigEndian.AppendUint64(b, h)
		}
	}
	return b
}

// DecodeDigest decodes what EncodeDigest produced, and checks that the root
// matches the bucket hashes, so a damaged digest is an error rather than a
// reason to resend everything.
func DecodeDigest(b []byte) (Digest, error) {
	var d Digest
	if len(b) > MaxDigestLen {
		return d, fmt.Errorf("decode digest: %d bytes, limit %d: %w", len(b), MaxDigestLen, ErrTooLarge)
	}
	if len(b) < 1+32+bitmapLen || b[0] != digestTag {
		return d, fmt.Errorf("decode digest: missing header: %w", ErrMalformed)
	}
	copy(d.Root[:], b[1:])
	bitmap := b[1+32 : 1+32+bitmapLen]
	rest := b[1+32+bitmapLen:]
	set := 0
	for _, x := range bitmap {
		set += bits.OnesCount8(x)
	}
	if len(rest) != 8*set {
		return d, fmt.Errorf("decode digest: %d buckets marked, %d bytes of hashes: %w", set, len(rest), ErrMalformed)
	}
	for i := range d.Buckets {
		if bitmap[i/8]&(1<<(i%8)) == 0 {
			continue
		}
		h := binary.BigEndian.Uint64(rest)
		rest = rest[8:]
		if h == 0 {
			return d, fmt.Errorf("decode digest: bucket %d marked but zero: %w", i, ErrMalformed)
		}
		d.Buckets[i] = h
	}
	if rootOf(&d.Buckets) != d.Root {
		return d, fmt.Errorf("decode digest: root does not match buckets: %w", ErrMalformed)
	}
	return d, nil
}

func encodedRecordLen(r *Record) int {
	return 6*binary.MaxVarintLen64 + len(r.Kind) + len(r.ID) + len(r.Version.Node) + len(r.Body) + len(r.Sig) + 2*binary.MaxVarintLen32
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendRecord(b []byte, r *Record) []byte {
	b = appendString(b, r.Kind)
	b = appendString(b, r.ID)
	b = binary.AppendUvarint(b, uint64(r.Version.WallNanos))
	b = binary.AppendUvarint(b, uint64(r.Version.Logical))
	b = appendString(b, r.Version.Node)
	var flags byte
	if r.Deleted {
		flags |= flagDeleted
	}
	if len(r.Sig) > 0 {
		flags |= flagSigned
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(r.Body)))
	b = append(b, r.Body...)
	if len(r.Sig) > 0 {
		b = binary.AppendUvarint(b, uint64(len(r.Sig)))
		b = append(b, r.Sig...)
	}
	return b
}

// decodeRecord decodes one record encoded by appendRecord, as stored on disk.
// The record's body aliases b.
func decodeRecord(b []byte) (Record, error) {
	d := decoder{b: b}
	r := d.record()
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes: %w", len(d.b), ErrMalformed)
	}
	return r, d.err
}

// decoder reads from b and remembers the first error, so callers check once.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf(format+": %w", append(args, ErrMalformed)...)
	}
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes(what string, limit int) []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(limit) {
		d.fail("%s is %d bytes, limit %d", what, n, limit)
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("%s truncated", what)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) record() Record {
	var r Record
	r.Kind = string(d.bytes("kind", MaxKindLen))
	r.ID = string(d.bytes("id", MaxIDLen))
	wall := d.uvarint()
	logical := d.uvarint()
	r.Version.Node = string(d.bytes("node", MaxNodeLen))
	if d.err != nil {
		return Record{}
	}
	if wall > math.MaxInt64 {
		d.fail("wall time %d out of range", wall)
	}
	if logical > math.MaxUint32 {
		d.fail("logical counter %d out of range", logical)
	}
	if len(d.b) == 0 {
		d.fail("flags truncated")
	}
	if d.err != nil {
		return Record{}
	}
	flags := d.b[0]
	d.b = d.b[1:]
	if flags&^(flagDeleted|flagSigned) != 0 {
		d.fail("unknown flags %#x", flags)
	}
	r.Version.WallNanos, r.Version.Logical = int64(wall), uint32(logical)
	r.Deleted = flags&flagDeleted != 0
	if body := d.bytes("body", MaxBodyLen); len(body) > 0 {
		r.Body = body
	}
	if flags&flagSigned != 0 {
		// An empty signature would re-encode without the flag.
		if r.Sig = d.bytes("signature", MaxSigLen); d.err == nil && len(r.Sig) == 0 {
			d.fail("signed flag with an empty signature")
		}
	}
	if d.err != nil {
		return Record{}
	}
	if err := r.Validate(); err != nil {
		d.err = fmt.Errorf("%w: %w", ErrMalformed, err)
		return Record{}
	}
	return r
}
