package lb

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Defaults of Config.
const (
	// DefaultTable is the nftables table (family ip) the package owns. Give
	// each agent its own ("shoal-<suffix>") when several share a network
	// namespace.
	DefaultTable = "shoal"
	// DefaultMasqueradeMark is the packet-mark bit that asks nat-postrouting
	// to masquerade. It must not collide with marks other software uses for
	// policy routing on the node; kube-proxy uses 0x4000 and 0x8000.
	DefaultMasqueradeMark uint32 = 0x2000
)

var (
	// DefaultServiceCIDR is where VIPs live.
	DefaultServiceCIDR = netip.MustParsePrefix("10.43.0.0/16")
	// DefaultOverlayCIDR is the container network; VIP traffic from
	// outside it is masqueraded so replies come back through this node.
	DefaultOverlayCIDR = netip.MustParsePrefix("10.42.0.0/16")
)

// Config says how this node programs its load-balancing table.
type Config struct {
	// Table is the nftables table name; default DefaultTable.
	Table string
	// NodeIPs are the addresses node ports answer on. Empty means every
	// local address except loopback (fib daddr type local), which follows
	// address changes without a re-sync.
	NodeIPs []netip.Addr
	// ServiceCIDR holds the VIPs; default DefaultServiceCIDR. Traffic to it
	// that no service DNATs is rejected.
	ServiceCIDR netip.Prefix
	// OverlayCIDR is the container network; default DefaultOverlayCIDR.
	OverlayCIDR netip.Prefix
	// NetNS, if set, is the path of a network namespace (such as
	// /run/netns/NAME) to program instead of the caller's.
	NetNS string
	// MasqueradeMark is one bit of the packet mark; default
	// DefaultMasqueradeMark.
	MasqueradeMark uint32
	// MaglevTableSize is the bucket count of maglev services, a prime;
	// default DefaultMaglevTableSize.
	MaglevTableSize int
	// HashSeed seeds jhash; default DefaultHashSeed. All nodes must agree.
	HashSeed uint32
}

// DefaultConfig returns a Config with every default filled in.
func DefaultConfig() Config {
	return Config{
		Table:           DefaultTable,
		ServiceCIDR:     DefaultServiceCIDR,
		OverlayCIDR:     DefaultOverlayCIDR,
		MasqueradeMark:  DefaultMasqueradeMark,
		MaglevTableSize: DefaultMaglevTableSize,
		HashSeed:        DefaultHashSeed,
	}
}

// withDefaults fills zero fields and validates the result.
func (c Config) withDefaults() (Config, error) {
	d := DefaultConfig()
	if c.Table == "" {
		c.Table = d.Table
	}
	if !c.ServiceCIDR.IsValid() {
		c.ServiceCIDR = d.ServiceCIDR
	}
	if !c.OverlayCIDR.IsValid() {
		c.OverlayCIDR = d.OverlayCIDR
	}
	if c.MasqueradeMark == 0 {
		c.MasqueradeMark = d.MasqueradeMark
	}
	if c.MaglevTableSize == 0 {
		c.MaglevTableSize = d.MaglevTableSize
	}
	if c.HashSeed == 0 {
		c.HashSeed = d.HashSeed
	}
	if len(c.Table) > 64 || strings.IndexFunc(c.Table, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) >= 0 {
		return c, fmt.Errorf("table name %q (want at most 64 of [A-Za-z0-9_-]): %w", c.Table, ErrInvalidConfig)
	}
	if !c.ServiceCIDR.Addr().Is4() || !c.OverlayCIDR.Addr().Is4() {
		return c, fmt.Errorf("service CIDR %s and overlay CIDR %s must be IPv4: %w", c.ServiceCIDR, c.OverlayCIDR, ErrInvalidConfig)
	}
	c.ServiceCIDR, c.OverlayCIDR = c.ServiceCIDR.Masked(), c.OverlayCIDR.Masked()
	for _, ip := range c.NodeIPs {
		if !ip.Is4() {
			return c, fmt.Errorf("node IP %s is not IPv4: %w", ip, ErrInvalidConfig)
		}
	}
	if c.MasqueradeMark&(c.MasqueradeMark-1) != 0 {
		return c, fmt.Errorf("masquerade mark %#x must be a single bit: %w", c.MasqueradeMark, ErrInvalidConfig)
	}
	if !isPrime(c.MaglevTableSize) {
		return c, fmt.Errorf("maglev table size %d is not prime: %w", c.MaglevTableSize, ErrInvalidConfig)
	}
	return c, nil
}

