package node

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/lb"
	"github.com/shoalmesh/shoal/overlay"
	"github.com/shoalmesh/shoal/state"
)

// Load-balancer modes.
const (
	LBNftables  = "nftables"
	LBUserspace = "userspace"
	LBOff       = "off"
)

// servicesResync is how often the load balancer is rewritten without a
// change, which repairs rules changed by hand.
const servicesResync = 10 * time.Second

// assignService gives a job's service its virtual IP and its claim time.
// It refuses a service name or node port another stored job holds, and a
// VIP another service holds. Called under jobsMu. It returns the HTTP
// status for an error.
func (a *Agent) assignService(job *api.Job, cur state.Record, exists bool) (int, error) {
	if job.Service == nil {
		return 0, nil
	}
	var others []api.Job
	for id, other := range a.records.jobs() {
		if id != job.ID && other.Service != nil {
			others = append(others, other)
		}
	}
	var old *api.Service
	if exists {
		if stored, err := decodeJob(cur); err == nil {
			old = stored.Service
		}
	}
	return claimService(job.Service, old, others, a.cfg.ServiceCIDR, time.Now().UTC())
}

// claimService completes svc, the service of a job being stored whose
// stored version had old (nil if none), against the services of the other
// jobs. The VIP is, in order: the one the client asked for if it is free,
// the stored one (a VIP is stable for the job's life), or a fresh one
// hashed from the service name. ClaimedAt is carried over while the name
// and node port stay the same, else it is now: a client cannot make its
// claim look older than it is.
func claimService(svc, old *api.Service, others []api.Job, cidr netip.Prefix, now time.Time) (int, error) {
	// VIP -> the name of the service holding it, as lb.AllocateVIP reads
	// it; jobOf names the job, for messages.
	taken := map[netip.Addr]string{}
	jobOf := map[netip.Addr]string{}
	for _, other := range others {
		o := other.Service
		if o == nil {
			continue
		}
		if o.Name == svc.Name {
			return http.StatusConflict, fmt.Errorf("service.name: %q is already the service of job %q", svc.Name, other.ID)
		}
		if svc.NodePort != 0 && o.NodePort == svc.NodePort {
			return http.StatusConflict, fmt.Errorf("service.node_port: %d is already used by job %q", svc.NodePort, other.ID)
		}
		if ip, err := netip.ParseAddr(o.VIP); err == nil {
			taken[ip] = o.Name
			jobOf[ip] = other.ID
		}
	}
	svc.ClaimedAt = now
	var prev netip.Addr
	if old != nil {
		prev, _ = netip.ParseAddr(old.VIP)
		if old.Name == svc.Name && old.NodePort == svc.NodePort {
			// Zero for a job stored before claims were dated: it stays
			// zero, which counts as the oldest claim.
			svc.ClaimedAt = old.ClaimedAt
		}
	}
	if svc.VIP != "" {
		ip, err := netip.ParseAddr(svc.VIP)
		switch {
		case err != nil:
			return http.StatusBadRequest, fmt.Errorf("service.vip: not an IP address: %q", svc.VIP)
		case !cidr.Contains(ip) || ip == cidr.Masked().Addr():
			return http.StatusBadRequest, fmt.Errorf("service.vip: %s is outside the service range %s", ip, cidr)
		case taken[ip] != "":
			return http.StatusConflict, fmt.Errorf("service.vip: %s is already the VIP of service %q of job %q", ip, taken[ip], jobOf[ip])
		}
		return 0, nil
	}
	if prev.IsValid() && taken[prev] == "" {
		svc.VIP = prev.String()
		return 0, nil
	}
	// No other service has this name (refused above), so AllocateVIP
	// cannot hand out an address another service holds.
	ip, err := lb.AllocateVIP(svc.Name, cidr, taken)
	if err != nil {
		return http.StatusConflict, fmt.Errorf("service: no free virtual IP in %s: %w", cidr, err)
	}
	svc.VIP = ip.String()
	return 0, nil
}

