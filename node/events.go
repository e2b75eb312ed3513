package node

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/shoalmesh/shoal/api"
)

// maxEvents is how many recent events a node keeps in memory.
const maxEvents = 1000

// eventLog is a ring of this node's recent events: replicas started,
// stopped, exited, handed over, health flips and image pulls. It is what
// an operator reads to learn why a replica is where it is. Safe for
// concurrent use.
type eventLog struct {
	node string
	mu   sync.Mutex
	seq  uint64
	ring []api.Event
}

func newEventLog(node string) *eventLog { return &eventLog{node: node} }

// add records an event; job and replica may be empty/-1 for node events.
func (l *eventLog) add(kind, job string, replica int, msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	ev := api.Event{Seq: l.seq, Time: time.Now().UTC(), Node: l.node, Kind: kind, Job: job, Replica: replica, Message: msg}
	if len(l.ring) == maxEvents {
		copy(l.ring, l.ring[1:])
		l.ring = l.ring[:maxEvents-1]
	}
	l.ring = append(l.ring, ev)
}

// since returns the events after seq, oldest first, optionally of one job.
func (l *eventLog) since(seq uint64, job string) []api.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := []api.Event{}
	for _, ev := range l.ring {
		if ev.Seq > seq && (job == "" || ev.Job == job) {
			out = append(out, ev)
		}
	}
	return out
}

// handleEvents answers GET /v1/events?since=SEQ&job=ID with this node's
// recent events.
func (a *Agent) handleEvents(w http.ResponseWriter, r *http.Request) {
	var since uint64
	if s := r.URL.Query().Get("since"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "since: want a sequence number, got %q", s)
			return
		}
		since = v
	}
	writeJSON(w, http.StatusOK, a.events.since(since, r.URL.Query().Get("job")))
}
