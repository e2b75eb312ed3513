package overlay

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestTagRoundTrip(t *testing.T) {
	mac, _ := net.ParseMAC("aa:bb:cc:dd:ee:f0")
	for _, a := range []Advert{
		{Subnet: netip.MustParsePrefix("10.42.7.0/24"), ClaimedAt: 1732550000000000000, VTEPMAC: mac},
		{Subnet: netip.MustParsePrefix("10.42.7.0/24"), ClaimedAt: 1},
	} {
		tag := a.Tag()
		got, err := ParseTag(tag)
		if err != nil {
			t.Fatalf("ParseTag(%q) = %v", tag, err)
		}
		if !got.Equal(a) {
			t.Fatalf("ParseTag(%q) = %+v, want %+v", tag, got, a)
		}
	}
	full := Advert{Subnet: netip.MustParsePrefix("255.255.255.252/30"), ClaimedAt: 1<<63 - 1, VTEPMAC: mac}.Tag()
	if len(full) > 56 {
		t.Fatalf("longest tag %q is %d bytes", full, len(full))
	}
	if want := "10.42.7.0/24,1732550000000000000,aa:bb:cc:dd:ee:f0"; (Advert{netip.MustParsePrefix("10.42.7.0/24"), 1732550000000000000, mac}).Tag() != want {
		t.Fatalf("tag format changed; peers of other versions parse %q", want)
	}
}

func TestParseTagRejectsGarbage(t *testing.T) {
	tests := []struct{ in, mentions string }{
		{"", "fields"},
		{"10.42.7.0/24", "fields"},
		{"10.42.7.0/24,1,aa:bb:cc:dd:ee:ff,x", "fields"},
		{"10.42.7.0,1", "subnet"},
		{"10.42.7.5/24,1", "host bits"},
		{"fd00::/64,1", "not IPv4"},
		{"::ffff:10.42.7.0/120,1", "subnet"},
		{"10.42.7.0/24,abc", "claim time"},
		{"10.42.7.0/24,-5", "claim time"},
		{"10.42.7.0/24,0", "claim time"},
		{"10.42.7.0/24,+5", "claim time"},
		{"10.42.7.0/24,007", "claim time"},
		{"10.42.7.0/24,99999999999999999999", "claim time"},
		{"10.42.7.0/24,1,zz:bb:cc:dd:ee:ff", "VTEP MAC"},
		{"10.42.7.0/24,1,01:bb:cc:dd:ee:ff", "unicast"},
		{"10.42.7.0/24,1,00:00:00:00:00:00", "unicast"},
		{"10.42.7.0/24,1,02:00:5e:10:00:00:00:01", "6 bytes"},
		{strings.Repeat("1", 100), "longer"},
	}
	for _, tt := range tests {
		_, err := ParseTag(tt.in)
		if err == nil {
			t.Errorf("ParseTag(%q) accepted", tt.in)
			continue
		}
		if !errors.Is(err, ErrBadTag) || !strings.Contains(err.Error(), tt.mentions) {
			t.Errorf("ParseTag(%q) = %q, want ErrBadTag mentioning %q", tt.in, err, tt.mentions)
		}
	}
}

func FuzzParseTag(f *testing.F) {
	for _, s := range []string{
		"10.42.7.0/24,1732550000000000000,aa:bb:cc:dd:ee:ff",
		"10.42.7.0/24,1",
		"10.42.7.0/24,1,aa-bb-cc-dd-ee-ff",
		"0.0.0.0/0,9223372036854775807,02:00:00:00:00:01",
		"10.42.7.0/24,,",
		",,,",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseTag(s)
		if err != nil {
			if !errors.Is(err, ErrBadTag) {
				t.Fatalf("ParseTag(%q) error %v does not wrap ErrBadTag", s, err)
			}
			return
		}
		// Anything accepted re-encodes to a canonical tag that parses to
		// the same advert, and fits the tag budget.
		tag := a.Tag()
		b, err := ParseTag(tag)
		if err != nil {
			t.Fatalf("ParseTag(%q) ok, but its re-encoding %q fails: %v", s, tag, err)
		}
		if !a.Equal(b) {
			t.Fatalf("ParseTag(%q) = %+v, re-encoded %q parses to %+v", s, a, tag, b)
		}
		if len(tag) > maxTagLen || b.Tag() != tag {
			t.Fatalf("canonical tag %q unstable or too long", tag)
		}
		if !a.Subnet.Addr().Is4() || a.Subnet.Masked() != a.Subnet || a.ClaimedAt <= 0 {
			t.Fatalf("ParseTag(%q) accepted %+v", s, a)
		}
	})
}
