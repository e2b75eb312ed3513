package node

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	gometrics "github.com/armon/go-metrics"
	gometricsprom "github.com/armon/go-metrics/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/lb"
	"github.com/shoalmesh/shoal/runtime"
	"github.com/shoalmesh/shoal/state"
)

// metrics is one agent's Prometheus registry.
type metrics struct {
	reg              *prometheus.Registry
	placementRuns    prometheus.Counter
	placementSeconds prometheus.Histogram
	placementMoved   prometheus.Counter
	unplaced         prometheus.Gauge
	apiRequests      *prometheus.CounterVec
	apiLatency       *prometheus.HistogramVec
	lbSyncs          *prometheus.CounterVec
	lbSyncSeconds    prometheus.Histogram
	lbEndpoints      *prometheus.GaugeVec
}

// setServiceEndpoints replaces the per-service endpoint gauges.
func (m *metrics) setServiceEndpoints(stats []lb.ServiceStat) {
	m.lbEndpoints.Reset()
	for _, st := range stats {
		m.lbEndpoints.WithLabelValues(st.Key).Set(float64(st.Endpoints))
	}
}

var (
	// serf and memberlist report through the process-global go-metrics
	// sink; one bridge per process exports them (memberlist_udp_sent, ...).
	libSinkOnce sync.Once
	libSink     *gometricsprom.PrometheusSink
)

func libraryMetrics() *gometricsprom.PrometheusSink {
	libSinkOnce.Do(func() {
		sink, err := gometricsprom.NewPrometheusSinkFrom(gometricsprom.PrometheusOpts{
			Expiration: 0,
			Registerer: prometheus.NewRegistry(), // registered per agent below
		})
		if err != nil {
			return
		}
		cfg := gometrics.DefaultConfig("shoal")
		cfg.EnableHostname = false
		cfg.EnableHostnameLabel = false
		cfg.EnableServiceLabel = false
		cfg.EnableRuntimeMetrics = false
		if _, err := gometrics.NewGlobal(cfg, sink); err != nil {
			return
		}
		libSink = sink
	})
	return libSink
}

func newMetrics(c *gossip.Cluster, s *gossip.StateSync, st *state.Store) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.apiRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "shoal_api_requests_total",
		Help: "HTTP API requests by method, route and status code.",
	}, []string{"method", "route", "code"})
	m.apiLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "shoal_api_request_duration_seconds",
		Help:    "HTTP API request latency by route.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 4, 8),
	}, []string{"route"})
	m.placementRuns = prometheus.NewCounter(prometheus.CounterOpts{Name: "shoal_placement_runs_total", Help: "Placement computations."})
	m.placementSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "shoal_placement_duration_seconds", Help: "Time to compute the cluster-wide assignment.", Buckets: prometheus.ExponentialBuckets(0.00005, 4, 9)})
	m.placementMoved = prometheus.NewCounter(prometheus.CounterOpts{Name: "shoal_placement_moved_replicas_total", Help: "Replicas whose node changed between consecutive placements."})
	m.unplaced = prometheus.NewGauge(prometheus.GaugeOpts{Name: "shoal_placement_unplaced_replicas", Help: "Replicas that fit on no node in the last placement."})
	m.reg.MustRegister(m.placementRuns, m.placementSeconds, m.placementMoved, m.unplaced)
	m.lbSyncs = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "shoal_lb_syncs_total", Help: "Load-balancer rule syncs (one atomic nftables transaction each), by result."}, []string{"result"})
	m.lbSyncSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "shoal_lb_sync_seconds", Help: "Time to compute and apply the load-balancer table.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)})
	m.lbEndpoints = prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "shoal_lb_service_endpoints", Help: "Healthy endpoints receiving traffic, per service port (name/proto/port)."}, []string{"service"})
	m.reg.MustRegister(m.lbSyncs, m.lbSyncSeconds, m.lbEndpoints)
	m.reg.MustRegister(m.apiRequests, m.apiLatency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&clusterCollector{c: c}, &stateCollector{sync: s, store: st})
	if sink := libraryMetrics(); sink != nil {
		m.reg.MustRegister(sink)
	}
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// instrument counts every request by method, route template and status.
// Labels come from a fixed set, whatever a client sends: the route is the
// pattern routes would serve the request with ("/v1/jobs/{id}"), anything
// unknown is one "unmatched" route and unusual methods one "other", so
// requests to made-up paths (rejected with 401 or not) add no series.
func (m *metrics) instrument(routes *http.ServeMux, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		_, pattern := routes.Handler(r)
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rec, r)
		route := routeLabel(pattern)
		m.apiRequests.WithLabelValues(methodLabel(r.Method), route, strconv.Itoa(rec.code)).Inc()
		m.apiLatency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// routeLabel is a ServeMux pattern without its method: "GET /v1/jobs/{id}"
// is "/v1/jobs/{id}". The catch-all "/" and no pattern are "unmatched".
func routeLabel(pattern string) string {
	if _, path, ok := strings.Cut(pattern, " "); ok {
		pattern = path
	}
	if pattern == "" || pattern == "/" {
		return "unmatched"
	}
	return pattern
}

func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions:
		return method
	}
	return "other"
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's deadlines.
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// clusterCollector reads membership at scrape time.
type clusterCollector struct{ c *gossip.Cluster }

var (
	membersDesc = prometheus.NewDesc("shoal_members", "Cluster members by status as this node sees them.", []string{"status"}, nil)
	eventsDesc  = prometheus.NewDesc("shoal_gossip_events_total", "Serf events received by type.", []string{"type"}, nil)
)