// desiredServices decodes the stored jobs, all nodes' endpoint records and
// membership, and computes every service of the cluster and the problems
// of the jobs whose service lost a conflict.
func (a *Agent) desiredServices() ([]lb.Service, map[string][]string) {
	alive := map[string]bool{}
	for _, m := range a.cluster.Members() {
		alive[m.Name] = m.Status == gossip.StatusAlive
	}
	return computeServices(a.servedJobs(), a.records.endpoints(), alive, a.cfg.ServiceCIDR)
}

// servedJobs are the jobs that have a service, in id order.
func (a *Agent) servedJobs() []api.Job {
	jobs := a.records.jobs()
	var out []api.Job
	for _, id := range slices.Sorted(maps.Keys(jobs)) {
		if jobs[id].Service != nil {
			out = append(out, jobs[id])
		}
	}
	return out
}

// serviceProblems returns, by job id, why a job's service is not served as
// specified, from the services last computed for the load balancer.
// Callers must not change the slices.
func (a *Agent) serviceProblems() map[string][]string {
	if a.lb != nil {
		return a.lb.problems()
	}
	_, problems := a.desiredServices()
	return problems
}

// serviceClaim is a job's service while computeServices decides it.
type serviceClaim struct {
	job  api.Job
	port api.Port   // the task port traffic goes to
	vip  netip.Addr // the VIP it is served at
}

// olderClaim orders services by claim: the older ClaimedAt first, a zero
// one (a job stored before claims were dated) before any, then the job id.
// It decides every conflict, so all nodes must order alike.
func olderClaim(x, y *api.Job) int {
	xt, yt := x.Service.ClaimedAt, y.Service.ClaimedAt
	switch {
	case xt.IsZero() && !yt.IsZero():
		return -1
	case yt.IsZero() && !xt.IsZero():
		return 1
	}
	return cmp.Or(xt.Compare(yt), cmp.Compare(x.ID, y.ID))
}

// claimedSince describes when a job claimed its service, for messages.
func claimedSince(t time.Time) string {
	if t.IsZero() {
		return "since before claims were dated"
	}
	return "since " + t.UTC().Format(time.RFC3339)
}

// rankClaims decides which jobs' services are served: of jobs claiming
// one service name or node port, the older claim. A job that loses one
// claims nothing, so a younger job may still get its node port. lost is
// told why each job is not served. Both lists are in claim order.
func rankClaims(jobs []api.Job, lost func(c *serviceClaim, format string, args ...any)) (served, unserved []*serviceClaim) {
	var claims []*serviceClaim
	for _, j := range jobs {
		if j.Service == nil {
			continue
		}
		idx := slices.IndexFunc(j.Task.Ports, func(p api.Port) bool { return p.Name == j.Service.TargetPort })
		if idx < 0 {
			continue
		}
		claims = append(claims, &serviceClaim{job: j, port: j.Task.Ports[idx]})
	}
	slices.SortFunc(claims, func(x, y *serviceClaim) int { return olderClaim(&x.job, &y.job) })

	names := map[string]*serviceClaim{}
	nodePorts := map[int]*serviceClaim{}
	for _, c := range claims {
		svc := c.job.Service
		if w, ok := names[svc.Name]; ok {
			lost(c, "service name %q is also claimed by job %q %s, which keeps it; this job's service is not served",
				svc.Name, w.job.ID, claimedSince(w.job.Service.ClaimedAt))
			unserved = append(unserved, c)
			continue
		}
		if w, ok := nodePorts[svc.NodePort]; ok && svc.NodePort != 0 {
			lost(c, "node port %d is also claimed by job %q %s, which keeps it; this job's service is not served",
				svc.NodePort, w.job.ID, claimedSince(w.job.Service.ClaimedAt))
			unserved = append(unserved, c)
			continue
		}
		names[svc.Name] = c
		if svc.NodePort != 0 {
			nodePorts[svc.NodePort] = c
		}
		served = append(served, c)
	}
	return served, unserved
}

