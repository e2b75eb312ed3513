package main

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newNodesCmd(cf *clientFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "List cluster members as the agent sees them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := timeout(cmd)
			defer cancel()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			nodes, err := cl.Nodes(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(nodes)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tADDR\tSTATUS\tHEALTH\tCPU\tMEMORY\tLOAD\tREPLICAS\tLABELS")
			for _, n := range nodes {
				labels := make([]string, 0, len(n.Labels))
				for k, v := range n.Labels {
					labels = append(labels, k+"="+v)
				}
				sort.Strings(labels)
				health := n.Health
				if len(n.DisabledDrivers) > 0 {
					health += " (no " + strings.Join(n.DisabledDrivers, ", ") + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%dm\t%dMB\t%.0f%% cpu, %dMB\t%d\t%s\n",
					n.Name, n.Addr, n.Status, health, n.Capacity.CPUMillis, n.Capacity.MemoryMB,
					n.Load.CPUPercent, n.Load.MemoryUsedMB, n.Load.Replicas, strings.Join(labels, ","))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	return cmd
}

func newJoinCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "join ADDR [ADDR...]",
		Short: "Ask the agent to join other agents by gossip address",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := timeout(cmd)
			defer cancel()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			r, err := cl.Join(ctx, args)
			if err != nil {
				return err
			}
			fmt.Printf("joined: %d address(es) answered\n", r.Joined)
			return nil
		},
	}
}