// Names of the fixed objects in the table.
const (
	chainNATPrerouting    = "nat-prerouting"
	chainNATOutput        = "nat-output"
	chainNATPostrouting   = "nat-postrouting"
	chainFilterPrerouting = "filter-prerouting"
	chainFilterInput      = "filter-input"
	chainFilterForward    = "filter-forward"
	chainFilterOutput     = "filter-output"
	chainServices         = "services"
	chainReject           = "reject"

	chainNodePorts = "nodeports"

	setServiceIPs      = "service-ips"
	setServiceNodePort = "service-nodeports"
	setNodePortKeys    = "nodeport-keys"
	setNodePortIPs     = "nodeport-ips"
	setNoEndpointPorts = "no-endpoint-nodeports"
)

// Chain priorities: the hairpin check runs right after DNAT has rewritten
// the destination and before the routing decision.
const (
	prioDNAT    = -100
	prioHairpin = prioDNAT + 10
	prioFilter  = 0
	prioSNAT    = 100
)

// Key and data types.
var (
	typeVIPKey   = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	typePortKey  = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	typeBackend  = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	typeBucket   = nftables.TypeInteger
	typeIPv4Addr = nftables.TypeIPAddr
)

// Ruleset is the complete desired content of the load-balancing table,
// computed by Program without touching the kernel. Table.Sync applies it.
type Ruleset struct {
	table    string
	chains   []*chainSpec
	sets     []*setSpec // named sets, in the order they are added
	rules    []*ruleSpec
	services []ServiceStat
	invalid  []error
	nextID   uint32
}

// ServiceStat summarises how one service was programmed.
type ServiceStat struct {
	// Key is "name/proto/port".
	Key string
	// Strategy is the strategy in force.
	Strategy string
	// Endpoints is the number of healthy endpoints receiving traffic; 0
	// means the service's traffic is rejected.
	Endpoints int
}

// chainSpec is a chain; base chains have a Type and Hook.
type chainSpec struct {
	name     string
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	priority int32
}

// setSpec is a set or map. Every set in a batch, named or anonymous, gets an
// ID unique in the batch: rules refer to sets added in the same batch by it.
type setSpec struct {
	name      string
	id        uint32
	anonymous bool
	isMap     bool
	concat    bool
	key       nftables.SetDatatype
	data      nftables.SetDatatype
	elements  []elemSpec
}

// elemSpec is one element: a key and, in maps, a value or a verdict. Its
// text form is rendered from the bytes when asked for, not built for every
// one of the up to a million elements of a sync.
type elemSpec struct {
	key     []byte
	val     []byte
	verdict *expr.Verdict
}

// ruleSpec is a rule and the anonymous map it uses, if any.
type ruleSpec struct {
	chain string
	text  string
	exprs []expr.Any
	anon  *setSpec
}

