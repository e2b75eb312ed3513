package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/lb"
)

var testServiceCIDR = netip.MustParsePrefix("10.43.0.0/16")

// t0 is a claim time; later claims add to it.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// serviceJob is a stored job whose service is called name. Its service
// port is unique to the job (see servedBy).
func serviceJob(id, name string, nodePort int, vip string, claimed time.Time) api.Job {
	r := 1
	return api.Job{ID: id, Type: api.JobTypeService, Replicas: &r,
		Task: api.Task{Driver: api.DriverExec, Command: []string{"serve"},
			Resources: api.Resources{CPUMillis: 100, MemoryMB: 64},
			Ports:     []api.Port{{Name: "http", Port: 8080, Protocol: api.ProtocolTCP}}},
		Service: &api.Service{Name: name, Port: servicePortOf(id), TargetPort: "http", NodePort: nodePort,
			Strategy: api.StrategyRoundRobin, VIP: vip, ClaimedAt: claimed},
	}
}

// servicePortOf derives a job's service port from its id, so a test can
// tell which job a computed service belongs to.
func servicePortOf(id string) int {
	h := 0
	for _, c := range id {
		h = h*31 + int(c)
	}
	return 1000 + h%50000
}

// servedBy maps each computed service's name to the job it serves.
func servedBy(services []lb.Service, jobs []api.Job) map[string]string {
	out := map[string]string{}
	for _, s := range services {
		for _, j := range jobs {
			if int(s.Port) == j.Service.Port {
				out[s.Name] = j.ID
			}
		}
	}
	return out
}

func vipOf(services []lb.Service, name string) netip.Addr {
	for _, s := range services {
		if s.Name == name {
			return s.VIP
		}
	}
	return netip.Addr{}
}

// storeService runs a job's service through claimService against the
// jobs already stored, as the API does, and returns the job as stored.
func storeService(t *testing.T, j api.Job, stored []api.Job, now time.Time) api.Job {
	t.Helper()
	var old *api.Service
	var others []api.Job
	for _, o := range stored {
		if o.ID == j.ID {
			old = o.Service
			continue
		}
		others = append(others, o)
	}
	j = j.Clone()
	if code, err := claimService(j.Service, old, others, testServiceCIDR, now); err != nil {
		t.Fatalf("store job %s: %d %v", j.ID, code, err)
	}
	return j
}

// A job may name its service after another job. The VIPs belong to
// services, so the service already stored keeps its VIP and the new one
// gets another.
func TestServiceNamedAfterAnotherJobDoesNotTakeItsVIP(t *testing.T) {
	web := storeService(t, serviceJob("web", "frontend", 0, "", time.Time{}), nil, t0)
	apiJob := storeService(t, serviceJob("api", "web", 0, "", time.Time{}), []api.Job{web}, t0.Add(time.Minute))
	if web.Service.VIP == "" || apiJob.Service.VIP == "" {
		t.Fatalf("VIPs not assigned: frontend %q, web %q", web.Service.VIP, apiJob.Service.VIP)
	}
	if web.Service.VIP == apiJob.Service.VIP {
		t.Fatalf("service web of job api got VIP %s, which is frontend's", apiJob.Service.VIP)
	}

	jobs := []api.Job{web, apiJob}
	services, problems := computeServices(jobs, nil, nil, testServiceCIDR)
	if got := vipOf(services, "frontend").String(); got != web.Service.VIP {
		t.Errorf("frontend is served at %s, want its stored VIP %s", got, web.Service.VIP)
	}
	if got := vipOf(services, "web").String(); got != apiJob.Service.VIP {
		t.Errorf("web is served at %s, want its stored VIP %s", got, apiJob.Service.VIP)
	}
	if want := map[string]string{"frontend": "web", "web": "api"}; !reflect.DeepEqual(servedBy(services, jobs), want) {
		t.Errorf("served %v, want %v", servedBy(services, jobs), want)
	}
	if len(problems) != 0 {
		t.Errorf("problems %v, want none", problems)
	}

	// Should job api hold frontend's VIP all the same (as two sides of a
	// partition can leave it), the older claim, frontend's, keeps it and
	// web moves.
	apiJob.Service.VIP = web.Service.VIP
	jobs = []api.Job{web, apiJob}
	services, problems = computeServices(jobs, nil, nil, testServiceCIDR)
	if got := vipOf(services, "frontend").String(); got != web.Service.VIP {
		t.Errorf("after a VIP collision frontend is served at %s, want %s", got, web.Service.VIP)
	}
	if got := vipOf(services, "web"); !got.IsValid() || got.String() == web.Service.VIP {
		t.Errorf("after a VIP collision web is served at %s, want another VIP", got)
	}
	if len(problems["api"]) != 1 || len(problems) != 1 {
		t.Errorf("problems %v, want one for job api", problems)
	}
}

