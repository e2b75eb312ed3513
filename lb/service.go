package lb

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// Load-balancing strategies, as job specs name them.
const (
	// StrategyRoundRobin cycles through the healthy endpoints (numgen inc).
	StrategyRoundRobin = "round_robin"
	// StrategyRandom picks an endpoint at random per connection.
	StrategyRandom = "random"
	// StrategySourceHash keeps a client address on one endpoint while the
	// set of endpoints does not change (jhash of ip saddr mod N).
	StrategySourceHash = "source_hash"
	// StrategyMaglev is consistent hashing of the client address: when an
	// endpoint leaves, only about its own share of clients move.
	StrategyMaglev = "maglev"

	// DefaultStrategy is used when a service names none.
	DefaultStrategy = StrategyRoundRobin
)

// Protocols a service can carry.
const (
	ProtocolTCP = "tcp"
	ProtocolUDP = "udp"
)

// Node ports are taken from this range, as in Kubernetes.
const (
	MinNodePort = 30000
	MaxNodePort = 32767
)

// Errors callers branch on.
var (
	// ErrInvalidService marks a service the package refuses; Sync skips it
	// and keeps programming the others.
	ErrInvalidService = errors.New("invalid service")
	// ErrInvalidEndpoint marks an endpoint that cannot receive traffic
	// (bad address or port); it is left out of its service.
	ErrInvalidEndpoint = errors.New("invalid endpoint")
	// ErrConflict marks a service whose VIP:port or node port is already
	// taken by another service; the first in name order keeps it.
	ErrConflict = errors.New("service conflict")
	// ErrInvalidConfig is returned for a Config that cannot be used.
	ErrInvalidConfig = errors.New("invalid lb config")
)

// Service is one load-balanced port: a virtual IP and port (and optionally a
// node port on every node) in front of a set of endpoints.
type Service struct {
	// Name is a DNS label; it gives NAME.shoal. in DNS and names the
	// service's chains. Several Services may share a Name (and VIP) with
	// different ports.
	Name string
	// VIP is the virtual IP (IPv4). The zero Addr means no VIP: only the
	// node port, if any, is programmed.
	VIP netip.Addr
	// Port is the port on the VIP.
	Port uint16
	// PortName names the port in SRV records (_PORTNAME._PROTO.NAME.shoal.);
	// empty means DefaultPortName.
	PortName string
	// Protocol is "tcp" (the default when empty) or "udp".
	Protocol string
	// NodePort, when not 0, is opened on every local address of every
	// node; it must lie in [MinNodePort, MaxNodePort].
	NodePort uint16
	// Strategy is one of the Strategy constants; empty means
	// DefaultStrategy.
	Strategy string
	// Endpoints are all known replicas; only healthy ones get traffic.
	Endpoints []Endpoint
}

// DefaultPortName is the SRV port name of a Service without a PortName.
const DefaultPortName = "http"

// Endpoint is one replica that serves a Service.
type Endpoint struct {
	// Node runs the replica; with Replica it is the endpoint's identity,
	// which consistent hashing keys on.
	Node    string
	Replica int
	// IP and Port are where the replica listens (its overlay address).
	IP   netip.Addr
	Port uint16
	// Healthy endpoints get traffic; the others are ignored.
	Healthy bool
}

// ID is the endpoint's stable identity, "node/replica". Two copies of one
// replica on different nodes (during a move) are different endpoints.
func (e Endpoint) ID() string { return e.Node + "/" + strconv.Itoa(e.Replica) }

// Key names the service port: "name/proto/port".
func (s Service) Key() string {
	return s.Name + "/" + s.proto() + "/" + strconv.Itoa(int(s.Port))
}

func (s Service) proto() string {
	if s.Protocol == "" {
		return ProtocolTCP
	}
	return s.Protocol
}

func (s Service) strategy() string {
	if s.Strategy == "" {
		return DefaultStrategy
	}
	return s.Strategy
}

func (s Service) portName() string {
	if s.PortName == "" {
		return DefaultPortName
	}
	return s.PortName
}