// Program computes the whole desired table for services under cfg. It is
// pure: no kernel access, no clock, no randomness. Services that are
// invalid or conflict with an earlier one (in name order) are left out and
// reported by Invalid; the error is only for an unusable cfg.
func Program(cfg Config, services []Service) (*Ruleset, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	rs := &Ruleset{table: cfg.Table}
	svcIPs := rs.addSet(&setSpec{name: setServiceIPs, isMap: true, concat: true, key: typeVIPKey, data: nftables.TypeVerdict})
	svcPorts := rs.addSet(&setSpec{name: setServiceNodePort, isMap: true, concat: true, key: typePortKey, data: nftables.TypeVerdict})
	portKeys := rs.addSet(&setSpec{name: setNodePortKeys, concat: true, key: typePortKey})
	noEndpoints := rs.addSet(&setSpec{name: setNoEndpointPorts, concat: true, key: typePortKey})
	var nodeIPs *setSpec
	if len(cfg.NodeIPs) > 0 {
		nodeIPs = rs.addSet(&setSpec{name: setNodePortIPs, key: typeIPv4Addr})
		for _, ip := range cfg.NodeIPs {
			nodeIPs.elements = append(nodeIPs.elements, elemSpec{key: ip.AsSlice()})
		}
	}

	// Base chains and the fixed rules.
	base := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio int32) {
		rs.chains = append(rs.chains, &chainSpec{name: name, typ: typ, hook: hook, priority: prio})
	}
	base(chainNATPrerouting, nftables.ChainTypeNAT, nftables.ChainHookPrerouting, prioDNAT)
	base(chainNATOutput, nftables.ChainTypeNAT, nftables.ChainHookOutput, prioDNAT)
	base(chainNATPostrouting, nftables.ChainTypeNAT, nftables.ChainHookPostrouting, prioSNAT)
	base(chainFilterPrerouting, nftables.ChainTypeFilter, nftables.ChainHookPrerouting, prioHairpin)
	base(chainFilterInput, nftables.ChainTypeFilter, nftables.ChainHookInput, prioFilter)
	base(chainFilterForward, nftables.ChainTypeFilter, nftables.ChainHookForward, prioFilter)
	base(chainFilterOutput, nftables.ChainTypeFilter, nftables.ChainHookOutput, prioFilter)
	rs.chains = append(rs.chains, &chainSpec{name: chainServices}, &chainSpec{name: chainNodePorts}, &chainSpec{name: chainReject})

	mark := cfg.MasqueradeMark
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	localDst := seq(fibDaddrLocal(), ipAddrIn("daddr", loopback, true))
	if nodeIPs != nil {
		localDst = daddrInSet(nodeIPs)
	}

	rs.rule(chainNATPrerouting, verdict(expr.VerdictJump, chainServices))
	rs.rule(chainNATOutput, verdict(expr.VerdictJump, chainServices))
	// VIP traffic from outside the overlay (a host routing the service
	// range to this node, or the node itself) may be answered by a backend
	// on another node that would reply directly: masquerade it.
	rs.rule(chainServices, seq(ipAddrIn("daddr", cfg.ServiceCIDR, false), ipAddrIn("saddr", cfg.OverlayCIDR, true), setMark(mark)))
	rs.rule(chainServices, vipKeyVmap(svcIPs))
	rs.rule(chainServices, seq(localDst, verdict(expr.VerdictJump, chainNodePorts)))
	// Node-port clients may be anywhere and backends on any node: always
	// masquerade, as kube-proxy's Cluster policy does. Only ports that are
	// node ports get the mark; other local traffic must not be
	// masqueraded.
	rs.rule(chainNodePorts, seq(protoPortInSet(portKeys), setMark(mark)))
	rs.rule(chainNodePorts, protoPortVmap(svcPorts))
	rs.rule(chainFilterPrerouting, seq(ctStateIsNew(), ctStatusDNAT(), ctOriginalDaddrIn(cfg.ServiceCIDR), fibDaddrViaIif(), setMark(mark)))
	rs.rule(chainNATPostrouting, seq(markUnset(mark), verdict(expr.VerdictReturn, "")))
	rs.rule(chainNATPostrouting, clearMark(mark))
	rs.rule(chainNATPostrouting, masquerade())
	rs.rule(chainFilterInput, seq(localDst, protoPortInSet(noEndpoints), verdict(expr.VerdictGoto, chainReject)))
	rs.rule(chainFilterForward, seq(ipAddrIn("daddr", cfg.ServiceCIDR, false), verdict(expr.VerdictGoto, chainReject)))
	rs.rule(chainFilterOutput, seq(ipAddrIn("daddr", cfg.ServiceCIDR, false), verdict(expr.VerdictGoto, chainReject)))
	rs.rule(chainReject, seq(l4proto(ProtocolTCP), rejectTCPReset()))
	rs.rule(chainReject, rejectPortUnreachable())

	set := checkServices(services)
	rs.invalid = set.invalid
	for i, s := range set.services {
		backends := set.backends[i]
		if s.VIP.IsValid() && !cfg.ServiceCIDR.Contains(s.VIP) {
			rs.invalid = append(rs.invalid, fmt.Errorf("service %s: VIP %s outside the service CIDR %s: %w", s.Key(), s.VIP, cfg.ServiceCIDR, ErrInvalidService))
			continue
		}
		dnat, err := rs.dnatStmt(cfg, s, backends)
		if err != nil {
			rs.invalid = append(rs.invalid, err)
			continue
		}
		rs.services = append(rs.services, ServiceStat{Key: s.Key(), Strategy: s.strategy(), Endpoints: len(backends)})
		proto, port := s.proto(), s.Port
		if len(backends) == 0 {
			// The VIP needs nothing: filter-forward/output reject the whole
			// service CIDR after DNAT. Node ports are local addresses, so
			// they are rejected on input.
			if s.NodePort != 0 {
				noEndpoints.elements = append(noEndpoints.elements, elemSpec{key: portKey(proto, s.NodePort)})
			}
			continue
		}
		svcChain := chainName(s)
		rs.chains = append(rs.chains, &chainSpec{name: svcChain})
		rs.ruleWith(svcChain, dnat)
		if s.VIP.IsValid() {
			svcIPs.elements = append(svcIPs.elements, elemSpec{
				key:     vipKey(s.VIP, proto, port),
				verdict: &expr.Verdict{Kind: expr.VerdictGoto, Chain: svcChain},
			})
		}
		if s.NodePort != 0 {
			svcPorts.elements = append(svcPorts.elements, elemSpec{
				key:     portKey(proto, s.NodePort),
				verdict: &expr.Verdict{Kind: expr.VerdictGoto, Chain: svcChain},
			})
			portKeys.elements = append(portKeys.elements, elemSpec{key: portKey(proto, s.NodePort)})
		}
	}
	return rs, nil
}