func TestClaimServiceDatesTheClaim(t *testing.T) {
	later := t0.Add(time.Hour)
	for _, tc := range []struct {
		name     string
		old      *api.Service
		svc      api.Service
		wantTime time.Time
	}{
		{"a new service is claimed now", nil,
			api.Service{Name: "web", Port: 80}, later},
		{"a client's claim time is ignored", nil,
			api.Service{Name: "web", Port: 80, ClaimedAt: t0.Add(-24 * time.Hour)}, later},
		{"same name and node port keep the claim time", &api.Service{Name: "web", Port: 80, NodePort: 30080, ClaimedAt: t0},
			api.Service{Name: "web", Port: 8080, NodePort: 30080, Strategy: api.StrategyMaglev}, t0},
		{"a claim from before claims were dated stays oldest", &api.Service{Name: "web", Port: 80},
			api.Service{Name: "web", Port: 81}, time.Time{}},
		{"a new name is a new claim", &api.Service{Name: "web", Port: 80, ClaimedAt: t0},
			api.Service{Name: "www", Port: 80}, later},
		{"a new node port is a new claim", &api.Service{Name: "web", Port: 80, NodePort: 30080, ClaimedAt: t0},
			api.Service{Name: "web", Port: 80, NodePort: 30081}, later},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := tc.svc
			if _, err := claimService(&svc, tc.old, nil, testServiceCIDR, later); err != nil {
				t.Fatal(err)
			}
			if !svc.ClaimedAt.Equal(tc.wantTime) {
				t.Errorf("ClaimedAt = %v, want %v", svc.ClaimedAt, tc.wantTime)
			}
		})
	}
}

func TestClaimServiceRefusesWhatAnotherServiceHolds(t *testing.T) {
	stored := []api.Job{serviceJob("web", "frontend", 30080, "10.43.0.10", t0)}
	for _, tc := range []struct {
		name string
		svc  api.Service
		want string
	}{
		{"service name", api.Service{Name: "frontend", Port: 80}, `service.name: "frontend" is already the service of job "web"`},
		{"node port", api.Service{Name: "api", Port: 80, NodePort: 30080}, `service.node_port: 30080 is already used by job "web"`},
		{"VIP", api.Service{Name: "api", Port: 80, VIP: "10.43.0.10"}, `service.vip: 10.43.0.10 is already the VIP of service "frontend" of job "web"`},
		{"VIP outside the range", api.Service{Name: "api", Port: 80, VIP: "10.44.0.1"}, `service.vip: 10.44.0.1 is outside the service range 10.43.0.0/16`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := tc.svc
			_, err := claimService(&svc, nil, stored, testServiceCIDR, t0)
			if err == nil || err.Error() != tc.want {
				t.Errorf("claimService = %v, want %q", err, tc.want)
			}
		})
	}
}

