package lb

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Measurements, not pass/fail tests: they log MEASURE lines for
// docs/BENCHMARKS.md and fail only when the thing measured does not work.
// Run as root with SHOAL_MEASURE=1.

func requireMeasure(t *testing.T) {
	t.Helper()
	if os.Getenv("SHOAL_MEASURE") != "1" {
		t.Skip("set SHOAL_MEASURE=1 to run measurements")
	}
	requireRoot(t)
}

// TestMeasureSync1000Services times one transaction that programs 1,000
// services of 10 endpoints each into an empty table, then a second sync in
// which one endpoint changed (the table is rebuilt whole either way).
func TestMeasureSync1000Services(t *testing.T) {
	requireMeasure(t)
	sweepNamespaces(t)
	ns := newNetns(t, "sync")
	for _, strategy := range []string{StrategyRoundRobin, StrategyMaglev} {
		services := manyServices(1000, 10, strategy)
		changed := manyServices(1000, 10, strategy)
		changed[500].Endpoints[3].Healthy = false
		for rep := range 3 {
			tb, err := NewTable(Config{NetNS: ns})
			if err != nil {
				t.Fatal(err)
			}
			first, err := tb.Sync(services)
			if err != nil {
				t.Fatalf("%s: first sync: %v", strategy, err)
			}
			second, err := tb.Sync(changed)
			if err != nil {
				t.Fatalf("%s: second sync: %v", strategy, err)
			}
			t.Logf("MEASURE sync strategy=%s rep=%d services=1000 endpoints=%d: first %v (program %v, %d messages, %d elements), one endpoint changed %v (program %v)",
				strategy, rep+1, first.Endpoints, first.Duration.Round(time.Millisecond), first.Program.Round(time.Millisecond),
				first.Messages, first.Elements, second.Duration.Round(time.Millisecond), second.Program.Round(time.Millisecond))
			if err := tb.Teardown(); err != nil {
				t.Fatal(err)
			}
			tb.Close()
		}
	}
}

// loadResult is one run of the load generator.
type loadResult struct {
	requests int
	errors   int
	elapsed  time.Duration
	lat      []time.Duration
}

func (r loadResult) rate() float64 { return float64(r.requests) / r.elapsed.Seconds() }

func (r loadResult) percentile(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	i := int(p * float64(len(r.lat)-1))
	return r.lat[i]
}

// runLoad sends request/response exchanges ("who\n" -> a line) to target
// from workers goroutines inside namespace ns for d. keepAlive reuses one
// connection per worker; otherwise every request opens (and resets) its
// own connection.
func runLoad(t *testing.T, ns, target string, keepAlive bool, workers int, d time.Duration) loadResult {
	t.Helper()
	var mu sync.Mutex
	var res loadResult
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			errs := 0
			err := inNetns(ns, func() {
				dialer := net.Dialer{Timeout: 2 * time.Second}
				var conn net.Conn
				var r *bufio.Reader
				for time.Now().Before(deadline) {
					t0 := time.Now()
					if conn == nil {
						c, err := dialer.Dial("tcp4", target)
						if err != nil {
							errs++
							continue
						}
						_ = c.(*net.TCPConn).SetLinger(0) // no TIME_WAIT pile-up
						conn, r = c, bufio.NewReader(c)
					}
					_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
					_, err := conn.Write([]byte("who\n"))
					if err == nil {
						_, err = r.ReadString('\n')
					}
					if err != nil {
						errs++
						conn.Close()
						conn = nil
						continue
					}
					lat = append(lat, time.Since(t0))
					if !keepAlive {
						conn.Close()
						conn = nil
					}
				}
				if conn != nil {
					conn.Close()
				}
			})
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			res.lat = append(res.lat, lat...)
			res.errors += errs
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	res.requests = len(res.lat)
	slices.Sort(res.lat)
	return res
}

// TestMeasureThroughput compares requests/s and latency through the VIP,
// a node port and the userspace proxy against going to a backend directly,
// in one run.
func TestMeasureThroughput(t *testing.T) {
	requireMeasure(t)
	tp := newTopology(t)
	tableA, tableB := newTestTable(t, tp.a), newTestTable(t, tp.b)
	services := lbServices(tp, StrategyRoundRobin)
	syncAll(t, services, tableA, tableB)

	// The userspace proxy on B serves the same backends on node port 31080.
	proxy, err := NewProxy(ProxyConfig{NetNS: tp.b, Addresses: []netip.Addr{netip.MustParseAddr(ipBExt)}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	proxied := services[0]
	proxied.NodePort = 31080
	if err := proxy.Update([]Service{proxied}); err != nil {
		t.Fatal(err)
	}

	bridgeNF := "absent"
	if b, err := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables"); err == nil {
		bridgeNF = strings.TrimSpace(string(b)) // the root namespace's; new namespaces start the same
	}
	t.Logf("MEASURE machine: %d CPUs, bridge-nf-call-iptables=%s", runtime.NumCPU(), bridgeNF)

	type variant struct{ name, ns, target string }
	variants := []variant{
		{"container -> backend IP (bridged)", tp.c1, fmt.Sprintf("%s:%d", tp.backendIPs[0], webPort)},
		{"container -> VIP (nftables DNAT)", tp.c1, netip.AddrPortFrom(webVIP, 80).String()},
		{"outside -> backend IP (routed B, A)", tp.ext, fmt.Sprintf("%s:%d", tp.backendIPs[0], webPort)},
		{"outside -> node port on B (nftables)", tp.ext, fmt.Sprintf("%s:%d", ipBExt, webNodePort)},
		{"outside -> node port on B (userspace proxy)", tp.ext, fmt.Sprintf("%s:%d", ipBExt, 31080)},
	}
	const (
		workers = 4
		dur     = 3 * time.Second
		reps    = 3
	)
	type key struct {
		v    int
		keep bool
	}
	results := map[key][]loadResult{}
	for rep := range reps {
		for _, keep := range []bool{false, true} {
			for vi, v := range variants {
				r := runLoad(t, v.ns, v.target, keep, workers, dur)
				if r.requests == 0 || r.errors > r.requests/100 {
					t.Fatalf("%s keepalive=%v: %d requests, %d errors", v.name, keep, r.requests, r.errors)
				}
				t.Logf("MEASURE rep=%d keepalive=%v %-45s %8.0f req/s  p50 %v  p99 %v  errors %d",
					rep+1, keep, v.name, r.rate(), r.percentile(0.5).Round(time.Microsecond), r.percentile(0.99).Round(time.Microsecond), r.errors)
				results[key{vi, keep}] = append(results[key{vi, keep}], r)
			}
		}
	}
	median := func(rs []loadResult) loadResult {
		s := slices.Clone(rs)
		slices.SortFunc(s, func(a, b loadResult) int { return int(a.rate() - b.rate()) })
		return s[len(s)/2]
	}
	for _, keep := range []bool{false, true} {
		base := map[string]loadResult{
			tp.c1:  median(results[key{0, keep}]),
			tp.ext: median(results[key{2, keep}]),
		}
		for vi, v := range variants {
			m := median(results[key{vi, keep}])
			b := base[v.ns]
			t.Logf("MEASURE summary keepalive=%v %-45s median %8.0f req/s (%.2fx direct)  p50 %v (%.2fx)  p99 %v",
				keep, v.name, m.rate(), m.rate()/b.rate(), m.percentile(0.5).Round(time.Microsecond),
				float64(m.percentile(0.5))/float64(b.percentile(0.5)), m.percentile(0.99).Round(time.Microsecond))
		}
	}
}
