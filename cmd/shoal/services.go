package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newServicesCmd(cf *clientFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "services",
		Short: "List services: virtual IP, port, node port, strategy and endpoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := timeout(cmd)
			defer cancel()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			svcs, err := cl.Services(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(svcs)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SERVICE\tVIP\tPORT\tNODE PORT\tSTRATEGY\tENDPOINTS")
			for _, s := range svcs {
				var eps []string
				for _, ep := range s.Endpoints {
					e := fmt.Sprintf("%s:%d", ep.IP, ep.Port)
					if !ep.Healthy {
						e += "(unhealthy)"
					}
					eps = append(eps, e)
				}
				np := "-"
				if s.NodePort != 0 {
					np = fmt.Sprint(s.NodePort)
				}
				if len(eps) == 0 {
					eps = []string{"none"}
				}
				fmt.Fprintf(tw, "%s\t%s\t%d/%s\t%s\t%s\t%s\n", s.Name, s.VIP, s.Port, s.Protocol, np, s.Strategy, strings.Join(eps, " "))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