// validate checks everything but the endpoints.
func (s Service) validate() error {
	if !isDNSLabel(s.Name) {
		return fmt.Errorf("service %q: name must be a DNS label (a-z, 0-9, '-', at most 63): %w", s.Name, ErrInvalidService)
	}
	if s.VIP.IsValid() && !s.VIP.Is4() {
		return fmt.Errorf("service %s: VIP %s is not IPv4: %w", s.Name, s.VIP, ErrInvalidService)
	}
	if s.Port == 0 {
		return fmt.Errorf("service %s: port 0: %w", s.Name, ErrInvalidService)
	}
	if p := s.proto(); p != ProtocolTCP && p != ProtocolUDP {
		return fmt.Errorf("service %s: protocol %q (want tcp or udp): %w", s.Name, s.Protocol, ErrInvalidService)
	}
	if s.NodePort != 0 && (s.NodePort < MinNodePort || s.NodePort > MaxNodePort) {
		return fmt.Errorf("service %s: node port %d outside %d-%d: %w", s.Name, s.NodePort, MinNodePort, MaxNodePort, ErrInvalidService)
	}
	switch s.strategy() {
	case StrategyRoundRobin, StrategyRandom, StrategySourceHash, StrategyMaglev:
	default:
		return fmt.Errorf("service %s: strategy %q: %w", s.Name, s.Strategy, ErrInvalidService)
	}
	if !s.VIP.IsValid() && s.NodePort == 0 {
		return fmt.Errorf("service %s: neither a VIP nor a node port: %w", s.Name, ErrInvalidService)
	}
	return nil
}

// isDNSLabel reports whether s is a lower-case RFC 1123 label.
func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// backends returns the endpoints that get traffic, ordered by identity so
// the result does not depend on the order they were given in; duplicates of
// one identity keep the first in (ID, IP, port) order. Unhealthy endpoints
// are dropped silently; healthy but unusable ones are reported.
func (s Service) backends() ([]Endpoint, []error) {
	var out []Endpoint
	var errs []error
	for _, e := range s.Endpoints {
		if !e.Healthy {
			continue
		}
		if !e.IP.Is4() || e.Port == 0 {
			errs = append(errs, fmt.Errorf("service %s endpoint %s (%s port %d): %w", s.Key(), e.ID(), e.IP, e.Port, ErrInvalidEndpoint))
			continue
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Endpoint) int {
		return cmp.Or(cmp.Compare(a.Node, b.Node), cmp.Compare(a.Replica, b.Replica),
			a.IP.Compare(b.IP), cmp.Compare(a.Port, b.Port))
	})
	out = slices.CompactFunc(out, func(a, b Endpoint) bool { return a.ID() == b.ID() })
	return out, errs
}

// sortServices returns the services in a canonical order (name, protocol,
// port, node port), which decides who wins a conflict.
func sortServices(services []Service) []Service {
	out := slices.Clone(services)
	slices.SortStableFunc(out, func(a, b Service) int {
		return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.proto(), b.proto()),
			cmp.Compare(a.Port, b.Port), cmp.Compare(a.NodePort, b.NodePort))
	})
	return out
}

// serviceSet is the validated, conflict-free input shared by the nftables
// program, the proxy and DNS.
type serviceSet struct {
	services []Service    // canonical order, valid, no conflicts
	backends [][]Endpoint // healthy, ordered backends per service
	invalid  []error
}

// checkServices validates, orders and de-conflicts services.
func checkServices(services []Service) serviceSet {
	var set serviceSet
	vips := map[string]string{}  // vip/proto/port -> service key
	nodes := map[string]string{} // proto/nodeport -> service key
	for _, s := range sortServices(services) {
		if err := s.validate(); err != nil {
			set.invalid = append(set.invalid, err)
			continue
		}
		var vipKey, npKey string
		if s.VIP.IsValid() {
			vipKey = s.VIP.String() + "/" + s.proto() + "/" + strconv.Itoa(int(s.Port))
			if other, ok := vips[vipKey]; ok {
				set.invalid = append(set.invalid, fmt.Errorf("service %s: %s already used by %s: %w", s.Key(), vipKey, other, ErrConflict))
				continue
			}
		}
		if s.NodePort != 0 {
			npKey = s.proto() + "/" + strconv.Itoa(int(s.NodePort))
			if other, ok := nodes[npKey]; ok {
				set.invalid = append(set.invalid, fmt.Errorf("service %s: node port %s already used by %s: %w", s.Key(), npKey, other, ErrConflict))
				continue
			}
		}
		if vipKey != "" {
			vips[vipKey] = s.Key()
		}
		if npKey != "" {
			nodes[npKey] = s.Key()
		}
		b, errs := s.backends()
		set.invalid = append(set.invalid, errs...)
		set.services = append(set.services, s)
		set.backends = append(set.backends, b)
	}
	return set
}
