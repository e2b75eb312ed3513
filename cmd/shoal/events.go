package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

func newEventsCmd(cf *clientFlags) *cobra.Command {
	var job string
	var follow, asJSON bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show the called node's recent events (replicas started, exited, handed over, health flips, image pulls)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			var since uint64
			for {
				evs, err := cl.Events(ctx, since, job)
				if err != nil {
					if ctx.Err() != nil {
						return nil
					}
					return err
				}
				if asJSON {
					for _, ev := range evs {
						if err := printJSONLine(ev); err != nil {
							return err
						}
					}
				} else {
					tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					if since == 0 && !follow {
						fmt.Fprintln(tw, "TIME\tNODE\tKIND\tREPLICA\tMESSAGE")
					}
					for _, ev := range evs {
						rep := "-"
						if ev.Job != "" {
							rep = fmt.Sprintf("%s-%d", ev.Job, ev.Replica)
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", ev.Time.Local().Format("15:04:05.000"), ev.Node, ev.Kind, rep, ev.Message)
					}
					tw.Flush()
				}
				if len(evs) > 0 {
					since = evs[len(evs)-1].Seq
				}
				if !follow {
					return nil
				}
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Second):
				}
			}
		},
	}
	cmd.Flags().StringVar(&job, "job", "", "only this job's events")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return cmd
}

func printJSONLine(v any) error {
	return json.NewEncoder(os.Stdout).Encode(v)
}