// After a partition heals, every node holds both sides' jobs; clashing
// claims are decided by age, never by how the job ids sort.
func TestConflictsAfterAHealKeepTheOlderClaim(t *testing.T) {
	const vip = "10.43.0.10"
	for _, tc := range []struct {
		name   string
		jobs   []api.Job
		served map[string]string // service name -> job
		loser  string            // job with a problem, if any
		msg    string            // part of the loser's problem
	}{
		{
			name: "service name: the older claim wins though its id sorts last",
			jobs: []api.Job{
				serviceJob("zeta", "web", 0, vip, t0),
				serviceJob("alpha", "web", 0, "10.43.0.11", t0.Add(time.Second)),
			},
			served: map[string]string{"web": "zeta"},
			loser:  "alpha",
			msg:    `service name "web" is also claimed by job "zeta" since 2025-03-01T12:00:00Z, which keeps it; this job's service is not served`,
		},
		{
			name: "service name: the older claim wins though its id sorts first",
			jobs: []api.Job{
				serviceJob("alpha", "web", 0, vip, t0),
				serviceJob("zeta", "web", 0, "10.43.0.11", t0.Add(time.Second)),
			},
			served: map[string]string{"web": "alpha"},
			loser:  "zeta",
			msg:    `service name "web" is also claimed by job "alpha"`,
		},
		{
			name: "node port: the older claim wins",
			jobs: []api.Job{
				serviceJob("zeta", "web", 30080, vip, t0),
				serviceJob("alpha", "api", 30080, "10.43.0.11", t0.Add(time.Millisecond)),
			},
			served: map[string]string{"web": "zeta"},
			loser:  "alpha",
			msg:    `node port 30080 is also claimed by job "zeta" since 2025-03-01T12:00:00Z, which keeps it; this job's service is not served`,
		},
		{
			name: "VIP: the older claim keeps it and the younger is served elsewhere",
			jobs: []api.Job{
				serviceJob("zeta", "web", 0, vip, t0),
				serviceJob("alpha", "api", 0, vip, t0.Add(time.Second)),
			},
			served: map[string]string{"web": "zeta", "api": "alpha"},
			loser:  "alpha",
			msg:    `VIP 10.43.0.10 is also claimed by job "zeta" since 2025-03-01T12:00:00Z, which keeps it; this job's service is served at `,
		},
		{
			name: "a claim without a time counts as oldest",
			jobs: []api.Job{
				serviceJob("zeta", "web", 0, vip, time.Time{}),
				serviceJob("alpha", "web", 0, "10.43.0.11", t0),
			},
			served: map[string]string{"web": "zeta"},
			loser:  "alpha",
			msg:    `service name "web" is also claimed by job "zeta" since before claims were dated, which keeps it`,
		},
		{
			name: "two claims without a time: the smaller job id wins",
			jobs: []api.Job{
				serviceJob("zeta", "web", 0, vip, time.Time{}),
				serviceJob("alpha", "web", 0, "10.43.0.11", time.Time{}),
			},
			served: map[string]string{"web": "alpha"},
			loser:  "zeta",
			msg:    `also claimed by job "alpha"`,
		},
		{
			name: "equal claim times: the smaller job id wins",
			jobs: []api.Job{
				serviceJob("zeta", "web", 30080, vip, t0),
				serviceJob("alpha", "api", 30080, "10.43.0.11", t0),
			},
			served: map[string]string{"api": "alpha"},
			loser:  "zeta",
			msg:    `node port 30080 is also claimed by job "alpha"`,
		},
		{
			name: "a job losing its name claims nothing, so a younger job keeps the node port",
			jobs: []api.Job{
				serviceJob("a", "web", 30080, vip, t0),
				serviceJob("b", "web", 30081, "10.43.0.11", t0.Add(time.Second)),
				serviceJob("c", "api", 30081, "10.43.0.12", t0.Add(2*time.Second)),
			},
			served: map[string]string{"web": "a", "api": "c"},
			loser:  "b",
			msg:    `service name "web" is also claimed by job "a"`,
		},
		{
			name: "no clash, no problem",
			jobs: []api.Job{
				serviceJob("zeta", "web", 30080, vip, t0),
				serviceJob("alpha", "api", 30081, "10.43.0.11", t0),
			},
			served: map[string]string{"web": "zeta", "api": "alpha"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			services, problems := computeServices(tc.jobs, nil, nil, testServiceCIDR)
			if got := servedBy(services, tc.jobs); !reflect.DeepEqual(got, tc.served) {
				t.Errorf("served %v, want %v", got, tc.served)
			}
			if tc.loser == "" {
				if len(problems) != 0 {
					t.Errorf("problems %v, want none", problems)
				}
				return
			}
			if len(problems) != 1 || len(problems[tc.loser]) != 1 {
				t.Fatalf("problems %v, want one for %s only", problems, tc.loser)
			}
			if msg := problems[tc.loser][0]; !strings.Contains(msg, tc.msg) {
				t.Errorf("problem of %s = %q, want it to contain %q", tc.loser, msg, tc.msg)
			}
			// Whoever holds the contested VIP, it is the older claim's;
			// no two services share one.
			seen := map[netip.Addr]string{}
			for _, s := range services {
				if other, dup := seen[s.VIP]; dup {
					t.Errorf("services %s and %s share VIP %s", s.Name, other, s.VIP)
				}
				seen[s.VIP] = s.Name
			}
		})
	}
}

// A VIP collision's loser is moved to a VIP no stored job holds, so it
// does not push a third service aside in turn.
func TestVIPCollisionLoserAvoidsEveryStoredVIP(t *testing.T) {
	// The address AllocateVIP would pick first for "api".
	first, err := lb.AllocateVIP("api", testServiceCIDR, nil)
	if err != nil {
		t.Fatal(err)
	}
	jobs := []api.Job{
		serviceJob("web", "web", 0, "10.43.0.10", t0),
		serviceJob("api", "api", 0, "10.43.0.10", t0.Add(time.Second)),
		serviceJob("db", "db", 0, first.String(), t0.Add(2*time.Second)),
		// Not served (its name is web's), yet its VIP stays reserved.
		serviceJob("old", "web", 0, first.Next().String(), t0.Add(3*time.Second)),
	}
	services, _ := computeServices(jobs, nil, nil, testServiceCIDR)
	got := vipOf(services, "api")
	for _, j := range jobs {
		if got.String() == j.Service.VIP {
			t.Errorf("api moved to %s, the stored VIP of job %s", got, j.ID)
		}
	}
	if vipOf(services, "db") != first {
		t.Errorf("db moved from its VIP %s to %s", first, vipOf(services, "db"))
	}
}

