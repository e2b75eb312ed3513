package main

import (
	"fmt"
	"net/http"
	"os"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/node"
)

// newKeysCmd is `shoal keys`: rotate the gossip key of a running cluster.
// Keys are read from files and sent in request bodies, never taken as
// arguments (every local user can read a command line).
func newKeysCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "List and rotate the cluster's gossip keys (secrets are sealed again under the new key)",
		Long: "Rotate the gossip key without stopping the cluster:\n\n" +
			"  shoal keygen --dir new            # a new gossip.key\n" +
			"  shoal keys install new/gossip.key # every node learns it\n" +
			"  shoal keys use new/gossip.key     # every node encrypts with it; secrets are sealed again\n" +
			"  shoal keys remove old/gossip.key  # every node forgets the old key\n\n" +
			"Keys are shown by id, never by value. The p2p network key does not rotate (see the README).",
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "Show the keys the members hold, by id",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return keysCall(cmd, cf, http.MethodGet, "/v1/keys", "")
		},
	}
	op := func(use, path, short string) *cobra.Command {
		return &cobra.Command{
			Use:   use + " KEYFILE",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return keysCall(cmd, cf, http.MethodPost, path, args[0])
			},
		}
	}
	cmd.AddCommand(list,
		op("install", "/v1/keys", "Add a gossip key to every member's keyring (it is not used to encrypt yet)"),
		op("use", "/v1/keys/use", "Make an installed key every member's primary and seal every secret under it"),
		op("remove", "/v1/keys/remove", "Remove a gossip key from every member's keyring (refused while a secret is still sealed under it)"),
	)
	return cmd
}

func keysCall(cmd *cobra.Command, cf *clientFlags, method, path, keyFile string) error {
	var in any
	if keyFile != "" {
		raw, err := node.ReadSecretFile(keyFile)
		if err != nil {
			return err
		}
		key, err := gossip.ParseKey(raw)
		if err != nil {
			return fmt.Errorf("%s: %w", keyFile, err)
		}
		fmt.Fprintf(os.Stderr, "key %s from %s\n", gossip.KeyID(key), keyFile)
		in = node.KeyRequest{Key: raw}
	}
	c, err := cf.client()
	if err != nil {
		return err
	}
	ctx, cancel := timeout(cmd)
	defer cancel()
	var out node.KeysResponse
	if err := c.Do(ctx, method, path, in, &out); err != nil {
		return err
	}
	printKeys(out)
	return nil
}

func printKeys(out node.KeysResponse) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "KEY ID\tINSTALLED\tPRIMARY\tSECRETS")
	for _, k := range out.Keys {
		fmt.Fprintf(tw, "%s\t%d/%d\t%d/%d\t%d\n", orDash(k.ID), k.Installed, out.Nodes, k.Primary, out.Nodes, k.Secrets)
	}
	tw.Flush()
	if out.Responded < out.Nodes {
		fmt.Printf("%d of %d members answered\n", out.Responded, out.Nodes)
	}
	if out.Resealed > 0 {
		fmt.Printf("%d secrets sealed again under the primary key\n", out.Resealed)
	}
	if len(out.Unopenable) > 0 {
		fmt.Printf("secrets no key opens: %v\n", out.Unopenable)
	}
	nodes := make([]string, 0, len(out.Messages))
	for n := range out.Messages {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	for _, n := range nodes {
		fmt.Printf("%s: %s\n", orDash(n), out.Messages[n])
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
