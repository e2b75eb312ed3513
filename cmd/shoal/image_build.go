package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/shoalmesh/shoal/devcluster"
)

func newImageBuildCmd() *cobra.Command {
	var (
		img    = devcluster.BinaryImage{User: devcluster.DefaultImageUser}
		output string
	)
	cmd := &cobra.Command{
		Use:   "build --binary PATH --ref REF -o FILE",
		Short: "Package a static binary as a one-layer OCI image archive",
		Long: `Writes an OCI image archive holding one file, the binary, at /<basename>,
which is also the entrypoint (followed by any --entrypoint-arg). The image has
nothing else: no shell, no libraries, so the binary must be statically linked
(for Go: CGO_ENABLED=0 go build). Load the archive with 'shoal image load' or
'shoal dev up --image'.`,
		Example: `  CGO_ENABLED=0 go build -o /tmp/hello ./examples/hello
  shoal image build --binary /tmp/hello --ref shoal.dev/hello:1 -o hello.tar
  shoal image load hello.tar`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output == "-" {
				return img.Write(os.Stdout)
			}
			if err := img.WriteFile(output); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s: image %s, entrypoint %s\n", output, img.Ref,
				strings.Join(append([]string{"/" + filepath.Base(img.Binary)}, img.Args...), " "))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&img.Binary, "binary", "", "static executable to package (required)")
	f.StringVar(&img.Ref, "ref", "", "image name, e.g. shoal.dev/hello:1 (required)")
	f.StringArrayVar(&img.Args, "entrypoint-arg", nil, "argument after the binary in the entrypoint (repeatable)")
	f.StringArrayVar(&img.Env, "env", nil, "environment KEY=VALUE (repeatable)")
	f.StringVar(&img.User, "user", img.User, "user[:group] the process runs as; empty for root")
	f.StringVarP(&output, "output", "o", "", "archive file to write, - for stdout (required)")
	for _, name := range []string{"binary", "ref", "output"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}