func TestOnlyRunningReplicasOnAliveNodesAreEndpoints(t *testing.T) {
	healthy, sick := true, false
	withCheck := serviceJob("checked", "checked", 0, "10.43.0.10", t0)
	withCheck.Health = &api.HealthCheck{TCP: &api.TCPCheck{Port: 8080}}
	jobs := []api.Job{serviceJob("plain", "plain", 0, "10.43.0.11", t0), withCheck}
	endpoints := []Endpoint{
		{Job: "plain", Replica: 0, Node: "n1", State: StateRunning, IP: "10.42.1.2", Ports: map[string]int{"http": 9090}},
		{Job: "plain", Replica: 1, Node: "n2", State: StateRunning, IP: "10.42.2.2"},                 // n2 is dead
		{Job: "plain", Replica: 2, Node: "n1", State: "exited", IP: "10.42.1.3"},                     // not running
		{Job: "plain", Replica: 3, Node: "n1", State: StateRunning, IP: "10.42.1.4", Healthy: &sick}, // failing
		{Job: "checked", Replica: 0, Node: "n1", State: StateRunning, IP: "10.42.1.5"},               // not checked yet
		{Job: "checked", Replica: 1, Node: "n1", State: StateRunning, IP: "10.42.1.6", Healthy: &healthy},
		{Job: "gone", Replica: 0, Node: "n1", State: StateRunning, IP: "10.42.1.7"},
	}
	services, _ := computeServices(jobs, endpoints, map[string]bool{"n1": true, "n2": false}, testServiceCIDR)
	got := map[string][]string{}
	for _, s := range services {
		for _, e := range s.Endpoints {
			got[s.Name] = append(got[s.Name], fmt.Sprintf("%s:%d %v", e.IP, e.Port, e.Healthy))
		}
	}
	want := map[string][]string{
		"checked": {"10.42.1.5:8080 false", "10.42.1.6:8080 true"},
		"plain":   {"10.42.1.2:9090 true", "10.42.1.4:8080 false"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("endpoints %v, want %v", got, want)
	}
}

// Every node computes the services from the same records, listed in
// whatever order its store holds them: the order must not matter.
func TestComputeServicesDoesNotDependOnInputOrder(t *testing.T) {
	jobs := []api.Job{
		serviceJob("a", "web", 30080, "10.43.0.10", t0),
		serviceJob("b", "web", 0, "10.43.0.11", t0.Add(time.Second)),
		serviceJob("c", "api", 30080, "10.43.0.12", t0.Add(time.Second)),
		serviceJob("d", "db", 0, "10.43.0.10", t0),
		serviceJob("e", "cache", 0, "10.43.0.10", time.Time{}),
		serviceJob("f", "queue", 0, "10.43.0.13", time.Time{}),
		serviceJob("g", "queue", 0, "10.43.0.13", time.Time{}),
		serviceJob("h", "mail", 30090, "", t0.Add(time.Hour)),
	}
	var endpoints []Endpoint
	for _, j := range jobs {
		for r := range 3 {
			endpoints = append(endpoints, Endpoint{Job: j.ID, Replica: r, Node: fmt.Sprintf("n%d", r%2), State: StateRunning,
				IP: fmt.Sprintf("10.42.%d.%d", r%2, 2+r)})
		}
	}
	alive := map[string]bool{"n0": true, "n1": true}
	wantServices, wantProblems := computeServices(jobs, endpoints, alive, testServiceCIDR)
	if len(wantProblems) == 0 || len(wantServices) == 0 {
		t.Fatalf("the example has no conflicts or no services: %v %v", wantServices, wantProblems)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 50 {
		js, eps := slices.Clone(jobs), slices.Clone(endpoints)
		rng.Shuffle(len(js), func(a, b int) { js[a], js[b] = js[b], js[a] })
		rng.Shuffle(len(eps), func(a, b int) { eps[a], eps[b] = eps[b], eps[a] })
		services, problems := computeServices(js, eps, alive, testServiceCIDR)
		if !reflect.DeepEqual(services, wantServices) {
			t.Fatalf("shuffle %d: services\n%v\nwant\n%v", i, services, wantServices)
		}
		if !reflect.DeepEqual(problems, wantProblems) {
			t.Fatalf("shuffle %d: problems\n%v\nwant\n%v", i, problems, wantProblems)
		}
	}
}

// fakeLBNode stands in for the agent behind a serviceLB.
type fakeLBNode struct {
	mu       sync.Mutex
	problems map[string][]string
	syncs    int
	syncedCh chan struct{}
	events   []api.Event
	members  []gossip.Member
	changes  chan struct{}
}

func newFakeLBNode() *fakeLBNode {
	return &fakeLBNode{syncedCh: make(chan struct{}, 100), changes: make(chan struct{}, 1)}
}

func (f *fakeLBNode) deps() lbDeps {
	return lbDeps{
		desired: func() ([]lb.Service, map[string][]string) {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.syncs++
			f.syncedCh <- struct{}{}
			return nil, f.problems
		},
		members: f,
		joined:  func(context.Context) bool { return true },
		events:  f,
		stats:   f,
	}
}

func (f *fakeLBNode) setProblems(p map[string][]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.problems = p
}

func (f *fakeLBNode) Subscribe() <-chan struct{} { return f.changes }

func (f *fakeLBNode) Members() []gossip.Member {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.members)
}

func (f *fakeLBNode) add(kind, job string, replica int, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, api.Event{Kind: kind, Job: job, Replica: replica, Message: msg})
}

