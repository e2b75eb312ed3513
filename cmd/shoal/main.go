// Command shoal is the Shoal agent and its command-line client.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/shoalmesh/shoal/api"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func main() {
	root := newRootCmd()
	if err := root.Execute(); err != nil {
		fmt.Fprintf(os.Stderr, "shoal: %v\n", err)
		code := 1
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		os.Exit(code)
	}
}

// clientFlags are shared by every verb that talks to an agent.
type clientFlags struct {
	addr  string
	token string
}

func (f *clientFlags) client() *api.Client {
	return api.NewClient(f.addr, f.token, nil)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newRootCmd() *cobra.Command {
	cf := &clientFlags{}
	root := &cobra.Command{
		Use:           "shoal",
		Short:         "Shoal: a masterless, gossip-based container mesh",
		Long:          "Shoal runs the same agent on every machine. Agents find each other by gossip,\nagree on placement by hashing, and serve the same HTTP API on every node.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	root.PersistentFlags().StringVar(&cf.addr, "addr", envOr("SHOAL_ADDR", api.DefaultAddr), "agent API address (env SHOAL_ADDR)")
	root.PersistentFlags().StringVar(&cf.token, "token", os.Getenv("SHOAL_TOKEN"), "API bearer token (env SHOAL_TOKEN)")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return fmt.Errorf("%w (see '%s --help')", err, c.CommandPath())
	})
	root.AddCommand(
		newAgentCmd(),
		newNodesCmd(cf),
		newJoinCmd(cf),
		newRunCmd(cf),
		newPsCmd(cf),
		newRmCmd(cf),
		newInspectCmd(cf),
		newLogsCmd(cf),
		newImageCmd(cf),
		newEventsCmd(cf),
		newServicesCmd(cf),
		newWaitCmd(cf),
		newDataCmd(cf, api.KindSecret),
		newDataCmd(cf, api.KindConfig),
		newKeygenCmd(),
		newCleanupCmd(),
		newDevCmd(),
	)
	return root
}
