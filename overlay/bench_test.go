package overlay

// TestMeasureOverlay measures container-to-container TCP across two nodes
// three ways, in one run:
//
//	overlay   - this package: veth -> bridge -> vxlan, across the lab underlay
//	handmade  - the same layout built by hand with the ip and bridge
//	            commands: what the kernel itself costs
//	underlay  - node to node over the underlay veths, no encapsulation
//
// then repeats the run with data-path knobs changed (GRO on the veths,
// jumbo underlay MTU, ...) to see what closes the gap. It is a measurement,
// not a test: nothing is asserted about time. Reproduce (root):
//
//	SHOAL_MEASURE=1 go test ./overlay -count=1 -v -run TestMeasureOverlay -timeout 30m
//
// Knobs: SHOAL_MEASURE_MIB (bulk transfer size, default 512),
// SHOAL_MEASURE_ROUNDS (default 3), SHOAL_MEASURE_PINGS (default 5000),
// SHOAL_MEASURE_VARIANTS (comma-separated variant names, default all).
// The variants need ethtool.

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

const benchPrefix = "shoal-ovb-"

// measurePath is one way from a client namespace to a server address.
type measurePath struct {
	name     string
	src, dst string // namespace paths
	addr     netip.Addr
}

type result struct {
	gbps     []float64
	p50, p99 []time.Duration
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func TestMeasureOverlay(t *testing.T) {
	if os.Getenv("SHOAL_MEASURE") != "1" {
		t.Skip("a measurement: set SHOAL_MEASURE=1")
	}
	requireRoot(t)
	bulk := int64(envInt("SHOAL_MEASURE_MIB", 512)) << 20
	rounds := envInt("SHOAL_MEASURE_ROUNDS", 3)
	pings := envInt("SHOAL_MEASURE_PINGS", 5000)

	b := newBenchLab(t)
	// Each variant changes one thing from the defaults and undoes it
	// afterwards.
	variants := []struct {
		name        string
		doc         string
		apply, undo func()
		optIn       bool // only when named in SHOAL_MEASURE_VARIANTS
	}{
		{"defaults", "underlay MTU 1500 (overlay 1450), kernel default offloads; this package's node has its masquerade table, the handmade one none",
			func() {}, func() {}, false},
		{"handmade-masq", "the handmade nodes get the same masquerade table as this package's (so conntrack runs on both)",
			func() { b.handmadeMasquerade(true) }, func() { b.handmadeMasquerade(false) }, false},
		{"notrack-vxlan", "this package's nodes skip conntrack for the outer VXLAN packets (udp dport 4789 notrack in a raw-priority chain)",
			func() { b.notrackVXLAN(true) }, func() { b.notrackVXLAN(false) }, false},
		{"gro", "GRO on every veth (underlay and container ends; on a veth it also turns on NAPI)",
			func() { b.setGRO(true) }, func() { b.setGRO(false) }, false},
		{"jumbo", "underlay MTU 9000 (overlay 8950)",
			func() { b.setMTU(9000) }, func() { b.setMTU(1500) }, false},
		{"bigtcp", "BIG TCP: gso/gro_ipv4_max_size 185000 on every device (GSO packets up to 185 kB instead of 64 kB)",
			func() { b.setBigTCP(185000) }, func() { b.setBigTCP(65536) }, true},
	}
	want := os.Getenv("SHOAL_MEASURE_VARIANTS")
	for _, v := range variants {
		named := slices.Contains(strings.Split(want, ","), v.name)
		if want != "" && !named || v.optIn && !named {
			continue
		}
		v.apply()
		res := map[string]*result{}
		for r := range rounds {
			for _, p := range b.paths {
				if res[p.name] == nil {
					res[p.name] = &result{}
				}
				g, err := measureThroughput(t, p, bulk)
				if err != nil {
					// Recorded as 0 rather than fatal: a knob that
					// breaks a path is a result too.
					t.Logf("round %d %s %s: bulk transfer failed: %v", r+1, v.name, p.name, err)
				}
				p50, p99 := measureLatency(t, p, pings)
				res[p.name].gbps = append(res[p.name].gbps, g)
				res[p.name].p50 = append(res[p.name].p50, p50)
				res[p.name].p99 = append(res[p.name].p99, p99)
				t.Logf("round %d %-8s %-8s %6.2f Gbit/s  p50 %v  p99 %v", r+1, v.name, p.name, g, p50, p99)
			}
		}
		report(t, v.name, v.doc, b.paths, res, bulk, pings, rounds)
		v.undo()
	}
}

// report prints one markdown table per variant: median and range over the
// rounds, and the two ratios.
func report(t *testing.T, name, doc string, paths []measurePath, res map[string]*result, bulk int64, pings, rounds int) {
	var s strings.Builder
	fmt.Fprintf(&s, "\n### %s: %s\n\n%d MiB bulk, %d ping-pongs, %d rounds; median (min-max)\n\n", name, doc, bulk>>20, pings, rounds)
	s.WriteString("| path | throughput Gbit/s | RTT p50 µs | RTT p99 µs |\n|---|---|---|---|\n")
	med := map[string][3]float64{}
	for _, p := range paths {
		r := res[p.name]
		g := stats(r.gbps)
		p50 := stats(durs(r.p50))
		p99 := stats(durs(r.p99))
		med[p.name] = [3]float64{g[1], p50[1], p99[1]}
		fmt.Fprintf(&s, "| %s | %.2f (%.2f-%.2f) | %.0f (%.0f-%.0f) | %.0f (%.0f-%.0f) |\n", p.name, g[1], g[0], g[2], p50[1], p50[0], p50[2], p99[1], p99[0], p99[2])
	}
	o, h, u := med["overlay"], med["handmade"], med["underlay"]
	fmt.Fprintf(&s, "\nratios of medians: overlay/handmade throughput %.2f, p50 %.2f; handmade/underlay throughput %.2f, p50 %.2f\n",
		o[0]/h[0], o[1]/h[1], h[0]/u[0], h[1]/u[1])
	t.Log(s.String())
}

func durs(d []time.Duration) []float64 {
	out := make([]float64, len(d))
	for i, v := range d {
		out[i] = float64(v) / float64(time.Microsecond)
	}
	return out
}

// stats returns min, median, max.
func stats(v []float64) [3]float64 {
	s := slices.Clone(v)
	sort.Float64s(s)
	return [3]float64{s[0], s[len(s)/2], s[len(s)-1]}
}

// measureThroughput sends size bytes from p.src to p.addr and returns
// Gbit/s, timed from the first write to the receiver reading EOF.
func measureThroughput(t *testing.T, p measurePath, size int64) (float64, error) {
	t.Helper()
	ln := listenIn(t, p.dst, netip.AddrPortFrom(p.addr, 0).String())
	defer ln.Close()
	type got struct {
		n   int64
		end time.Time
		err error
	}
	done := make(chan got, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- got{err: err}
			return
		}
		defer c.Close()
		n, err := io.CopyBuffer(io.Discard, c, make([]byte, 256<<10))
		done <- got{n, time.Now(), err}
	}()
	c, err := dialIn(p.src, ln.Addr().String(), 5*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Minute))
	buf := make([]byte, 256<<10)
	start := time.Now()
	for sent := int64(0); sent < size; {
		n := int64(len(buf))
		if size-sent < n {
			n = size - sent
		}
		w, err := c.Write(buf[:n])
		if err != nil {
			return 0, fmt.Errorf("sent %d of %d bytes: %w", sent, size, err)
		}
		sent += int64(w)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	r := <-done
	if r.err != nil || r.n != size {
		return 0, fmt.Errorf("received %d of %d bytes: %v", r.n, size, r.err)
	}
	return float64(size*8) / r.end.Sub(start).Seconds() / 1e9, nil
}

