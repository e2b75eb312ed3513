package node

import (
	"errors"
	"net/http"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/runtime"
)

// maxImageBody caps an uploaded image archive.
const maxImageBody = 4 << 30

// handleLoadImage imports the OCI image archive in the request body into
// this node's containerd namespace. The body streams into containerd's
// content store; nothing is buffered whole.
func (a *Agent) handleLoadImage(w http.ResponseWriter, r *http.Request) {
	if ct := r.Header.Get("Content-Type"); ct != "" && ct != "application/x-tar" && ct != "application/octet-stream" {
		writeError(w, http.StatusUnsupportedMediaType, "body must be an OCI image archive (Content-Type: application/x-tar), not %s", ct)
		return
	}
	if a.containerd == nil {
		writeError(w, http.StatusServiceUnavailable, "the containerd driver is disabled on this node: %s", a.tasks.Disabled()[runtime.DriverContainerd])
		return
	}
	body := http.MaxBytesReader(w, r.Body, maxImageBody)
	imgs, err := a.containerd.ImportImage(r.Context(), body)
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "image archive larger than %d bytes", int64(maxImageBody))
		return
	case errors.Is(err, runtime.ErrUnavailable):
		writeError(w, http.StatusServiceUnavailable, "%v", err)
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, imageViews(imgs))
}

func (a *Agent) handleListImages(w http.ResponseWriter, r *http.Request) {
	if a.containerd == nil {
		writeError(w, http.StatusServiceUnavailable, "the containerd driver is disabled on this node: %s", a.tasks.Disabled()[runtime.DriverContainerd])
		return
	}
	imgs, err := a.containerd.ListImages(r.Context())
	if errors.Is(err, runtime.ErrUnavailable) {
		writeError(w, http.StatusServiceUnavailable, "%v", err)
		return
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, imageViews(imgs))
}

func imageViews(imgs []runtime.Image) []api.Image {
	out := make([]api.Image, 0, len(imgs))
	for _, img := range imgs {
		out = append(out, api.Image{Name: img.Name, Digest: img.Digest, Size: img.Size, CreatedAt: img.CreatedAt})
	}
	return out
}
