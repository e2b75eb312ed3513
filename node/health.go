package node

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/runtime"
)

// healthResult is the latest verdict on one replica.
type healthResult struct {
	known    bool
	healthy  bool
	failures int
	message  string
}

// taskExecer runs a command inside a task; the runtime's Router does.
type taskExecer interface {
	ExecIn(ctx context.Context, id string, argv []string) ([]byte, error)
}

// prober runs one probe loop per running replica that has a health check,
// inside the replica's network namespace; exec checks run inside the
// replica itself (its container, or its exec task's user, namespaces and
// cgroup). The reconcile loop starts and stops loops; results are read
// under mu.
type prober struct {
	changed chan<- struct{}
	// exec runs exec checks; nil (fakes in tests) runs them in the
	// replica's network namespace only, as nobody.
	exec taskExecer
	// onFlip is told of every change of a verdict (for events).
	onFlip func(id string, healthy bool, message string)

	mu      sync.Mutex
	results map[string]healthResult
	loops   map[string]probeLoop
}

type probeLoop struct {
	key    string // task pid and spec: a restarted task gets a fresh loop
	cancel context.CancelFunc
}

func newProber(changed chan<- struct{}, exec taskExecer, onFlip func(id string, healthy bool, message string)) *prober {
	return &prober{changed: changed, exec: exec, onFlip: onFlip, results: map[string]healthResult{}, loops: map[string]probeLoop{}}
}

// ensure runs a probe loop for task t if the job has a health check.
func (p *prober) ensure(t runtime.TaskStatus, check *api.HealthCheck) {
	spec, _ := json.Marshal(check)
	key := fmt.Sprintf("%d/%s/%s", t.PID, t.SpecHash, spec)
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.loops[t.ID]; ok {
		if l.key == key {
			return
		}
		l.cancel()
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.loops[t.ID] = probeLoop{key: key, cancel: cancel}
	p.results[t.ID] = healthResult{}
	go p.loop(ctx, t.ID, t.NetNS, *check)
}

// retain stops the loops of tasks not in keep.
func (p *prober) retain(keep map[string]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, l := range p.loops {
		if !keep[id] {
			l.cancel()
			delete(p.loops, id)
			delete(p.results, id)
		}
	}
}

// stopAll ends every loop (agent shutdown).
func (p *prober) stopAll() { p.retain(nil) }

// result returns the verdict for a task; known is false until the first
// probe after the grace period.
func (p *prober) result(id string) healthResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.results[id]
}

// verdicts returns every known verdict, by task id.
func (p *prober) verdicts() map[string]healthResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.results)
}

func (p *prober) loop(ctx context.Context, id, nsPath string, hc api.HealthCheck) {
	interval := time.Duration(hc.Interval)
	if interval <= 0 {
		interval = api.DefaultHealthInterval
	}
	timeout := time.Duration(hc.Timeout)
	if timeout <= 0 || timeout > interval {
		timeout = min(api.DefaultHealthTimeout, interval)
	}
	threshold := hc.FailuresBeforeUnhealthy
	if threshold <= 0 {
		threshold = api.DefaultFailuresBeforeUnhealthy
	}
	select {
	case <-ctx.Done():
		return
	case <-time.After(time.Duration(hc.GracePeriod)):
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		err := p.probe(pctx, id, nsPath, hc)
		cancel()
		if ctx.Err() != nil {
			return
		}
		p.record(id, err, threshold)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *prober) record(id string, err error, threshold int) {
	p.mu.Lock()
	r, tracked := p.results[id]
	if !tracked {
		p.mu.Unlock()
		return
	}
	before := r
	if err == nil {
		r = healthResult{known: true, healthy: true}
	} else {
		r.failures++
		r.message = err.Error()
		if r.failures >= threshold {
			r.known, r.healthy = true, false
		}
	}
	p.results[id] = r
	p.mu.Unlock()
	if before.known != r.known || before.healthy != r.healthy {
		if p.onFlip != nil && r.known {
			p.onFlip(id, r.healthy, r.message)
		}
		select {
		case p.changed <- struct{}{}:
		default:
		}
	}
}

// probe runs one check: HTTP and TCP from inside the task's network
// namespace, exec inside the task.
func (p *prober) probe(ctx context.Context, id, nsPath string, hc api.HealthCheck) error {
	switch {
	case hc.TCP != nil:
		conn, err := runtime.DialInNetNS(ctx, nsPath, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(hc.TCP.Port)))
		if err != nil {
			return fmt.Errorf("tcp port %d: %w", hc.TCP.Port, err)
		}
		return conn.Close()
	case hc.HTTP != nil:
		path := hc.HTTP.Path
		if path == "" {
			path = "/"
		}
		client := &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return runtime.DialInNetNS(ctx, nsPath, network, addr)
			},
			DisableKeepAlives: true,
		}}
		url := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(hc.HTTP.Port)) + path
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return fmt.Errorf("http %s: %w", url, err)
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode >= 400 {
			return fmt.Errorf("http %s: status %d", url, resp.StatusCode)
		}
		return nil
	case len(hc.Exec) > 0:
		var out []byte
		var err error
		if p.exec != nil {
			out, err = p.exec.ExecIn(ctx, id, hc.Exec)
		} else {
			out, err = runtime.RunInNetNS(ctx, nsPath, hc.Exec, runtime.Credential{UID: 65534, GID: 65534})
		}
		if err != nil {
			if len(out) > 200 {
				out = out[:200]
			}
			return fmt.Errorf("exec %v: %w: %s", hc.Exec, err, bytes.TrimSpace(out))
		}
		return nil
	}
	return nil
}
