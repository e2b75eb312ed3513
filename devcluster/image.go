package devcluster

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/distribution/reference"

	shoalrt "github.com/shoalmesh/shoal/runtime"
)

// BinaryImage describes a one-layer image holding a single static
// executable, the way Shoal ships demo and test workloads without a
// registry or a container build tool.
type BinaryImage struct {
	// Binary is the executable on this machine; it lands at /<basename>
	// in the image and is the entrypoint.
	Binary string
	// Ref names the image, e.g. shoal.dev/hello:1.
	Ref string
	// Args follow the binary in the entrypoint.
	Args []string
	// Env holds KEY=VALUE entries.
	Env []string
	// User runs the process, e.g. 65534:65534 (nobody); empty is root.
	User string
}

// DefaultImageUser is nobody: the binary needs nothing more.
const DefaultImageUser = "65534:65534"

// HelloRef is the image Up builds from examples/hello.
const HelloRef = "shoal.dev/hello:1"

// Write checks the image's inputs and writes it as an OCI image archive.
func (b BinaryImage) Write(w io.Writer) error {
	if _, err := reference.ParseDockerRef(b.Ref); err != nil {
		return fmt.Errorf("image reference %q: %w", b.Ref, err)
	}
	for _, kv := range b.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("env %q: want KEY=VALUE", kv)
		}
	}
	data, err := readStaticBinary(b.Binary)
	if err != nil {
		return err
	}
	name := "/" + filepath.Base(b.Binary)
	cfg := shoalrt.ImageConfig{
		Entrypoint: append([]string{name}, b.Args...),
		Env:        b.Env,
		User:       b.User,
	}
	return shoalrt.WriteImageArchive(w, b.Ref, cfg, []shoalrt.ImageFile{{Path: name, Mode: 0o755, Data: data}})
}

// WriteFile writes the archive to file, replacing it only once complete.
func (b BinaryImage) WriteFile(file string) error {
	if _, err := os.Stat(filepath.Dir(file)); err != nil {
		return fmt.Errorf("write image archive %s: %w", file, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*")
	if err != nil {
		return fmt.Errorf("write image archive %s: %w", file, err)
	}
	defer os.Remove(tmp.Name()) // a no-op once renamed
	if err := b.Write(tmp); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write image archive %s: %w", file, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write image archive %s: %w", file, err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("write image archive %s: %w", file, err)
	}
	return nil
}

// readStaticBinary reads an executable and refuses what cannot run alone
// in an otherwise empty image: a dynamically linked ELF (no loader or
// libraries there) or a script (no interpreter).
func readStaticBinary(file string) ([]byte, error) {
	if file == "" {
		return nil, errors.New("no binary given")
	}
	fi, err := os.Stat(file)
	if err != nil {
		return nil, fmt.Errorf("binary: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("binary %s is not a regular file", file)
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("binary: %w", err)
	}
	ef, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("binary %s is not an ELF executable (the image has no shell or interpreter): %w", file, err)
	}
	defer ef.Close()
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, fmt.Errorf("binary %s is dynamically linked; the image has no libraries (build Go programs with CGO_ENABLED=0)", file)
		}
	}
	return data, nil
}

// canBuildHello reports whether src is a Shoal checkout (it has
// examples/hello) and Go is installed to build it.
func canBuildHello(src string) bool {
	if _, err := exec.LookPath("go"); err != nil {
		return false
	}
	_, err := os.Stat(filepath.Join(src, "examples", "hello", "main.go"))
	return err == nil
}

// buildHello builds examples/hello under src statically into dir and
// packages it as HelloRef, returning the archive's path.
func buildHello(ctx context.Context, src, dir string) (archive string, err error) {
	bin := filepath.Join(dir, "hello")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "./examples/hello")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build examples/hello: %w\n%s", err, out)
	}
	archive = filepath.Join(dir, "hello.tar")
	img := BinaryImage{Binary: bin, Ref: HelloRef, User: DefaultImageUser}
	if err := img.WriteFile(archive); err != nil {
		return "", fmt.Errorf("package examples/hello: %w", err)
	}
	return archive, nil
}