// dnatRule is a DNAT statement and the anonymous map it needs.
type dnatRule struct {
	stmt
	anon *setSpec
}

// dnatStmt chooses the backend according to the service's strategy.
func (rs *Ruleset) dnatStmt(cfg Config, s Service, backends []Endpoint) (dnatRule, error) {
	n := uint32(len(backends))
	switch {
	case n == 0:
		return dnatRule{}, nil
	case n == 1:
		// Every strategy sends everything to the only backend.
		return dnatRule{stmt: dnatTo(backends[0].IP, backends[0].Port)}, nil
	}
	var sel selector
	var owners []int // owners[bucket] = backend index
	switch s.strategy() {
	case StrategyRoundRobin:
		sel = numgen(unix.NFT_NG_INCREMENTAL, n)
	case StrategyRandom:
		sel = numgen(unix.NFT_NG_RANDOM, n)
	case StrategySourceHash:
		sel = jhashSaddr(n, cfg.HashSeed)
	case StrategyMaglev:
		ids := make([]string, n)
		for i, b := range backends {
			ids[i] = b.ID()
		}
		table, err := Maglev(ids, cfg.MaglevTableSize)
		if err != nil {
			return dnatRule{}, fmt.Errorf("service %s: %w", s.Key(), err)
		}
		owners = table
		sel = jhashSaddr(uint32(len(table)), cfg.HashSeed)
	}
	if owners == nil {
		owners = make([]int, n)
		for i := range owners {
			owners[i] = i
		}
	}
	m := &setSpec{name: "__map%d", anonymous: true, isMap: true, key: typeBucket, data: typeBackend}
	m.id = rs.newID()
	for bucket, owner := range owners {
		b := backends[owner]
		m.elements = append(m.elements, elemSpec{key: hostU32(uint32(bucket)), val: backendVal(b.IP, b.Port)})
	}
	return dnatRule{stmt: dnatMap(sel, m), anon: m}, nil
}

func (rs *Ruleset) newID() uint32 {
	rs.nextID++
	return rs.nextID
}

func (rs *Ruleset) addSet(s *setSpec) *setSpec {
	s.id = rs.newID()
	rs.sets = append(rs.sets, s)
	return s
}

func (rs *Ruleset) rule(chain string, s stmt) {
	rs.rules = append(rs.rules, &ruleSpec{chain: chain, text: s.text, exprs: s.exprs})
}

func (rs *Ruleset) ruleWith(chain string, d dnatRule) {
	rs.rules = append(rs.rules, &ruleSpec{chain: chain, text: d.text, exprs: d.exprs, anon: d.anon})
}

// chainName is "svc-NAME-PROTO-PORT". Names are DNS labels, so the result
// is unique and needs no escaping.
func chainName(s Service) string {
	return "svc-" + s.Name + "-" + s.proto() + "-" + strconv.Itoa(int(s.Port))
}

// vipKey is the service-ips key: address, protocol and port, each padded to
// four bytes as concatenations are.
func vipKey(ip netip.Addr, proto string, port uint16) []byte {
	k := make([]byte, 12)
	copy(k, ip.AsSlice())
	k[4] = protoNum(proto)
	binary.BigEndian.PutUint16(k[8:], port)
	return k
}

// portKey is "l4proto . port", padded.
func portKey(proto string, port uint16) []byte {
	k := make([]byte, 8)
	k[0] = protoNum(proto)
	binary.BigEndian.PutUint16(k[4:], port)
	return k
}

// backendVal is "ip . port" as DNAT reads it from two registers.
func backendVal(ip netip.Addr, port uint16) []byte {
	v := make([]byte, 8)
	copy(v, ip.AsSlice())
	copy(v[4:], binaryutil.BigEndian.PutUint16(port))
	return v
}

// Invalid lists the services and endpoints left out, each wrapping
// ErrInvalidService, ErrInvalidEndpoint, ErrConflict or ErrMaglevSize.
func (rs *Ruleset) Invalid() []error { return rs.invalid }

// Services summarises the programmed services in canonical order.
func (rs *Ruleset) Services() []ServiceStat { return rs.services }