// computeServices computes every service of the cluster from the jobs
// (with distinct ids), all nodes' endpoint records and which nodes are
// alive: only running replicas on alive nodes count, and only healthy ones
// get traffic. It is pure, so every node computes the same answer from the
// same records.
//
// Two nodes cut off from each other can each accept a job, and the two
// jobs may claim one service name, node port or VIP. The older claim
// (see olderClaim) keeps it. A job that loses a name or a node port is
// not served; one that loses a VIP is served at another free VIP, chosen
// deterministically. problems maps each losing job's id to messages that
// say so.
func computeServices(jobs []api.Job, endpoints []Endpoint, alive map[string]bool, serviceCIDR netip.Prefix) (services []lb.Service, problems map[string][]string) {
	problems = map[string][]string{}
	lost := func(c *serviceClaim, format string, args ...any) {
		problems[c.job.ID] = append(problems[c.job.ID], fmt.Sprintf(format, args...))
	}
	served, unserved := rankClaims(jobs, lost)

	// VIPs: a served job keeps its stored VIP unless an older claim holds
	// it. taken maps VIPs to the names of the services holding them, as
	// lb.AllocateVIP reads it.
	taken := map[netip.Addr]string{}
	holder := map[netip.Addr]*serviceClaim{}
	var moved []*serviceClaim
	for _, c := range served {
		vip, err := netip.ParseAddr(c.job.Service.VIP)
		if err != nil {
			moved = append(moved, c) // stored without one: give it one
			continue
		}
		if _, held := holder[vip]; held {
			moved = append(moved, c)
			continue
		}
		c.vip = vip
		holder[vip] = c
		taken[vip] = c.job.Service.Name
	}
	// The VIPs of jobs not served are kept free too, so that they need
	// not move when such a job is served again.
	for _, c := range unserved {
		if vip, err := netip.ParseAddr(c.job.Service.VIP); err == nil {
			if _, ok := taken[vip]; !ok {
				taken[vip] = c.job.Service.Name
			}
		}
	}
	for _, c := range moved {
		vip, err := lb.AllocateVIP(c.job.Service.Name, serviceCIDR, taken)
		if err == nil {
			c.vip = vip
			taken[vip] = c.job.Service.Name
		}
		stored, perr := netip.ParseAddr(c.job.Service.VIP)
		if perr != nil {
			continue
		}
		w := holder[stored]
		switch {
		case err != nil:
			lost(c, "VIP %s is also claimed by job %q %s, which keeps it; no other VIP of %s is free, so this job's service has none",
				stored, w.job.ID, claimedSince(w.job.Service.ClaimedAt), serviceCIDR)
		default:
			lost(c, "VIP %s is also claimed by job %q %s, which keeps it; this job's service is served at %s instead",
				stored, w.job.ID, claimedSince(w.job.Service.ClaimedAt), vip)
		}
	}

	byJob := map[string]*serviceClaim{}
	for _, c := range served {
		byJob[c.job.ID] = c
	}
	eps := map[string][]lb.Endpoint{}
	for _, ep := range endpoints {
		c, ok := byJob[ep.Job]
		if !ok || ep.State != StateRunning || ep.IP == "" || !alive[ep.Node] {
			continue
		}
		ip, err := netip.ParseAddr(ep.IP)
		if err != nil {
			continue
		}
		port := c.port.Port
		if p, ok := ep.Ports[c.port.Name]; ok {
			port = p
		}
		// With a health check, a replica gets traffic once it passed it;
		// without one, once it runs.
		healthy := ep.Healthy != nil && *ep.Healthy
		if c.job.Health == nil {
			healthy = ep.Healthy == nil || *ep.Healthy
		}
		eps[ep.Job] = append(eps[ep.Job], lb.Endpoint{
			Node: ep.Node, Replica: ep.Replica, IP: ip, Port: uint16(port), Healthy: healthy,
		})
	}

	slices.SortFunc(served, func(x, y *serviceClaim) int { return strings.Compare(x.job.Service.Name, y.job.Service.Name) })
	services = make([]lb.Service, 0, len(served))
	for _, c := range served {
		svc := c.job.Service
		list := eps[c.job.ID]
		// Endpoint records arrive in any order; sort them fully so the
		// output does not depend on it.
		slices.SortFunc(list, func(x, y lb.Endpoint) int {
			return cmp.Or(strings.Compare(x.Node, y.Node), cmp.Compare(x.Replica, y.Replica),
				x.IP.Compare(y.IP), cmp.Compare(x.Port, y.Port), compareBool(x.Healthy, y.Healthy))
		})
		services = append(services, lb.Service{
			Name: svc.Name, VIP: c.vip, Port: uint16(svc.Port), PortName: c.port.Name,
			Protocol: c.port.Protocol, NodePort: uint16(svc.NodePort), Strategy: svc.Strategy,
			Endpoints: list,
		})
	}
	return services, problems
}

