// Command hello is Shoal's demo and test workload: a tiny HTTP service that
// answers "hello from <replica>" and has a health endpoint that can be
// made to fail, so health checks can be shown.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

func main() {
	name := os.Getenv("SHOAL_JOB") + "-" + os.Getenv("SHOAL_REPLICA")
	if name == "-" {
		name, _ = os.Hostname()
	}
	addr := ":" + envOr("PORT", "8080")
	var sick atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "hello from %s\n", name)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if sick.Load() {
			http.Error(w, "sick", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/sick", func(w http.ResponseWriter, _ *http.Request) {
		sick.Store(true)
		fmt.Fprintln(w, "now failing /healthz")
	})
	mux.HandleFunc("/well", func(w http.ResponseWriter, _ *http.Request) {
		sick.Store(false)
		fmt.Fprintln(w, "/healthz ok again")
	})
	// /burn?seconds=N keeps one CPU busy for N seconds (default 30), so
	// autoscaling on CPU can be shown.
	mux.HandleFunc("/burn", func(w http.ResponseWriter, r *http.Request) {
		secs, err := strconv.Atoi(r.URL.Query().Get("seconds"))
		if err != nil || secs <= 0 {
			secs = 30
		}
		go burn(time.Duration(secs) * time.Second)
		fmt.Fprintf(w, "burning one CPU for %ds\n", secs)
	})
	log.Printf("%s listening on %s", name, addr)
	log.Fatal(http.ListenAndServe(addr, mux))
}

func burn(d time.Duration) {
	end := time.Now().Add(d)
	for x := 0; time.Now().Before(end); x++ {
		_ = x * x
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
