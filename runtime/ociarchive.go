package runtime

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"path"
	goruntime "runtime"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// ImageFile is one file of an image built by WriteImageArchive.
type ImageFile struct {
	// Path is absolute inside the image, e.g. /hello.
	Path string
	Mode int64
	Data []byte
}

// ImageConfig is the runtime part of an image built by WriteImageArchive.
type ImageConfig struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	// User is the user the process runs as, e.g. "65534:65534"; empty is
	// root inside the container.
	User string
}

// WriteImageArchive writes a single-layer image for this machine's
// platform as an OCI image archive (an OCI layout in a tar) named ref, the
// format ImportImage and `ctr import` read. It is how Shoal ships its own
// demo and test images without a registry or a container build tool: the
// files are usually one static Go binary.
func WriteImageArchive(w io.Writer, ref string, cfg ImageConfig, files []ImageFile) error {
	named, err := normalizeRef(ref)
	if err != nil {
		return fmt.Errorf("write image archive: %w", err)
	}
	layer, diffID, err := layerTarGz(files)
	if err != nil {
		return fmt.Errorf("write image archive: %w", err)
	}
	created := time.Unix(0, 0).UTC() // reproducible: same files, same digest
	config := ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{Architecture: goruntime.GOARCH, OS: "linux"},
		Config: ocispec.ImageConfig{
			Entrypoint: cfg.Entrypoint, Cmd: cfg.Cmd, User: cfg.User,
			Env: append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, cfg.Env...),
		},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
	}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return fmt.Errorf("write image archive: encode config: %w", err)
	}
	manifest := ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    descriptorOf(ocispec.MediaTypeImageConfig, configJSON),
		Layers:    []ocispec.Descriptor{descriptorOf(ocispec.MediaTypeImageLayerGzip, layer)},
	}
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return fmt.Errorf("write image archive: encode manifest: %w", err)
	}
	mdesc := descriptorOf(ocispec.MediaTypeImageManifest, manifestJSON)
	mdesc.Platform = &config.Platform
	mdesc.Annotations = map[string]string{
		"io.containerd.image.name": named,
		ocispec.AnnotationRefName:  named,
	}
	index := ocispec.Index{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageIndex,
		Manifests: []ocispec.Descriptor{mdesc},
	}
	indexJSON, err := json.Marshal(index)
	if err != nil {
		return fmt.Errorf("write image archive: encode index: %w", err)
	}

	tw := tar.NewWriter(w)
	entries := []struct {
		name string
		data []byte
	}{
		{ocispec.ImageLayoutFile, []byte(`{"imageLayoutVersion":"` + ocispec.ImageLayoutVersion + `"}`)},
		{"index.json", indexJSON},
		{blobPath(configJSON), configJSON},
		{blobPath(layer), layer},
		{blobPath(manifestJSON), manifestJSON},
	}
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: created}); err != nil {
			return fmt.Errorf("write image archive: %w", err)
		}
	}
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: e.name, Mode: 0o644, Size: int64(len(e.data)), ModTime: created}); err != nil {
			return fmt.Errorf("write image archive: %w", err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return fmt.Errorf("write image archive: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write image archive: %w", err)
	}
	return nil
}

func descriptorOf(mediaType string, data []byte) ocispec.Descriptor {
	return ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(data), Size: int64(len(data))}
}

func blobPath(data []byte) string {
	sum := sha256.Sum256(data)
	return "blobs/sha256/" + hex.EncodeToString(sum[:])
}

// layerTarGz builds the gzipped layer and its diff ID (the digest of the
// uncompressed tar), with the parent directories of every file.
func layerTarGz(files []ImageFile) (layer []byte, diffID digest.Digest, err error) {
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	mtime := time.Unix(0, 0).UTC()
	dirs := map[string]bool{}
	var dirList []string
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			return nil, "", fmt.Errorf("image file %q: path must be absolute and clean", f.Path)
		}
		for d := path.Dir(f.Path); d != "/"; d = path.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				dirList = append(dirList, d)
			}
		}
	}
	slices.Sort(dirList) // parents sort before their children
	for _, d := range dirList {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: mtime}); err != nil {
			return nil, "", err
		}
	}
	for _, f := range files {
		mode := f.Mode
		if mode == 0 {
			mode = 0o644
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.Path, "/"), Mode: mode, Size: int64(len(f.Data)), ModTime: mtime}); err != nil {
			return nil, "", err
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, "", err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, "", err
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, "", err
	}
	if err := zw.Close(); err != nil {
		return nil, "", err
	}
	return gz.Bytes(), digest.FromBytes(raw.Bytes()), nil
}