// measureLatency bounces one byte n times (after a warm-up) and returns
// the median and 99th percentile round trip.
func measureLatency(t *testing.T, p measurePath, n int) (p50, p99 time.Duration) {
	t.Helper()
	ln := listenIn(t, p.dst, netip.AddrPortFrom(p.addr, 0).String())
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b := make([]byte, 1)
		for {
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			if _, err := c.Write(b); err != nil {
				return
			}
		}
	}()
	c, err := dialIn(p.src, ln.Addr().String(), 5*time.Second)
	must(t, err)
	defer c.Close()
	b := []byte{1}
	rtts := make([]time.Duration, 0, n)
	for i := range n + 200 {
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		if i >= 200 {
			rtts = append(rtts, time.Since(start))
		}
	}
	slices.Sort(rtts)
	return rtts[len(rtts)/2], rtts[len(rtts)*99/100]
}

// benchLab holds the three setups on one underlay.
type benchLab struct {
	t        *testing.T
	l        *lab
	overlay  []*testNode
	oc       []*container
	nodeNS   []string // every node namespace (short names), for MTU and GRO
	ctrNS    []string // every container namespace
	handmade [2]handmadeNode
	paths    []measurePath
}

type handmadeNode struct {
	short, ctr string // namespace short names
	underlay   netip.Addr
	subnet     netip.Prefix
	mac        string
}

