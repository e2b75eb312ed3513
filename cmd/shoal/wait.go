package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalmesh/shoal/api"
)

func newWaitCmd(cf *clientFlags) *cobra.Command {
	var limit time.Duration
	cmd := &cobra.Command{
		Use:   "wait JOB",
		Short: "Wait until every replica of a job runs (and passes its health check, and is in the called node's load balancer)",
		Long: `Polls the called node until each of the job's replicas runs on an alive node,
passes its health check when the job has one, and, for a job with a service,
is a healthy endpoint of that service on the called node. Prints what is
missing while it waits; exits non-zero after --timeout.`,
		Example: "  shoal run -f web.yaml && shoal wait web",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, limit)
			defer cancel()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			began := time.Now()
			last := ""
			for {
				ready, why, err := jobReady(ctx, cl, args[0])
				if err != nil {
					return err
				}
				if ready {
					fmt.Printf("%s: %s (%s)\n", args[0], why, time.Since(began).Round(100*time.Millisecond))
					return nil
				}
				if why != last {
					fmt.Printf("%s: %s\n", args[0], why)
					last = why
				}
				select {
				case <-ctx.Done():
					if cmd.Context().Err() == nil && ctx.Err() == context.DeadlineExceeded {
						return fmt.Errorf("%s not ready after %s: %s", args[0], limit, why)
					}
					return ctx.Err()
				case <-time.After(250 * time.Millisecond):
				}
			}
		},
	}
	cmd.Flags().DurationVar(&limit, "timeout", 2*time.Minute, "give up after this long")
	return cmd
}

// jobReady reports whether every replica of the job is ready, and if not
// what is missing.
func jobReady(ctx context.Context, c *api.Client, id string) (bool, string, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := c.Job(rctx, id)
	if err != nil {
		return false, "", err
	}
	want := 1
	if st.Replicas != nil {
		want = *st.Replicas
	}
	ready := map[int]bool{}
	for _, a := range st.Allocations {
		if a.State == "running" && (st.Health == nil || a.Healthy != nil && *a.Healthy) {
			ready[a.Replica] = true
		}
	}
	n := 0
	for r := 0; r < want; r++ {
		if ready[r] {
			n++
		}
	}
	if n < want {
		what := "running"
		if st.Health != nil {
			what = "running and healthy"
		}
		return false, fmt.Sprintf("%d of %d replicas %s", n, want, what), nil
	}
	if st.Service == nil {
		return true, fmt.Sprintf("%d of %d replicas running", n, want), nil
	}
	svcs, err := c.Services(rctx)
	if err != nil {
		return false, "", err
	}
	for _, s := range svcs {
		if s.Name != st.Service.Name {
			continue
		}
		healthy := 0
		for _, ep := range s.Endpoints {
			if ep.Healthy {
				healthy++
			}
		}
		if healthy < want {
			return false, fmt.Sprintf("%d of %d replicas in the load balancer", healthy, want), nil
		}
		return true, fmt.Sprintf("%d of %d replicas running and serving %s:%d", n, want, s.VIP, s.Port), nil
	}
	return false, "service not programmed yet", nil
}