// Counts returns the number of chains, rules, named sets and set elements
// (anonymous maps included).
func (rs *Ruleset) Counts() (chains, rules, sets, elements int) {
	for _, s := range rs.sets {
		elements += len(s.elements)
	}
	for _, r := range rs.rules {
		if r.anon != nil {
			elements += len(r.anon.elements)
		}
	}
	return len(rs.chains), len(rs.rules), len(rs.sets), elements
}

// chainRules returns the text of the rules of one chain, in order.
func (rs *Ruleset) chainRules(chain string) []string {
	var out []string
	for _, r := range rs.rules {
		if r.chain == chain {
			out = append(out, r.String())
		}
	}
	return out
}

// String renders the rule as nft would, with its anonymous map inline.
func (r *ruleSpec) String() string {
	if r.anon == nil {
		return r.text
	}
	return r.text + " map " + r.anon.elementsText()
}

func (s *setSpec) elementsText() string {
	parts := make([]string, len(s.elements))
	for i, e := range s.elements {
		parts[i] = s.elementText(e)
	}
	return "{ " + strings.Join(parts, ", ") + " }"
}

// elementText is "KEY", "KEY : VALUE" or "KEY : goto CHAIN".
func (s *setSpec) elementText(e elemSpec) string {
	t := renderData(s.key, e.key)
	switch {
	case e.verdict != nil:
		t += " : " + verdict(e.verdict.Kind, e.verdict.Chain).text
	case s.isMap:
		t += " : " + renderData(s.data, e.val)
	}
	return t
}

// renderData prints a key or value of type t, field by field; the fields
// of a concatenation are padded to 4 bytes.
func renderData(t nftables.SetDatatype, b []byte) string {
	fields := nftables.ConcatSetTypeElements(t)
	parts := make([]string, 0, len(fields))
	for _, f := range fields {
		n := int(f.Bytes)
		if len(fields) > 1 {
			n = (n + 3) &^ 3
		}
		if len(b) < int(f.Bytes) {
			return fmt.Sprintf("%x", b)
		}
		v := b[:f.Bytes]
		switch f.Name {
		case nftables.TypeIPAddr.Name:
			a, _ := netip.AddrFromSlice(v)
			parts = append(parts, a.String())
		case nftables.TypeInetProto.Name:
			switch v[0] {
			case unix.IPPROTO_TCP:
				parts = append(parts, ProtocolTCP)
			case unix.IPPROTO_UDP:
				parts = append(parts, ProtocolUDP)
			default:
				parts = append(parts, strconv.Itoa(int(v[0])))
			}
		case nftables.TypeInetService.Name:
			parts = append(parts, strconv.Itoa(int(binary.BigEndian.Uint16(v))))
		case nftables.TypeInteger.Name:
			parts = append(parts, strconv.FormatUint(uint64(binaryutil.NativeEndian.Uint32(v)), 10))
		default:
			parts = append(parts, fmt.Sprintf("%x", v))
		}
		b = b[min(n, len(b)):]
	}
	return strings.Join(parts, " . ")
}

func (s *setSpec) typeText() string {
	if s.isMap {
		data := s.data.Name
		return "type " + s.key.Name + " : " + data
	}
	return "type " + s.key.Name
}

// String renders the ruleset roughly as "nft list table" would, for logs
// and debugging.
func (rs *Ruleset) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table ip %s {\n", rs.table)
	for _, s := range rs.sets {
		kind := "set"
		if s.isMap {
			kind = "map"
		}
		fmt.Fprintf(&b, "\t%s %s {\n\t\t%s\n", kind, s.name, s.typeText())
		if len(s.elements) > 0 {
			fmt.Fprintf(&b, "\t\telements = %s\n", s.elementsText())
		}
		b.WriteString("\t}\n")
	}
	for _, c := range rs.chains {
		fmt.Fprintf(&b, "\tchain %s {\n", c.name)
		if c.hook != nil {
			fmt.Fprintf(&b, "\t\ttype %s hook %s priority %d\n", c.typ, hookName(*c.hook), c.priority)
		}
		for _, r := range rs.chainRules(c.name) {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func hookName(h nftables.ChainHook) string {
	switch h {
	case *nftables.ChainHookPrerouting:
		return "prerouting"
	case *nftables.ChainHookInput:
		return "input"
	case *nftables.ChainHookForward:
		return "forward"
	case *nftables.ChainHookOutput:
		return "output"
	case *nftables.ChainHookPostrouting:
		return "postrouting"
	}
	return strconv.Itoa(int(h))
}
