package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoalmesh/shoal/node"
)

func newKeygenCmd() *cobra.Command {
	var (
		dir   string
		force bool
	)
	cmd := &cobra.Command{
		Use:   "keygen [--dir DIR]",
		Short: "Make a cluster's credentials: gossip key, API tokens and cluster CA",
		Long: `With --dir, writes a new cluster's credentials into DIR (created 0700):

  gossip.key      the gossip key (base64, one line); encrypts gossip, keys p2p
  api.token       the API token: every API call
  api-read.token  a read-only API token: GET calls (lists, logs, events,
                  metrics) only; writes with it get 403
  ca.pem          the cluster CA's certificate (public): agents and clients
  ca.key          the cluster CA's key: every agent issues itself the
                  certificate of its HTTPS API with it

Secrets are mode 0600. Copy the directory to every machine and start each agent
with the files. Existing files are never replaced unless --force: new
credentials lock running agents out of each other.

Without --dir, prints a gossip key and API tokens as shell exports (no CA).`,
		Example: `  shoal keygen --dir /etc/shoal
  shoal agent --gossip-key-file /etc/shoal/gossip.key --api-token-file /etc/shoal/api.token \
    --api-read-token-file /etc/shoal/api-read.token --tls-ca /etc/shoal/ca.pem --tls-ca-key /etc/shoal/ca.key ...
  SHOAL_CACERT=/etc/shoal/ca.pem SHOAL_TOKEN_FILE=/etc/shoal/api.token shoal nodes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			if dir == "" {
				if force {
					return errors.New("--force goes with --dir")
				}
				return printExports(out)
			}
			abs, err := filepath.Abs(dir)
			if err != nil {
				return fmt.Errorf("--dir: %w", err)
			}
			creds, err := node.GenerateCredentials(abs, force, time.Now())
			if errors.Is(err, node.ErrCredentialsExist) {
				return fmt.Errorf("%w; a cluster's credentials are replaced only with --force (its agents need the new files, all at once)", err)
			}
			if err != nil {
				return err
			}
			printWritten(out, creds)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "write the credential files into this directory")
	cmd.Flags().BoolVar(&force, "force", false, "replace credential files that exist in --dir")
	return cmd
}

// printExports is the output of a plain `shoal keygen`, for scripts.
func printExports(out io.Writer) error {
	key, err := node.NewGossipKey()
	if err != nil {
		return err
	}
	token, err := node.NewAPIToken()
	if err != nil {
		return err
	}
	read, err := node.NewAPIToken()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "export SHOAL_GOSSIP_KEY=%s\n", key)
	fmt.Fprintf(out, "export SHOAL_API_TOKEN=%s\n", token)
	fmt.Fprintf(out, "export SHOAL_API_READ_TOKEN=%s\n", read)
	return nil
}

func printWritten(out io.Writer, c node.Credentials) {
	for _, f := range []struct{ name, what string }{
		{node.GossipKeyFile, "gossip key (secret, 0600)"},
		{node.APITokenFile, "API token: every call (secret, 0600)"},
		{node.APIReadTokenFile, "read-only API token: GET calls, logs, events (secret, 0600)"},
		{node.CACertFile, "cluster CA certificate (public, 0644)"},
		{node.CAKeyFile, "cluster CA key: agents issue their API certificates with it (secret, 0600)"},
	} {
		fmt.Fprintf(out, "wrote %-*s %s\n", len(c.Path(node.APIReadTokenFile)), c.Path(f.name), f.what)
	}
	fmt.Fprintf(out, `
Copy %[1]s to every machine (root only), then start each agent with:
  shoal agent --gossip-key-file %[2]s --api-token-file %[3]s \
    --api-read-token-file %[4]s --tls-ca %[5]s --tls-ca-key %[6]s ...
and talk to any node over HTTPS:
  export SHOAL_CACERT=%[5]s SHOAL_TOKEN_FILE=%[3]s
  SHOAL_ADDR=NODE:7700 shoal nodes
`, c.Dir, c.Path(node.GossipKeyFile), c.Path(node.APITokenFile), c.Path(node.APIReadTokenFile),
		c.Path(node.CACertFile), c.Path(node.CAKeyFile))
}
