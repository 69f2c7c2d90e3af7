package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// pluginClient speaks Docker's VolumeDriver protocol to a running plugin
// over its unix socket, as Docker and dvdcli do: so `blockvol volume`
// works with or without Docker, against any VolumeDriver plugin.
type pluginClient struct {
	socket string
	hc     *http.Client
}

func newPluginClient(socket string) *pluginClient {
	return &pluginClient{socket: socket, hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	}}}
}

// pluginError is the plugin's own answer: its Err sentence, shown as is.
type pluginError struct{ msg string }

func (e *pluginError) Error() string { return e.msg }

// Docker's own time limits on a plugin call; ours are shorter.
const (
	createMountLimit = 2 * time.Minute
	otherLimit       = time.Minute
)

// call POSTs req as JSON to /<endpoint> and decodes the answer into resp.
// An answer with a non-empty Err becomes a *pluginError.
func (c *pluginClient) call(ctx context.Context, endpoint string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin/"+endpoint, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Accept", "application/vnd.docker.plugins.v1.2+json")
	hreq.Header.Set("Content-Type", "application/vnd.docker.plugins.v1.2+json")
	hresp, err := c.hc.Do(hreq)
	if ue := (*url.Error)(nil); errors.As(err, &ue) {
		err = ue.Err // not "Post http://plugin/...": the socket is what matters
	}
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("the plugin at %s did not answer %s in time: %w", c.socket, endpoint, err)
		}
		return fmt.Errorf("cannot reach the plugin at %s (is blockvol running? systemctl start blockvol.socket, or blockvol serve): %w", c.socket, err)
	}
	defer hresp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(hresp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read the answer to %s: %w", endpoint, err)
	}
	var e struct{ Err string }
	if json.Unmarshal(data, &e) == nil && e.Err != "" {
		return &pluginError{msg: e.Err}
	}
	if hresp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: the plugin answered %s: %s", endpoint, hresp.Status, strings.TrimSpace(string(data)))
	}
	if resp == nil {
		return nil
	}
	if err := json.Unmarshal(data, resp); err != nil {
		return fmt.Errorf("%s: the plugin's answer is not the expected JSON: %w", endpoint, err)
	}
	return nil
}

// activate checks that the socket is a VolumeDriver plugin.
func (c *pluginClient) activate(ctx context.Context) error {
	var resp struct{ Implements []string }
	if err := c.call(ctx, "Plugin.Activate", struct{}{}, &resp); err != nil {
		return err
	}
	for _, i := range resp.Implements {
		if i == "VolumeDriver" {
			return nil
		}
	}
	return fmt.Errorf("the plugin at %s implements %v, not VolumeDriver", c.socket, resp.Implements)
}