func newBenchLab(t *testing.T) *benchLab {
	l := newLab(t, benchPrefix)
	b := &benchLab{t: t, l: l}

	// (a) this package.
	var claims []Claim
	for i, short := range []string{"oa", "ob"} {
		n := &testNode{name: short, underlay: netip.AddrFrom4([4]byte{10, 97, 0, byte(1 + i)})}
		n.path = l.addNode(short, n.underlay, 1500)
		n.m = newTestManager(t, n.path, nil)
		n.h = handleAt(t, n.path)
		c, err := NextClaim(Claim{Node: short}, claims, DefaultOverlayCIDR, DefaultSubnetBits, int64(i+1))
		must(t, err)
		claims = append(claims, c)
		must(t, n.m.Setup(ctxT(t), c.Subnet, n.underlay))
		b.overlay = append(b.overlay, n)
		b.nodeNS = append(b.nodeNS, short)
	}
	for _, n := range b.overlay {
		must(t, n.m.SyncPeers(peersOf(b.overlay, n)))
		c := attachContainer(t, l, n, "c"+n.name)
		b.oc = append(b.oc, c)
		b.ctrNS = append(b.ctrNS, "c"+n.name)
	}

	// (b) the same layout by hand.
	b.handmade = [2]handmadeNode{
		{short: "ha", ctr: "cha", underlay: netip.MustParseAddr("10.97.0.11"), subnet: netip.MustParsePrefix("10.44.1.0/24"), mac: "02:44:00:00:00:01"},
		{short: "hb", ctr: "chb", underlay: netip.MustParseAddr("10.97.0.12"), subnet: netip.MustParsePrefix("10.44.2.0/24"), mac: "02:44:00:00:00:02"},
	}
	for i, h := range b.handmade {
		l.addNode(h.short, h.underlay, 1500)
		l.newNS(h.ctr)
		peer := b.handmade[1-i]
		n, c := benchPrefix+h.short, benchPrefix+h.ctr
		gw := Gateway(h.subnet).String()
		b.run("ip", "-n", n, "link", "add", "hvx", "address", h.mac, "type", "vxlan", "id", "44", "local", h.underlay.String(), "dev", "eth0", "dstport", "4789", "nolearning")
		b.run("ip", "-n", n, "link", "add", "hbr", "type", "bridge")
		b.run("ip", "-n", n, "addr", "add", gw+"/24", "dev", "hbr")
		b.run("ip", "-n", n, "link", "add", "hveth", "type", "veth", "peer", "name", "eth0", "netns", c)
		b.run("ip", "-n", n, "link", "set", "hveth", "master", "hbr")
		for _, dev := range []string{"hvx", "hbr", "hveth"} {
			b.run("ip", "-n", n, "link", "set", dev, "mtu", "1450", "up")
		}
		b.run("ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1")
		b.run("ip", "-n", c, "link", "set", "eth0", "mtu", "1450", "up")
		b.run("ip", "-n", c, "addr", "add", Gateway(h.subnet).Next().String()+"/24", "dev", "eth0")
		b.run("ip", "-n", c, "route", "add", "default", "via", gw)
		pgw := Gateway(peer.subnet).String()
		b.run("ip", "-n", n, "neigh", "add", pgw, "lladdr", peer.mac, "dev", "hvx", "nud", "permanent")
		b.run("ip", "netns", "exec", n, "bridge", "fdb", "append", peer.mac, "dev", "hvx", "dst", peer.underlay.String(), "self", "permanent")
		b.run("ip", "-n", n, "route", "add", peer.subnet.String(), "via", pgw, "dev", "hvx", "onlink")
		b.nodeNS = append(b.nodeNS, h.short)
		b.ctrNS = append(b.ctrNS, h.ctr)
	}

	// (c) the underlay alone.
	ua := l.addNode("ua", netip.MustParseAddr("10.97.0.21"), 1500)
	ub := l.addNode("ub", netip.MustParseAddr("10.97.0.22"), 1500)
	b.nodeNS = append(b.nodeNS, "ua", "ub")

	_, cha := ns(benchPrefix, "cha")
	_, chb := ns(benchPrefix, "chb")
	b.paths = []measurePath{
		{"overlay", b.oc[0].path, b.oc[1].path, b.oc[1].addr},
		{"handmade", cha, chb, Gateway(b.handmade[1].subnet).Next()},
		{"underlay", ua, ub, netip.MustParseAddr("10.97.0.22")},
	}
	// Prove every path works before timing it.
	for _, p := range b.paths {
		if _, err := measureThroughput(t, p, 1<<20); err != nil {
			t.Fatalf("%s path does not work: %v", p.name, err)
		}
	}
	return b
}

