package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalmesh/shoal/runtime"
)

func newCleanupCmd() *cobra.Command {
	var namespace, address string
	cmd := &cobra.Command{
		Use:   "cleanup --containerd-namespace NS",
		Short: "Remove every container, image, task, network namespace and cgroup of a stopped agent",
		Long: `Tasks outlive their agent so that a restarted agent adopts them. When an
agent is retired for good, cleanup kills its tasks and removes what they used.
Run it on the agent's machine, as root, with the agent's --containerd-namespace.`,
		Args: cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			if err := runtime.ValidateNamespace(namespace); err != nil {
				return fmt.Errorf("--containerd-namespace: %w", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// Containers first: their cgroups and network namespaces are
			// the ones Cleanup would otherwise tear out from under them.
			if err := runtime.CleanupContainerd(ctx, address, namespace); err != nil {
				return err
			}
			if err := runtime.Cleanup(namespace); err != nil {
				return err
			}
			fmt.Printf("removed tasks of namespace %s\n", namespace)
			return nil
		},
	}
	cmd.Flags().StringVar(&namespace, "containerd-namespace", "", "the agent's runtime namespace (required)")
	cmd.Flags().StringVar(&address, "containerd", runtime.DefaultContainerdAddress, "containerd socket")
	_ = cmd.MarkFlagRequired("containerd-namespace")
	return cmd
}
