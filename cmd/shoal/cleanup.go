package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/shoalmesh/shoal/runtime"
)

func newCleanupCmd() *cobra.Command {
	var namespace string
	cmd := &cobra.Command{
		Use:   "cleanup --containerd-namespace NS",
		Short: "Kill every task of a stopped agent and remove its network namespaces and cgroups",
		Long: `Tasks outlive their agent so that a restarted agent adopts them. When an
agent is retired for good, cleanup kills its tasks and removes what they used.
Run it on the agent's machine, as root, with the agent's --containerd-namespace.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := runtime.ValidateNamespace(namespace); err != nil {
				return fmt.Errorf("--containerd-namespace: %w", err)
			}
			if err := runtime.Cleanup(namespace); err != nil {
				return err
			}
			fmt.Printf("removed tasks of namespace %s\n", namespace)
			return nil
		},
	}
	cmd.Flags().StringVar(&namespace, "containerd-namespace", "", "the agent's runtime namespace (required)")
	_ = cmd.MarkFlagRequired("containerd-namespace")
	return cmd
}