func compareBool(x, y bool) int {
	switch {
	case x == y:
		return 0
	case !x:
		return -1
	}
	return 1
}

// serviceLB programs this node's share of the distributed load balancer:
// the nftables table (or the userspace proxy) and the DNS server, from the
// desired services, on every change of jobs, endpoints or membership. Its
// run goroutine owns table, proxy, dns and the sync state below.
type serviceLB struct {
	cfg   lbSettings
	deps  lbDeps
	log   *slog.Logger
	table *lb.Table
	proxy *lb.Proxy
	dns   *lb.DNS
	kick  chan struct{}
	// invalid and conflicts hold the problems of the last sync, so each
	// is reported once; dns serves at dnsAt.
	invalid   map[string]bool
	conflicts map[string]bool
	dnsAt     netip.Addr
	dnsFailed bool

	mu           sync.Mutex
	last         []lb.Service
	lastProblems map[string][]string
}

// lbSettings are the node's configuration values the load balancer reads.
type lbSettings struct {
	// Mode is LBNftables, LBUserspace or LBOff (compute, program nothing).
	Mode        string
	Table       string
	ServiceCIDR netip.Prefix
	OverlayCIDR netip.Prefix
	// Bridge is the overlay bridge the service range is routed on.
	Bridge string
	// DNS serves NAME.shoal. on the overlay gateway.
	DNS bool
	// ProxyMaxSessions and ProxyTCPIdle bound the userspace proxy.
	ProxyMaxSessions int
	ProxyTCPIdle     time.Duration
}

// lbDeps is all the load balancer needs of its node, narrow enough to be
// replaced by fakes in a test.
type lbDeps struct {
	// desired computes every service of the cluster and, by job id, the
	// problems of services left out or moved (see computeServices).
	desired func() ([]lb.Service, map[string][]string)
	// members tells of membership changes.
	members memberSource
	// joined blocks until the node's first join attempt ended; false if
	// ctx ended first. Services computed before would miss the cluster's
	// records.
	joined func(context.Context) bool
	events eventSink
	stats  lbStats
	// subnet is this node's overlay subnet; nil without an overlay (then
	// no DNS and no route for node-local VIP traffic).
	subnet func() netip.Prefix
}

// memberSource is the membership the load balancer watches; a
// *gossip.Cluster.
type memberSource interface {
	Subscribe() <-chan struct{}
	Members() []gossip.Member
}

// eventSink records node events; an *eventLog.
type eventSink interface {
	add(kind, job string, replica int, msg string)
}

// lbStats receives the load balancer's metrics.
type lbStats interface {
	// synced counts one sync and, when took > 0, its duration.
	synced(err error, took time.Duration)
	setServiceEndpoints(stats []lb.ServiceStat)
}

// agentLBStats feeds the agent's Prometheus metrics.
type agentLBStats struct{ *metrics }

func (m agentLBStats) synced(err error, took time.Duration) {
	m.lbSyncs.WithLabelValues(resultLabel(err)).Inc()
	if took > 0 {
		m.lbSyncSeconds.Observe(took.Seconds())
	}
}

// newServiceLB prepares the load balancer of the agent a; net may be nil
// (no overlay).
func newServiceLB(a *Agent, net *overlayNet, log *slog.Logger) (*serviceLB, error) {
	cfg := lbSettings{
		Mode: a.cfg.LB, Table: a.cfg.LBTable, ServiceCIDR: a.cfg.ServiceCIDR,
		OverlayCIDR: a.cfg.Overlay.OverlayCIDR, Bridge: a.cfg.Overlay.BridgeName, DNS: a.cfg.DNS,
		ProxyMaxSessions: a.cfg.ProxyMaxSessions, ProxyTCPIdle: a.cfg.ProxyTCPIdle,
	}
	deps := lbDeps{
		desired: a.desiredServices,
		members: a.cluster,
		joined:  a.waitJoined,
		events:  a.events,
		stats:   agentLBStats{a.metrics},
	}
	if net != nil {
		deps.subnet = func() netip.Prefix {
			_, subnet := net.state()
			return subnet
		}
	}
	return newServiceLBWith(cfg, deps, log)
}