func (cc *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- membersDesc
	ch <- eventsDesc
}

func (cc *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{gossip.StatusAlive: 0, gossip.StatusFailed: 0, gossip.StatusLeft: 0}
	for _, m := range cc.c.Members() {
		counts[m.Status]++
	}
	for status, n := range counts {
		ch <- prometheus.MustNewConstMetric(membersDesc, prometheus.GaugeValue, float64(n), status)
	}
	for kind, n := range cc.c.Stats().Snapshot() {
		ch <- prometheus.MustNewConstMetric(eventsDesc, prometheus.CounterValue, float64(n), kind)
	}
}

// stateCollector reads state sync counters and store sizes at scrape time.
type stateCollector struct {
	sync  *gossip.StateSync
	store *state.Store
}

var (
	syncBytesDesc   = prometheus.NewDesc("shoal_state_sync_bytes_total", "Bytes of state sync traffic by direction.", []string{"direction"}, nil)
	syncPushesDesc  = prometheus.NewDesc("shoal_state_pushes_total", "State push messages by direction.", []string{"direction"}, nil)
	syncAppliedDesc = prometheus.NewDesc("shoal_state_records_applied_total", "Records from peers that changed the local store.", nil, nil)
	syncRoundsDesc  = prometheus.NewDesc("shoal_state_antientropy_rounds_total", "Anti-entropy rounds this node started, by result.", []string{"result"}, nil)
	syncRejectDesc  = prometheus.NewDesc("shoal_state_rejected_messages_total", "Malformed or oversized state messages from peers.", nil, nil)
	storeRecsDesc   = prometheus.NewDesc("shoal_state_records", "Records in the local store.", []string{"kind"}, nil)
	// Rising steadily, it names a clock problem: some peer holds versions
	// further ahead of this node's clock than the store's drift bound.
	storeFutureDesc = prometheus.NewDesc("shoal_state_future_versions_rejected_total",
		"Records from peers skipped because their version was further ahead of this node's clock than the maximum clock drift; a record offered again counts again.", nil, nil)
	storeDroppedDesc = prometheus.NewDesc("shoal_state_records_dropped_total",
		"Records from peers dropped before they were stored: invalid, a bad or missing owner signature, or signed by a node not yet known; a record offered again counts again.", []string{"reason"}, nil)
	syncRefusedDesc = prometheus.NewDesc("shoal_state_streams_refused_total",
		"Inbound state streams reset for going over the per-peer or total limit.", nil, nil)
)

func (sc *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{syncBytesDesc, syncPushesDesc, syncAppliedDesc, syncRoundsDesc, syncRejectDesc, storeRecsDesc, storeFutureDesc, storeDroppedDesc, syncRefusedDesc} {
		ch <- d
	}
}

func (sc *stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := sc.sync.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(syncBytesDesc, st.BytesSent.Load(), "sent")
	counter(syncBytesDesc, st.BytesReceived.Load(), "received")
	counter(syncPushesDesc, st.PushesSent.Load(), "sent")
	counter(syncPushesDesc, st.PushesReceived.Load(), "received")
	counter(syncAppliedDesc, st.RecordsApplied.Load())
	rounds, inSync, failed := st.SyncRounds.Load(), st.SyncInSync.Load(), st.SyncFail.Load()
	counter(syncRoundsDesc, inSync, "in_sync")
	counter(syncRoundsDesc, failed, "failed")
	counter(syncRoundsDesc, rounds-min(rounds, inSync+failed), "repaired")
	counter(syncRejectDesc, st.Rejected.Load())
	for reason, n := range st.Dropped() {
		counter(storeDroppedDesc, n, reason)
	}
	counter(syncRefusedDesc, st.StreamsRefused.Load())
	stats := sc.store.Stats()
	ch <- prometheus.MustNewConstMetric(storeRecsDesc, prometheus.GaugeValue, float64(stats.Live), "live")
	ch <- prometheus.MustNewConstMetric(storeRecsDesc, prometheus.GaugeValue, float64(stats.Tombstones), "tombstone")
	counter(storeFutureDesc, stats.FutureRejected)
}

// replicaCollector reads each local replica's cgroup usage at scrape time.
type replicaCollector struct{ a *Agent }

var (
	replicaCPUDesc = prometheus.NewDesc("shoal_replica_cpu_seconds_total", "CPU time used by a local replica's cgroup.", []string{"job", "replica"}, nil)
	replicaMemDesc = prometheus.NewDesc("shoal_replica_memory_bytes", "Memory used by a local replica's cgroup.", []string{"job", "replica"}, nil)
)

func (rc *replicaCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- replicaCPUDesc
	ch <- replicaMemDesc
}

func (rc *replicaCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	tasks, err := rc.a.tasks.List(ctx)
	if err != nil {
		return
	}
	for _, t := range tasks {
		if t.State != runtime.StateRunning {
			continue
		}
		cpu, mem, err := rc.a.tasks.Stats(ctx, t.ID)
		if err != nil {
			continue
		}
		replica := strconv.Itoa(t.Replica)
		ch <- prometheus.MustNewConstMetric(replicaCPUDesc, prometheus.CounterValue, float64(cpu)/1e9, t.Job, replica)
		ch <- prometheus.MustNewConstMetric(replicaMemDesc, prometheus.GaugeValue, float64(mem), t.Job, replica)
	}
}
