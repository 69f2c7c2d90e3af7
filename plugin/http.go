package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/blockvol/blockvol/internal/quote"
	"io"
	"log/slog"
	"net/http"

	"github.com/docker/go-plugins-helpers/volume"
)

// MaxRequestBytes bounds a request body: Docker's largest (a Create with
// its options) is a few KiB.
const MaxRequestBytes = 1 << 20

// contentType is the plugin protocol's media type.
const contentType = "application/vnd.docker.plugins.v1.1+json"

// Handler serves Docker's VolumeDriver protocol (the legacy plugin HTTP
// API over a unix socket, as dockerd and dvdcli speak it) for a
// volume.Driver. Unlike go-plugins-helpers' handler it reads each request
// whole before acting: a body must be exactly one JSON object (empty for
// the calls without arguments) of at most MaxRequestBytes; anything else is
// refused before the driver sees it.
type Handler struct {
	drv volume.Driver
	mux *http.ServeMux
	// Begin, when set, is called once a request has been read whole, just
	// before the driver is called: the call is in progress from here. If
	// it returns false the call is not made (the plugin is stopping) and
	// nothing is answered.
	Begin func(*http.Request) bool
	// Log, when set, gets one debug line per request received.
	Log *slog.Logger
}

// NewHandler returns the protocol handler of drv.
func NewHandler(drv volume.Driver) *Handler {
	h := &Handler{drv: drv, mux: http.NewServeMux()}
	h.route("/Plugin.Activate", false, func([]byte) (any, error) {
		return map[string][]string{"Implements": {"VolumeDriver"}}, nil
	})
	h.route("/VolumeDriver.Capabilities", false, func([]byte) (any, error) { return drv.Capabilities(), nil })
	h.route("/VolumeDriver.List", false, func([]byte) (any, error) { return drv.List() })
	h.route("/VolumeDriver.Create", true, func(b []byte) (any, error) {
		return withRequest(b, func(r *volume.CreateRequest) (any, error) { return struct{}{}, drv.Create(r) })
	})
	h.route("/VolumeDriver.Remove", true, func(b []byte) (any, error) {
		return withRequest(b, func(r *volume.RemoveRequest) (any, error) { return struct{}{}, drv.Remove(r) })
	})
	h.route("/VolumeDriver.Mount", true, func(b []byte) (any, error) {
		return withRequest(b, func(r *volume.MountRequest) (any, error) { return drv.Mount(r) })
	})
	h.route("/VolumeDriver.Unmount", true, func(b []byte) (any, error) {
		return withRequest(b, func(r *volume.UnmountRequest) (any, error) { return struct{}{}, drv.Unmount(r) })
	})
	h.route("/VolumeDriver.Path", true, func(b []byte) (any, error) {
		return withRequest(b, func(r *volume.PathRequest) (any, error) { return drv.Path(r) })
	})
	h.route("/VolumeDriver.Get", true, func(b []byte) (any, error) {
		return withRequest(b, func(r *volume.GetRequest) (any, error) { return drv.Get(r) })
	})
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.Log != nil {
		h.Log.Debug("request", "path", quote.Prefix(r.URL.Path))
	}
	h.mux.ServeHTTP(w, r)
}

// badRequest is a request refused before the driver saw it.
type badRequest struct{ msg string }

func (e badRequest) Error() string { return e.msg }

// route serves path: read the body whole, check it, then call fn with it.
// needsBody: the call has arguments, so the body must hold them.
func (h *Handler) route(path string, needsBody bool, fn func(body []byte) (any, error)) {
	h.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxRequestBytes))
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			reply(w, http.StatusRequestEntityTooLarge, errorBody(fmt.Sprintf("the request body is larger than %d bytes", MaxRequestBytes)))
			return
		case err != nil:
			return // the client went away mid-request
		}
		if err := checkBody(body, needsBody); err != nil {
			reply(w, http.StatusBadRequest, errorBody(err.Error()))
			return
		}
		if h.Begin != nil && !h.Begin(r) {
			return
		}
		res, err := fn(body)
		var bad badRequest
		switch {
		case errors.As(err, &bad):
			reply(w, http.StatusBadRequest, errorBody(err.Error()))
		case err != nil:
			reply(w, http.StatusInternalServerError, errorBody(err.Error()))
		default:
			reply(w, http.StatusOK, res)
		}
	})
}

// checkBody accepts exactly one JSON object, or (for calls without
// arguments) nothing at all, with white space around it.
func checkBody(body []byte, needsBody bool) error {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 && !needsBody {
		return nil
	}
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return errors.New("the request body must be one JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	var obj map[string]json.RawMessage
	if err := dec.Decode(&obj); err != nil {
		return fmt.Errorf("the request body is not valid JSON: %v", err)
	}
	if dec.InputOffset() != int64(len(trimmed)) {
		return errors.New("the request body has bytes after its JSON object; send exactly one object")
	}
	return nil
}

// withRequest decodes the checked body into a Req and calls fn.
func withRequest[Req any](body []byte, fn func(*Req) (any, error)) (any, error) {
	var req Req
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, badRequest{fmt.Sprintf("the request body does not fit the call: %v", err)}
	}
	return fn(&req)
}

func errorBody(msg string) volume.ErrorResponse { return volume.ErrorResponse{Err: msg} }

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", contentType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
