package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newImageCmd(cf *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Load and list container images on a node",
	}
	cmd.AddCommand(newImageLoadCmd(cf), newImageLsCmd(cf), newImageBuildCmd())
	return cmd
}

func newImageLoadCmd(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "load FILE",
		Short: "Import an OCI image archive (FILE, or - for stdin) into the called node's containerd namespace",
		Long: `Uploads an OCI image archive (an OCI layout in a tar, e.g. from
'ctr image export' or a build tool's OCI exporter) to the agent at --addr,
which imports and unpacks it. Images are per node: load the image on every
node that may run the job, or use an image the nodes can pull.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r io.Reader = os.Stdin
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return fmt.Errorf("open image archive: %w", err)
				}
				defer f.Close()
				r = f
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			imgs, err := cl.LoadImage(ctx, r)
			if err != nil {
				return fmt.Errorf("load image: %w", err)
			}
			for _, img := range imgs {
				fmt.Printf("loaded %s (%s, %s)\n", img.Name, shortDigest(img.Digest), humanBytes(img.Size))
			}
			return nil
		},
	}
}

func newImageLsCmd(cf *clientFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the images of the called node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := timeout(cmd)
			defer cancel()
			cl, err := cf.client()
			if err != nil {
				return err
			}
			imgs, err := cl.Images(ctx)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(imgs)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDIGEST\tSIZE")
			for _, img := range imgs {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", img.Name, shortDigest(img.Digest), humanBytes(img.Size))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		d = d[:12]
	}
	return d
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
