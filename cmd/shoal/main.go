// Command shoal is the Shoal agent and its command-line client.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/node"
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
		fmt.Fprintf(os.Stderr, "shoal: %v\n", withAdvice(err))
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
	addr      string
	token     string
	tokenFile string
	cacert    string

	c *api.Client
}

// client returns the API client the flags and environment describe, made
// once per command so that repeated calls (events -f, wait) reuse its
// connections. The token comes from --token, --token-file, SHOAL_TOKEN or
// SHOAL_TOKEN_FILE, in that order; the CA from --cacert or SHOAL_CACERT.
func (f *clientFlags) client() (*api.Client, error) {
	if f.c != nil {
		return f.c, nil
	}
	token, err := f.resolveToken()
	if err != nil {
		return nil, err
	}
	o := api.ClientOptions{Token: token}
	ca, from := f.cacert, "--cacert"
	if ca == "" {
		ca, from = os.Getenv("SHOAL_CACERT"), "SHOAL_CACERT"
	}
	if ca != "" {
		if o.RootCAs, err = api.LoadCACert(ca); err != nil {
			return nil, fmt.Errorf("%s: %w", from, err)
		}
	}
	f.c = api.NewClientWithOptions(f.addr, o)
	return f.c, nil
}

func (f *clientFlags) resolveToken() (string, error) {
	switch {
	case f.token != "" && f.tokenFile != "":
		return "", errors.New("give --token or --token-file, not both")
	case f.token != "":
		return f.token, nil
	case f.tokenFile != "":
		return readTokenFile("--token-file", f.tokenFile)
	}
	env, envFile := os.Getenv("SHOAL_TOKEN"), os.Getenv("SHOAL_TOKEN_FILE")
	switch {
	case env != "" && envFile != "":
		return "", errors.New("SHOAL_TOKEN and SHOAL_TOKEN_FILE are both set: unset one")
	case envFile != "":
		return readTokenFile("SHOAL_TOKEN_FILE", envFile)
	}
	return env, nil
}

func readTokenFile(from, path string) (string, error) {
	v, err := node.ReadSecretFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", from, err)
	}
	return v, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// withAdvice adds what to do to the errors of a connection the CLI's
// settings got wrong.
func withAdvice(err error) error {
	if errors.Is(err, api.ErrUntrustedCert) || errors.Is(err, api.ErrAgentWantsHTTPS) {
		return fmt.Errorf("%w (--cacert or SHOAL_CACERT)", err)
	}
	return err
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
	pf := root.PersistentFlags()
	pf.StringVar(&cf.addr, "addr", envOr("SHOAL_ADDR", api.DefaultAddr), "agent API address: host:port (HTTPS when a CA is given), or an https:// or http:// URL (env SHOAL_ADDR)")
	// No default from the environment: --help would print the token.
	pf.StringVar(&cf.token, "token", "", "API bearer token (env SHOAL_TOKEN; discouraged on the command line, which every local user can read)")
	pf.StringVar(&cf.tokenFile, "token-file", "", "file holding the API bearer token (env SHOAL_TOKEN_FILE)")
	pf.StringVar(&cf.cacert, "cacert", "", "cluster CA certificate (ca.pem) to verify the agent's HTTPS certificate (env SHOAL_CACERT)")
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
		newKeysCmd(cf),
		newCleanupCmd(),
		newDevCmd(),
	)
	return root
}
