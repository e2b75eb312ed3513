package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/shoalmesh/shoal/api"
)

// newDataCmd is `shoal secret` or `shoal config`: named sets of files that
// jobs mount (task.secrets, task.configs).
func newDataCmd(cf *clientFlags, kind string) *cobra.Command {
	what := map[string]string{
		api.KindSecret: "Store secrets (sealed at rest, never shown by the API) that jobs mount as read-only files",
		api.KindConfig: "Store configs that jobs mount as read-only files",
	}[kind]
	cmd := &cobra.Command{Use: kind, Short: what}
	var files []string
	var stdinKey string
	set := &cobra.Command{
		Use:   "set NAME [KEY=VALUE...]",
		Short: "Create or replace a " + kind + ": each key becomes a file in the mounted directory",
		Example: fmt.Sprintf("  shoal %s set db password=hunter2 --from-file ca.pem=./ca.pem\n"+
			"  (a replica started afterwards sees /run/secrets/db/password; running ones keep what they have)", kind),
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d := api.Data{Data: map[string]string{}}
			for _, kv := range args[1:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("%q: want KEY=VALUE", kv)
				}
				d.Data[k] = v
			}
			if stdinKey != "" {
				// A value on stdin stays out of ps and shell history.
				raw, err := io.ReadAll(io.LimitReader(os.Stdin, api.MaxDataBytes+1))
				if err != nil {
					return fmt.Errorf("--stdin %s: %w", stdinKey, err)
				}
				d.Data[stdinKey] = string(raw)
			}
			for _, kp := range files {
				k, p, ok := strings.Cut(kp, "=")
				if !ok {
					k, p = filepath.Base(kp), kp
				}
				raw, err := os.ReadFile(p)
				if err != nil {
					return fmt.Errorf("--from-file %s: %w", kp, err)
				}
				d.Data[k] = string(raw)
			}
			ctx, cancel := timeout(cmd)
			defer cancel()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			info, err := cl.PutData(ctx, kind, args[0], d)
			if err != nil {
				return err
			}
			fmt.Printf("%s %s stored: %s (%d bytes)\n", kind, info.Name, strings.Join(info.Keys, ", "), info.Bytes)
			return nil
		},
	}
	set.Flags().StringVar(&stdinKey, "stdin", "", "KEY: read that key's value from standard input")
	set.Flags().StringArrayVar(&files, "from-file", nil, "KEY=PATH (or PATH, keyed by its base name): a file's content as a value")
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List " + kind + "s (names and keys)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := timeout(cmd)
			defer cancel()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			list, err := cl.ListData(ctx, kind)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKEYS\tBYTES")
			for _, d := range list {
				fmt.Fprintf(tw, "%s\t%s\t%d\n", d.Name, strings.Join(d.Keys, ","), d.Bytes)
			}
			return tw.Flush()
		},
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Delete a " + kind + " (replicas that mount it keep their copy until they restart)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := timeout(cmd)
			defer cancel()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			if err := cl.DeleteData(ctx, kind, args[0]); err != nil {
				return err
			}
			fmt.Printf("%s %s deleted\n", kind, args[0])
			return nil
		},
	}
	cmd.AddCommand(set, ls, rm)
	if kind == api.KindConfig {
		cmd.AddCommand(&cobra.Command{
			Use:   "get NAME",
			Short: "Print a config's keys and values",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				ctx, cancel := timeout(cmd)
				defer cancel()
				cl, err := cf.client()
				if err != nil {
					return err
				}
				info, err := cl.GetData(ctx, kind, args[0])
				if err != nil {
					return err
				}
				return printJSON(info)
			},
		})
	}
	return cmd
}
