package node

import (
	"context"
	"encoding/json"
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

// assignService gives a job's service its virtual IP: the one the stored
// job has (a VIP is stable for the job's life), the one the client asked
// for if it is free, or a fresh one hashed from the service name. It also
// refuses a node port another job holds. Called under jobsMu. It returns
// the HTTP status for an error.
func (a *Agent) assignService(job *api.Job, cur state.Record, exists bool) (int, error) {
	if job.Service == nil {
		return 0, nil
	}
	svc := job.Service
	cidr := a.cfg.ServiceCIDR
	taken := map[netip.Addr]string{}
	for _, rec := range a.store.List(kindJob) {
		if rec.ID == job.ID {
			continue
		}
		var other api.Job
		if json.Unmarshal(rec.Body, &other) != nil || other.Service == nil {
			continue
		}
		if other.Service.Name == svc.Name {
			return http.StatusConflict, fmt.Errorf("service.name: %q is already the service of job %q", svc.Name, other.ID)
		}
		if ip, err := netip.ParseAddr(other.Service.VIP); err == nil {
			taken[ip] = other.ID
		}
		if svc.NodePort != 0 && other.Service.NodePort == svc.NodePort {
			return http.StatusConflict, fmt.Errorf("service.node_port: %d is already used by job %q", svc.NodePort, other.ID)
		}
	}
	var prev netip.Addr
	if exists {
		var old api.Job
		if json.Unmarshal(cur.Body, &old) == nil && old.Service != nil {
			prev, _ = netip.ParseAddr(old.Service.VIP)
		}
	}
	if svc.VIP != "" {
		ip := netip.MustParseAddr(svc.VIP) // validated
		switch {
		case !cidr.Contains(ip) || ip == cidr.Masked().Addr():
			return http.StatusBadRequest, fmt.Errorf("service.vip: %s is outside the service range %s", ip, cidr)
		case taken[ip] != "":
			return http.StatusConflict, fmt.Errorf("service.vip: %s is already the VIP of job %q", ip, taken[ip])
		}
		return 0, nil
	}
	if prev.IsValid() && taken[prev] == "" {
		svc.VIP = prev.String()
		return 0, nil
	}
	ip, err := lb.AllocateVIP(svc.Name, cidr, taken)
	if err != nil {
		return http.StatusConflict, fmt.Errorf("service: no free virtual IP in %s: %w", cidr, err)
	}
	svc.VIP = ip.String()
	return 0, nil
}

// desiredServices computes every service of the cluster from the stored
// jobs, all nodes' endpoint records and membership: only running replicas
// on alive nodes count, and only healthy ones get traffic. Every node
// computes the same answer from the same inputs.
func (a *Agent) desiredServices() []lb.Service {
	alive := map[string]bool{}
	for _, m := range a.cluster.Members() {
		alive[m.Name] = m.Status == gossip.StatusAlive
	}
	type jobSvc struct {
		job  api.Job
		port api.Port
	}
	jobs := map[string]jobSvc{}
	var ids []string
	for _, rec := range a.store.List(kindJob) {
		var j api.Job
		if json.Unmarshal(rec.Body, &j) != nil || j.Service == nil {
			continue
		}
		idx := slices.IndexFunc(j.Task.Ports, func(p api.Port) bool { return p.Name == j.Service.TargetPort })
		if idx < 0 {
			continue
		}
		jobs[j.ID] = jobSvc{job: j, port: j.Task.Ports[idx]}
		ids = append(ids, j.ID)
	}
	endpoints := map[string][]lb.Endpoint{}
	for _, rec := range a.store.List(kindEndpoint) {
		var ep Endpoint
		if json.Unmarshal(rec.Body, &ep) != nil || ep.State != StateRunning || ep.IP == "" || !alive[ep.Node] {
			continue
		}
		js, ok := jobs[ep.Job]
		if !ok {
			continue
		}
		ip, err := netip.ParseAddr(ep.IP)
		if err != nil {
			continue
		}
		port := js.port.Port
		if p, ok := ep.Ports[js.port.Name]; ok {
			port = p
		}
		// With a health check, a replica gets traffic once it passed it;
		// without one, once it runs.
		healthy := ep.Healthy != nil && *ep.Healthy
		if js.job.Health == nil {
			healthy = ep.Healthy == nil || *ep.Healthy
		}
		endpoints[ep.Job] = append(endpoints[ep.Job], lb.Endpoint{
			Node: ep.Node, Replica: ep.Replica, IP: ip, Port: uint16(port), Healthy: healthy,
		})
	}
	// Two jobs stored at once on two nodes may have drawn one VIP: the
	// smaller job id keeps it and the other gets the next free address,
	// the same on every node.
	slices.Sort(ids)
	// Every stored VIP is taken, so a collision's loser cannot take the
	// VIP of a job later in the order.
	stored := map[netip.Addr]string{}
	for _, id := range ids {
		if vip, err := netip.ParseAddr(jobs[id].job.Service.VIP); err == nil {
			if _, dup := stored[vip]; !dup {
				stored[vip] = id
			}
		}
	}
	used := map[netip.Addr]string{}
	names := map[string]string{}
	out := make([]lb.Service, 0, len(ids))
	for _, id := range ids {
		js := jobs[id]
		svc := js.job.Service
		// Two jobs stored at once on two nodes may claim one service name
		// (the API refuses it otherwise): the smaller job id keeps it.
		if owner, dup := names[svc.Name]; dup {
			a.log.Warn("service name used by two jobs; ignoring the later", "service", svc.Name, "job", id, "kept_by", owner)
			continue
		}
		names[svc.Name] = id
		vip, err := netip.ParseAddr(svc.VIP)
		if err == nil && used[vip] != "" {
			a.log.Warn("service VIP collision", "job", id, "vip", vip, "kept_by", used[vip])
			taken := maps.Clone(stored)
			for k, v := range used {
				taken[k] = v
			}
			vip, err = lb.AllocateVIP(svc.Name, a.cfg.ServiceCIDR, taken)
		}
		if err != nil {
			vip = netip.Addr{}
		} else {
			used[vip] = id
		}
		eps := endpoints[id]
		slices.SortFunc(eps, func(x, y lb.Endpoint) int {
			if c := strings.Compare(x.Node, y.Node); c != 0 {
				return c
			}
			return x.Replica - y.Replica
		})
		out = append(out, lb.Service{
			Name: svc.Name, VIP: vip, Port: uint16(svc.Port), PortName: js.port.Name,
			Protocol: js.port.Protocol, NodePort: uint16(svc.NodePort), Strategy: svc.Strategy,
			Endpoints: eps,
		})
	}
	return out
}

// serviceLB programs this node's share of the distributed load balancer:
// the nftables table (or the userspace proxy) and the DNS server, from
// desiredServices, on every change of jobs, endpoints or membership. Its
// run goroutine owns table, proxy and dns.
type serviceLB struct {
	a     *Agent
	log   *slog.Logger
	table *lb.Table
	proxy *lb.Proxy
	dns   *lb.DNS
	net   *overlayNet
	kick  chan struct{}
	// invalid holds the problems of the last sync; dns serves at dnsAt
	// (all owned by run).
	invalid   map[string]bool
	dnsAt     netip.Addr
	dnsFailed bool

	mu   sync.Mutex
	last []lb.Service
}

// newServiceLB prepares the load balancer of a node; net may be nil (no
// overlay: no DNS and no route for node-local VIP traffic).
func newServiceLB(a *Agent, net *overlayNet, log *slog.Logger) (*serviceLB, error) {
	s := &serviceLB{a: a, log: log, net: net, kick: make(chan struct{}, 1)}
	switch a.cfg.LB {
	case LBNftables:
		cfg := lb.DefaultConfig()
		cfg.Table = a.cfg.LBTable
		cfg.ServiceCIDR = a.cfg.ServiceCIDR
		cfg.OverlayCIDR = a.cfg.Overlay.OverlayCIDR
		t, err := lb.NewTable(cfg)
		if err != nil {
			return nil, err
		}
		s.table = t
	case LBUserspace:
		p, err := lb.NewProxy(lb.ProxyConfig{Logf: func(f string, args ...any) { log.Debug(fmt.Sprintf(f, args...)) }})
		if err != nil {
			return nil, err
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
	members := s.a.cluster.Subscribe()
	if !s.a.waitJoined(ctx) {
		return
	}
	t := time.NewTicker(servicesResync)
	defer t.Stop()
	var seen uint64
	for {
		seen = membershipKey(s.a.cluster.Members())
		s.ensureDNS(ctx)
		s.sync()
	wait:
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-members:
			// Load tags change every few seconds and matter not here.
			if membershipKey(s.a.cluster.Members()) == seen {
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
	if s.net == nil || !s.a.cfg.DNS {
		return
	}
	_, subnet := s.net.state()
	gw := overlay.Gateway(subnet)
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
	services := s.a.desiredServices()
	programmed := true
	if r, ok := s.vipRoute(); ok {
		if err := lb.EnsureVIPRoute(r); err != nil {
			s.log.Warn("route the service range", "err", err)
		}
	}
	switch {
	case s.table != nil:
		st, err := s.table.Sync(services)
		s.a.metrics.lbSyncs.WithLabelValues(resultLabel(err)).Inc()
		s.a.metrics.lbSyncSeconds.Observe(st.Duration.Seconds())
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
				s.a.events.add("service-invalid", "", -1, bad.Error())
			}
		}
		s.invalid = invalid
		s.a.metrics.setServiceEndpoints(st.Services)
	case s.proxy != nil:
		err := s.proxy.Update(services)
		s.a.metrics.lbSyncs.WithLabelValues(resultLabel(err)).Inc()
		if err != nil {
			s.log.Warn("update userspace proxy", "err", err)
		}
	}
	if s.dns != nil {
		s.dns.Update(services)
	}
	// GET /v1/services reports what the kernel has, not what is planned.
	if programmed {
		s.mu.Lock()
		s.last = services
		s.mu.Unlock()
	}
}

// vipRoute is the route that lets the node's own processes reach VIPs
// (nat output DNATs after a first routing decision, which needs a route):
// the service range on the overlay bridge, from the bridge's gateway.
func (s *serviceLB) vipRoute() (lb.VIPRoute, bool) {
	if s.table == nil || s.net == nil {
		return lb.VIPRoute{}, false
	}
	_, subnet := s.net.state()
	return lb.VIPRoute{CIDR: s.a.cfg.ServiceCIDR, Link: s.a.cfg.Overlay.BridgeName, Src: overlay.Gateway(subnet)}, true
}

// snapshot is what was last programmed.
func (s *serviceLB) snapshot() []lb.Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
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
		services = a.desiredServices()
	}
	jobOf := map[string]string{}
	for _, rec := range a.store.List(kindJob) {
		var j api.Job
		if json.Unmarshal(rec.Body, &j) == nil && j.Service != nil {
			jobOf[j.Service.Name] = j.ID
		}
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