func (b *benchLab) run(argv ...string) string {
	b.t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		b.t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// vethsIn lists the veth devices in a namespace.
func (b *benchLab) vethsIn(nsName string) []string {
	var out []string
	for _, line := range strings.Split(b.run("ip", "-n", nsName, "-o", "link", "show", "type", "veth"), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			out = append(out, strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	return out
}

// setGRO switches GRO on every veth of the lab: the hub's ends, the
// nodes' underlay ends and both ends of every container veth. On a veth,
// GRO also turns on NAPI for its receive side.
func (b *benchLab) setGRO(on bool) {
	state := map[bool]string{true: "on", false: "off"}[on]
	var all []string
	for _, s := range append(append([]string{"hub"}, b.nodeNS...), b.ctrNS...) {
		all = append(all, benchPrefix+s)
	}
	for _, n := range all {
		for _, dev := range b.vethsIn(n) {
			b.run("ip", "netns", "exec", n, "ethtool", "-K", dev, "gro", state)
		}
	}
}

// setMTU gives the underlay (hub bridge, every node's eth0) the MTU mtu
// and the overlays mtu-50: this package through Setup and Attach, the
// handmade one by hand.
func (b *benchLab) setMTU(mtu int) {
	b.l.setHubMTU(mtu)
	for _, s := range b.nodeNS {
		b.run("ip", "-n", benchPrefix+s, "link", "set", "eth0", "mtu", strconv.Itoa(mtu))
	}
	for i, n := range b.overlay {
		must(b.t, n.m.Setup(ctxT(b.t), n.m.Subnet(), n.underlay))
		_, err := n.m.Attach(ctxT(b.t), b.oc[i].path, "job/"+b.oc[i].name)
		must(b.t, err)
	}
	inner := strconv.Itoa(mtu - vxlanOverhead)
	for _, h := range b.handmade {
		for _, dev := range []string{"hvx", "hbr", "hveth"} {
			b.run("ip", "-n", benchPrefix+h.short, "link", "set", dev, "mtu", inner)
		}
		b.run("ip", "-n", benchPrefix+h.ctr, "link", "set", "eth0", "mtu", inner)
	}
}

// handmadeMasquerade adds (or removes) to each handmade node the table
// this package programs: a NAT postrouting chain, which makes the kernel
// run conntrack on every packet through the node.
func (b *benchLab) handmadeMasquerade(on bool) {
	for _, h := range b.handmade {
		n := benchPrefix + h.short
		if !on {
			b.run("ip", "netns", "exec", n, "nft", "delete", "table", "ip", "handmade")
			continue
		}
		b.run("ip", "netns", "exec", n, "nft", fmt.Sprintf(`add table ip handmade
			add chain ip handmade postrouting { type nat hook postrouting priority srcnat; policy accept; }
			add rule ip handmade postrouting ip saddr %s ip daddr != 10.44.0.0/16 counter masquerade`, h.subnet))
	}
}

// notrackVXLAN exempts the encapsulated packets of this package's nodes
// from conntrack, leaving the inner (container) packets tracked.
func (b *benchLab) notrackVXLAN(on bool) {
	for _, n := range b.overlay {
		name := benchPrefix + n.name
		if !on {
			b.run("ip", "netns", "exec", name, "nft", "delete", "table", "ip", "vxnotrack")
			continue
		}
		b.run("ip", "netns", "exec", name, "nft", fmt.Sprintf(`add table ip vxnotrack
			add chain ip vxnotrack pre { type filter hook prerouting priority raw; }
			add chain ip vxnotrack out { type filter hook output priority raw; }
			add rule ip vxnotrack pre udp dport %[1]d notrack
			add rule ip vxnotrack out udp dport %[1]d notrack`, DefaultVXLANPort))
	}
}

// setBigTCP sets the largest IPv4 GSO/GRO packet on every device of the
// lab except lo (netlink: Debian 12's ip command predates the knob).
func (b *benchLab) setBigTCP(size int) {
	for _, s := range append(append([]string{"hub"}, b.nodeNS...), b.ctrNS...) {
		_, path := ns(benchPrefix, s)
		h := handleAt(b.t, path)
		links, err := h.LinkList()
		must(b.t, err)
		for _, l := range links {
			if l.Attrs().Name == "lo" {
				continue
			}
			must(b.t, h.LinkSetGSOIPv4MaxSize(l, size))
			must(b.t, h.LinkSetGROIPv4MaxSize(l, size))
		}
	}
}
