package runtime

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/platforms"
	"github.com/distribution/reference"
)

// Image is an image in the agent's containerd namespace.
type Image struct {
	Name      string    `json:"name"`
	Digest    string    `json:"digest"`
	Size      int64     `json:"size"`
	CreatedAt time.Time `json:"created_at"`
}

// ImportImage reads an OCI image archive (an OCI layout in a tar, as
// written by WriteImageArchive, `ctr export` or `docker save` in OCI
// mode) into the namespace, names each image after its
// io.containerd.image.name or full org.opencontainers.image.ref.name
// annotation, and unpacks it for this machine's platform so a replica
// starts without further work. The reader is consumed as a stream; the
// content goes straight into containerd's content store.
func (c *Containerd) ImportImage(ctx context.Context, r io.Reader) ([]Image, error) {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("import image: %w", err)
	}
	imgs, err := cl.Import(ctx, r,
		client.WithImportPlatform(platforms.Default()),
		client.WithImageRefTranslator(fullRefName))
	if err != nil {
		return nil, fmt.Errorf("import image: %w", err)
	}
	if len(imgs) == 0 {
		return nil, fmt.Errorf("import image: %w: the archive names no image (set the io.containerd.image.name or a full org.opencontainers.image.ref.name annotation in its index.json)", ErrInvalidSpec)
	}
	out := make([]Image, 0, len(imgs))
	for _, img := range imgs {
		image := client.NewImageWithPlatform(cl, img, platforms.Default())
		if err := image.Unpack(ctx, c.cfg.Snapshotter); err != nil {
			return nil, fmt.Errorf("import image: unpack %s: %w", img.Name, err)
		}
		size, _ := image.Size(ctx)
		out = append(out, Image{Name: img.Name, Digest: img.Target.Digest.String(), Size: size, CreatedAt: img.CreatedAt})
		c.log.Info("imported image", "image", img.Name, "digest", img.Target.Digest, "bytes", size)
	}
	return out, nil
}

// fullRefName accepts an org.opencontainers.image.ref.name annotation as
// an image name only when it is a full reference: the OCI spec also allows
// bare tags ("1.0") there, which name nothing on their own.
func fullRefName(name string) string {
	named, err := reference.ParseNormalizedNamed(name)
	if err != nil || reference.FamiliarName(named) == name && !hasTagOrDigest(named) {
		return ""
	}
	return named.String()
}

func hasTagOrDigest(n reference.Named) bool {
	_, tagged := n.(reference.Tagged)
	_, digested := n.(reference.Digested)
	return tagged || digested
}

// ListImages lists the images of the namespace by name.
func (c *Containerd) ListImages(ctx context.Context) ([]Image, error) {
	cl, ctx, err := c.conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	imgs, err := cl.ImageService().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	out := make([]Image, 0, len(imgs))
	for _, img := range imgs {
		size, _ := img.Size(ctx, cl.ContentStore(), platforms.Default())
		out = append(out, Image{Name: img.Name, Digest: img.Target.Digest.String(), Size: size, CreatedAt: img.CreatedAt})
	}
	slices.SortFunc(out, func(a, b Image) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}