func (f *fakeLBNode) syncCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.syncs
}

func (f *fakeLBNode) eventsSoFar() []api.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.events)
}

func (f *fakeLBNode) synced(error, time.Duration)          {}
func (f *fakeLBNode) setServiceEndpoints([]lb.ServiceStat) {}

func newTestLB(t *testing.T, f *fakeLBNode) *serviceLB {
	t.Helper()
	s, err := newServiceLBWith(lbSettings{Mode: LBOff, ServiceCIDR: testServiceCIDR}, f.deps(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEachServiceConflictIsReportedOnce(t *testing.T) {
	f := newFakeLBNode()
	s := newTestLB(t, f)
	first := map[string][]string{"alpha": {`service name "web" is also claimed by job "zeta"`}}
	f.setProblems(first)
	s.sync()
	s.sync()
	want := []api.Event{{Kind: "service-conflict", Job: "alpha", Replica: -1, Message: first["alpha"][0]}}
	if got := f.eventsSoFar(); !reflect.DeepEqual(got, want) {
		t.Errorf("after two syncs events %v, want %v", got, want)
	}
	if got := s.problems(); !reflect.DeepEqual(got, first) {
		t.Errorf("problems %v, want %v", got, first)
	}

	// A second conflict is reported; the first, still there, is not again.
	second := map[string][]string{"alpha": first["alpha"], "beta": {`node port 30080 is also claimed by job "zeta"`}}
	f.setProblems(second)
	s.sync()
	want = append(want, api.Event{Kind: "service-conflict", Job: "beta", Replica: -1, Message: second["beta"][0]})
	if got := f.eventsSoFar(); !reflect.DeepEqual(got, want) {
		t.Errorf("after a new conflict events %v, want %v", got, want)
	}

	// Resolved conflicts leave no problem behind.
	f.setProblems(nil)
	s.sync()
	if got := s.problems(); len(got) != 0 {
		t.Errorf("problems after the conflicts went %v, want none", got)
	}
}

func TestServiceLBSyncsOnKickAndMembershipChangeOnly(t *testing.T) {
	f := newFakeLBNode()
	f.members = []gossip.Member{{Name: "n1", Status: gossip.StatusAlive}}
	s := newTestLB(t, f)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	waitSync := func(what string) {
		t.Helper()
		select {
		case <-f.syncedCh:
		case <-time.After(5 * time.Second):
			t.Fatalf("no sync %s", what)
		}
	}
	waitSync("at start")
	s.changed()
	waitSync("after a kick")

	// A notification without a change that matters (load tags) is ignored.
	f.changes <- struct{}{}
	select {
	case <-f.syncedCh:
		t.Fatal("synced although membership did not change")
	case <-time.After(100 * time.Millisecond):
	}

	f.mu.Lock()
	f.members = append(f.members, gossip.Member{Name: "n2", Status: gossip.StatusAlive})
	f.mu.Unlock()
	f.changes <- struct{}{}
	waitSync("after a node joined")
	if n := f.syncCount(); n != 3 {
		t.Errorf("%d syncs, want 3", n)
	}
}
