package overlay

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Defaults of Config.
const (
	DefaultSubnetBits = 24
	DefaultVNI        = 42
	DefaultVXLANPort  = 4789
	DefaultBridgeName = "shoal0"
	DefaultVXLANName  = "shoal.vx"
)

// DefaultOverlayCIDR is the address range all node subnets are cut from.
var DefaultOverlayCIDR = netip.MustParsePrefix("10.42.0.0/16")

// vxlanOverhead is what VXLAN over IPv4 adds to every frame: outer IPv4 (20)
// + UDP (8) + VXLAN (8) + inner Ethernet (14).
const vxlanOverhead = 50

// maxIfNameLen is IFNAMSIZ-1: the kernel rejects longer interface names.
const maxIfNameLen = 15

// ErrInvalidConfig is wrapped by every error Validate returns.
var ErrInvalidConfig = errors.New("invalid overlay config")

// Config configures one node's overlay. Build one with DefaultConfig and
// override fields; New validates it.
type Config struct {
	// OverlayCIDR is the range shared by the whole cluster; every node
	// claims one SubnetBits-sized subnet of it. All nodes must agree on it,
	// on SubnetBits, VNI and VXLANPort.
	OverlayCIDR netip.Prefix
	// SubnetBits is the prefix length of a node subnet. /24 gives 256
	// subnets of 253 containers in the default /16; a longer prefix gives
	// more, smaller nodes. At most 30 (network, gateway, one container,
	// broadcast).
	SubnetBits int
	// VNI is the VXLAN network identifier (24 bits).
	VNI int
	// VXLANPort is the UDP port VXLAN packets are sent to and received on.
	// 4789 is IANA's; Linux's own default is 8472 (what flannel uses).
	VXLANPort int
	// MTU of the bridge, the VXLAN device and the container veths. 0 means
	// the MTU of the link holding the underlay address minus the 50 bytes
	// of VXLAN encapsulation, which is what avoids fragmentation.
	MTU int
	// BridgeName and VXLANName name the devices this node creates. Override
	// them (and the port) when several agents share one network namespace.
	// At most 15 characters.
	BridgeName string
	VXLANName  string
	// StateDir holds the address allocations (IPAM) so a restarted agent
	// gives its containers the same addresses. Empty keeps them in memory
	// only.
	StateDir string
	// NetNS, if set, is the path of the network namespace to build the
	// overlay in (e.g. /run/netns/node1) instead of the caller's own. Tests
	// and the dev cluster use it to run several nodes on one machine.
	NetNS string
}

// DefaultConfig returns the settings every node of a default cluster uses.
func DefaultConfig() Config {
	return Config{
		OverlayCIDR: DefaultOverlayCIDR,
		SubnetBits:  DefaultSubnetBits,
		VNI:         DefaultVNI,
		VXLANPort:   DefaultVXLANPort,
		BridgeName:  DefaultBridgeName,
		VXLANName:   DefaultVXLANName,
	}
}

// Validate reports the first field that is unusable, by name.
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
	}
	if !c.OverlayCIDR.IsValid() || !c.OverlayCIDR.Addr().Is4() {
		return bad("OverlayCIDR", "%q is not an IPv4 prefix", c.OverlayCIDR)
	}
	if c.OverlayCIDR.Masked() != c.OverlayCIDR {
		return bad("OverlayCIDR", "%s has host bits set (did you mean %s?)", c.OverlayCIDR, c.OverlayCIDR.Masked())
	}
	if c.SubnetBits < c.OverlayCIDR.Bits() || c.SubnetBits > 30 {
		return bad("SubnetBits", "%d is outside [%d, 30]", c.SubnetBits, c.OverlayCIDR.Bits())
	}
	if c.VNI < 1 || c.VNI > 1<<24-1 {
		return bad("VNI", "%d is outside [1, %d]", c.VNI, 1<<24-1)
	}
	if c.VXLANPort < 1 || c.VXLANPort > 65535 {
		return bad("VXLANPort", "%d is not a port", c.VXLANPort)
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535-vxlanOverhead) {
		return bad("MTU", "%d is outside [576, %d] (0 derives it from the underlay)", c.MTU, 65535-vxlanOverhead)
	}
	if err := validDeviceName(c.BridgeName); err != nil {
		return bad("BridgeName", "%v", err)
	}
	if err := validDeviceName(c.VXLANName); err != nil {
		return bad("VXLANName", "%v", err)
	}
	if c.BridgeName == c.VXLANName {
		return bad("VXLANName", "%q is also the bridge name", c.VXLANName)
	}
	return nil
}

// validDeviceName checks a name for the bridge or the VXLAN device.
func validDeviceName(name string) error {
	if err := validIfName(name); err != nil {
		return err
	}
	if strings.HasPrefix(name, vethPrefix) {
		// Container veths are named vethPrefix + hash; keep the device
		// names out of that space.
		return fmt.Errorf("%q starts with %q, which is kept for container veths", name, vethPrefix)
	}
	return nil
}

// validIfName applies the kernel's rules for interface names
// (dev_valid_name).
func validIfName(name string) error {
	switch {
	case name == "":
		return errors.New("empty")
	case len(name) > maxIfNameLen:
		return fmt.Errorf("%q is longer than %d characters", name, maxIfNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%q is not a valid interface name", name)
	case strings.ContainsAny(name, "/: \t\n\r\v\f"):
		return fmt.Errorf("%q contains '/', ':' or white space", name)
	}
	return nil
}
