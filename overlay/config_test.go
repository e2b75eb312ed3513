package overlay

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestDefaultConfigIsValid(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig().Validate() = %v", err)
	}
}

func TestValidateNamesTheBadField(t *testing.T) {
	tests := []struct {
		field  string
		mutate func(*Config)
	}{
		{"OverlayCIDR", func(c *Config) { c.OverlayCIDR = netip.Prefix{} }},
		{"OverlayCIDR", func(c *Config) { c.OverlayCIDR = netip.MustParsePrefix("fd00::/64") }},
		{"OverlayCIDR", func(c *Config) { c.OverlayCIDR = netip.MustParsePrefix("10.42.1.0/16") }},
		{"SubnetBits", func(c *Config) { c.SubnetBits = 8 }},
		{"SubnetBits", func(c *Config) { c.SubnetBits = 31 }},
		{"VNI", func(c *Config) { c.VNI = 0 }},
		{"VNI", func(c *Config) { c.VNI = 1 << 24 }},
		{"VXLANPort", func(c *Config) { c.VXLANPort = 0 }},
		{"VXLANPort", func(c *Config) { c.VXLANPort = 70000 }},
		{"MTU", func(c *Config) { c.MTU = 100 }},
		{"BridgeName", func(c *Config) { c.BridgeName = "" }},
		{"BridgeName", func(c *Config) { c.BridgeName = "a-name-that-is-too-long" }},
		{"BridgeName", func(c *Config) { c.BridgeName = "a/b" }},
		{"BridgeName", func(c *Config) { c.BridgeName = "vsh0" }},
		{"VXLANName", func(c *Config) { c.VXLANName = "has space" }},
		{"VXLANName", func(c *Config) { c.VXLANName = c.BridgeName }},
	}
	for _, tt := range tests {
		c := DefaultConfig()
		tt.mutate(&c)
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: Validate() accepted %+v", tt.field, c)
			continue
		}
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field+":") {
			t.Errorf("%s: Validate() = %q, want an ErrInvalidConfig naming the field", tt.field, err)
		}
	}
}

func TestValidateAcceptsOverriddenNames(t *testing.T) {
	c := DefaultConfig()
	c.BridgeName, c.VXLANName, c.MTU = "shoal-n12345678", "shoal.vx.n1", 1400
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}