// newServiceLBWith prepares a load balancer from its settings and
// dependencies.
func newServiceLBWith(cfg lbSettings, deps lbDeps, log *slog.Logger) (*serviceLB, error) {
	s := &serviceLB{cfg: cfg, deps: deps, log: log, kick: make(chan struct{}, 1)}
	switch cfg.Mode {
	case LBNftables:
		lcfg := lb.DefaultConfig()
		lcfg.Table = cfg.Table
		lcfg.ServiceCIDR = cfg.ServiceCIDR
		lcfg.OverlayCIDR = cfg.OverlayCIDR
		t, err := lb.NewTable(lcfg)
		if err != nil {
			return nil, fmt.Errorf("create load-balancer table %s: %w", cfg.Table, err)
		}
		s.table = t
	case LBUserspace:
		p, err := lb.NewProxy(lb.ProxyConfig{
			MaxSessionsPerPort: cfg.ProxyMaxSessions, TCPIdleTimeout: cfg.ProxyTCPIdle,
			Logf: func(f string, args ...any) { log.Debug(fmt.Sprintf(f, args...)) },
		})
		if err != nil {
			return nil, fmt.Errorf("start userspace proxy: %w", err)
		}
		s.proxy = p
	}
	return s, nil
}

// changed asks for a sync soon; safe from any goroutine.
func (s *serviceLB) changed() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *serviceLB) run(ctx context.Context) {
	defer s.stopDNS()
	members := s.deps.members.Subscribe()
	if !s.deps.joined(ctx) {
		return
	}
	t := time.NewTicker(servicesResync)
	defer t.Stop()
	var seen uint64
	for {
		seen = membershipKey(s.deps.members.Members())
		s.ensureDNS(ctx)
		s.sync()
	wait:
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-members:
			// Load tags change every few seconds and matter not here.
			if membershipKey(s.deps.members.Members()) == seen {
				goto wait
			}
		case <-t.C:
		}
		// Coalesce a burst (a job write touches many endpoints).
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ensureDNS serves DNS on the overlay gateway, moving the server when the
// node's subnet (and so its gateway) changed. Without DNS the rest still
// works: names fail, addresses do not. Called by run only.
func (s *serviceLB) ensureDNS(ctx context.Context) {
	if s.deps.subnet == nil || !s.cfg.DNS {
		return
	}
	gw := overlay.Gateway(s.deps.subnet())
	if s.dns != nil && s.dnsAt == gw {
		return
	}
	s.stopDNS()
	d, err := lb.NewDNS(lb.DNSConfig{Listen: []string{netip.AddrPortFrom(gw, 53).String()}})
	if err == nil {
		err = d.Start(ctx)
	}
	if err != nil {
		if !s.dnsFailed {
			s.log.Error("DNS for services is off; retrying", "addr", gw, "err", err)
		}
		s.dnsFailed = true
		return
	}
	s.dns, s.dnsAt, s.dnsFailed = d, gw, false
	s.log.Info("serving DNS", "addr", netip.AddrPortFrom(gw, 53))
}

func (s *serviceLB) stopDNS() {
	if s.dns != nil {
		s.dns.Close()
		s.dns = nil
	}
}

func (s *serviceLB) sync() {
	services, problems := s.deps.desired()
	s.reportConflicts(problems)
	programmed := true
	if r, ok := s.vipRoute(); ok {
		if err := lb.EnsureVIPRoute(r); err != nil {
			s.log.Warn("route the service range", "err", err)
		}
	}
	switch {
	case s.table != nil:
		st, err := s.table.Sync(services)
		s.deps.stats.synced(err, st.Duration)
		if err != nil {
			programmed = false
			s.log.Warn("program load balancer", "err", err)
		}
		// Warn once per problem, not on every sync.
		invalid := map[string]bool{}
		for _, bad := range st.Invalid {
			invalid[bad.Error()] = true
			if !s.invalid[bad.Error()] {
				s.log.Warn("service left out of the load balancer", "err", bad)
				s.deps.events.add("service-invalid", "", -1, bad.Error())
			}
		}
		s.invalid = invalid
		s.deps.stats.setServiceEndpoints(st.Services)
	case s.proxy != nil:
		err := s.proxy.Update(services)
		s.deps.stats.synced(err, 0)
		if err != nil {
			s.log.Warn("update userspace proxy", "err", err)
		}
	}
	if s.dns != nil {
		s.dns.Update(services)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastProblems = problems
	// GET /v1/services reports what the kernel has, not what is planned.
	if programmed {
		s.last = services
	}
}

// reportConflicts logs and records an event for each conflict lost that
// the last sync did not already report.
func (s *serviceLB) reportConflicts(problems map[string][]string) {
	seen := map[string]bool{}
	for _, job := range slices.Sorted(maps.Keys(problems)) {
		for _, msg := range problems[job] {
			k := job + "\x00" + msg
			seen[k] = true
			if !s.conflicts[k] {
				s.log.Warn("service conflict", "job", job, "problem", msg)
				s.deps.events.add("service-conflict", job, -1, msg)
			}
		}
	}
	s.conflicts = seen
}

// vipRoute is the route that lets the node's own processes reach VIPs
// (nat output DNATs after a first routing decision, which needs a route):
// the service range on the overlay bridge, from the bridge's gateway.
func (s *serviceLB) vipRoute() (lb.VIPRoute, bool) {
	if s.table == nil || s.deps.subnet == nil {
		return lb.VIPRoute{}, false
	}
	return lb.VIPRoute{CIDR: s.cfg.ServiceCIDR, Link: s.cfg.Bridge, Src: overlay.Gateway(s.deps.subnet())}, true
}

// snapshot is what was last programmed.
func (s *serviceLB) snapshot() []lb.Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// problems are those of the last sync, by job id.
func (s *serviceLB) problems() map[string][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.lastProblems)
}

// close stops serving; with teardown it also removes the table and route.
func (s *serviceLB) close() {
	if s.proxy != nil {
		s.proxy.Close()
	}
	if s.table != nil {
		s.table.Close()
	}
}

func (s *serviceLB) teardown() {
	if s.table != nil {
		if err := s.table.Teardown(); err != nil {
			s.log.Warn("remove load-balancer table", "err", err)
		}
	}
	if r, ok := s.vipRoute(); ok {
		if err := lb.RemoveVIPRoute(r); err != nil {
			s.log.Warn("remove service route", "err", err)
		}
	}
}

func resultLabel(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// handleServices answers GET /v1/services with every service as this node
// programs it.
func (a *Agent) handleServices(w http.ResponseWriter, _ *http.Request) {
	var services []lb.Service
	if a.lb != nil {
		services = a.lb.snapshot()
	} else {
		services, _ = a.desiredServices()
	}
	// Of jobs claiming one name, the served one owns it.
	served, _ := rankClaims(a.servedJobs(), func(*serviceClaim, string, ...any) {})
	jobOf := map[string]string{}
	for _, c := range served {
		jobOf[c.job.Service.Name] = c.job.ID
	}
	out := make([]api.ServiceStatus, 0, len(services))
	for _, s := range services {
		st := api.ServiceStatus{Name: s.Name, Job: jobOf[s.Name], Port: int(s.Port), Protocol: s.Protocol,
			NodePort: int(s.NodePort), Strategy: s.Strategy, Endpoints: []api.ServiceEndpoint{}}
		if st.Protocol == "" {
			st.Protocol = lb.ProtocolTCP
		}
		if st.Strategy == "" {
			st.Strategy = lb.DefaultStrategy
		}
		if s.VIP.IsValid() {
			st.VIP = s.VIP.String()
		}
		for _, ep := range s.Endpoints {
			st.Endpoints = append(st.Endpoints, api.ServiceEndpoint{Node: ep.Node, Replica: ep.Replica, IP: ep.IP.String(), Port: int(ep.Port), Healthy: ep.Healthy})
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(x, y api.ServiceStatus) int { return strings.Compare(x.Name, y.Name) })
	writeJSON(w, http.StatusOK, out)
}
