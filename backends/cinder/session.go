package cinder

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack"
	"github.com/gophercloud/gophercloud/v2/openstack/identity/v3/tokens"
	"github.com/gophercloud/gophercloud/v2/openstack/utils"
)

// conn is an authenticated block-storage client and what the server
// offers. The embedded ServiceClient is a private copy: its Microversion
// may be set per call (see at).
type conn struct {
	sc *gophercloud.ServiceClient
	// maxMinor is the highest 3.x microversion the server accepts (0:
	// unknown, microversions unused).
	maxMinor int
}

// at returns a client that sends microversion 3.minor.
func (c *conn) at(minor int) *gophercloud.ServiceClient {
	sc := *c.sc
	sc.Microversion = "3." + strconv.Itoa(minor)
	return &sc
}

// base returns a client without microversion header (3.0).
func (c *conn) base() *gophercloud.ServiceClient {
	sc := *c.sc
	sc.Microversion = ""
	return &sc
}

// session authenticates lazily: the first call that needs Cinder logs in
// to Keystone; a failure is returned to that call and the next call tries
// again. A token that expires later is renewed by gophercloud itself
// (AllowReauth), which repeats the failed request once.
type session struct {
	lock chan struct{} // one login at a time; waiting honours the caller's ctx
	cur  *conn
}

// client returns the authenticated client, logging in first when needed.
func (b *Backend) client(ctx context.Context) (*conn, error) {
	select {
	case b.sess.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the login to Keystone: %w", ctx.Err())
	}
	defer func() { <-b.sess.lock }()
	if b.sess.cur != nil {
		return b.sess.cur, nil
	}
	c, err := b.login(ctx)
	if err != nil {
		return nil, err
	}
	b.sess.cur = c
	b.log.Info("connected to Cinder", "endpoint", c.sc.Endpoint, "max_microversion", microversionString(c.maxMinor), "attach_api", b.attachAPI(c))
	return c, nil
}

func microversionString(minor int) string {
	if minor == 0 {
		return "none"
	}
	return "3." + strconv.Itoa(minor)
}

// login authenticates with Keystone, finds the block-storage endpoint and
// asks the server for its microversions. Errors are one sentence that says
// which of those failed.
func (b *Backend) login(ctx context.Context) (*conn, error) {
	pc, err := openstack.NewClient(b.cfg.AuthURL)
	if err != nil {
		return nil, fmt.Errorf("auth_url %q is not a URL: %w", b.cfg.AuthURL, err)
	}
	pc.HTTPClient = *b.http
	pc.UserAgent.Prepend("blockvol")
	if err := openstack.Authenticate(ctx, pc, b.authOptions()); err != nil {
		return nil, b.authError(err)
	}
	endpoint, err := b.endpoint(pc)
	if err != nil {
		return nil, err
	}
	sc := &gophercloud.ServiceClient{ProviderClient: pc, Endpoint: endpoint, Type: "block-storage"}
	c := &conn{sc: sc}
	c.maxMinor, err = maxMicroversion(ctx, sc)
	if err != nil {
		if ctx.Err() != nil {
			return nil, b.cinderError(sc, "read the API versions", err)
		}
		b.log.Warn("cannot read Cinder's API versions; using the legacy attach actions", "endpoint", endpoint, "error", b.cinderError(sc, "read the API versions", err).Error())
	}
	return c, nil
}

// authOptions maps the configuration to gophercloud's; AllowReauth makes
// the provider log in again when a token expires.
func (b *Backend) authOptions() gophercloud.AuthOptions {
	k := b.cfg
	ao := gophercloud.AuthOptions{
		IdentityEndpoint: k.AuthURL,
		AllowReauth:      true,
		Username:         k.Username,
		UserID:           k.UserID,
		Password:         k.Password,
		DomainName:       k.UserDomainName,
		DomainID:         k.UserDomainID,
	}
	if k.ApplicationCredentialSecret != "" {
		ao.Password = ""
		ao.ApplicationCredentialID = k.ApplicationCredentialID
		ao.ApplicationCredentialName = k.ApplicationCredentialName
		ao.ApplicationCredentialSecret = k.ApplicationCredentialSecret
		if k.ApplicationCredentialID != "" { // the ID alone identifies it
			ao.Username, ao.UserID, ao.DomainName, ao.DomainID = "", "", "", ""
		}
		return ao // application credentials carry their own scope
	}
	if ao.UserID != "" { // a user ID needs no domain
		ao.Username, ao.DomainName, ao.DomainID = "", "", ""
	}
	scope := &gophercloud.AuthScope{ProjectID: k.ProjectID}
	if k.ProjectID == "" {
		scope.ProjectName, scope.DomainName, scope.DomainID = k.ProjectName, k.ProjectDomainName, k.ProjectDomainID
	}
	ao.Scope = scope
	return ao
}

// who names the identity in messages (never the secret).
func (b *Backend) who() string {
	k := b.cfg
	switch {
	case k.ApplicationCredentialID != "":
		return fmt.Sprintf("application credential %s", k.ApplicationCredentialID)
	case k.ApplicationCredentialName != "":
		return fmt.Sprintf("application credential %q of user %s", k.ApplicationCredentialName, firstOf(k.Username, k.UserID))
	}
	return fmt.Sprintf("user %s", firstOf(k.Username, k.UserID))
}

func firstOf(s ...string) string {
	for _, v := range s {
		if v != "" {
			return strconv.Quote(v)
		}
	}
	return `""`
}

// authError turns a failed login into one sentence naming the cause.
func (b *Backend) authError(err error) error {
	ks := b.cfg.AuthURL
	if e := netError(err); e != nil {
		return fmt.Errorf("cannot reach Keystone at %s: %w", ks, e)
	}
	code, msg := httpStatus(err)
	switch code {
	case http.StatusUnauthorized:
		what := "check the password, the user and project names and their domains"
		if b.cfg.ApplicationCredentialSecret != "" {
			what = "check the application credential's ID or name and its secret, and that it has not expired"
		}
		return fmt.Errorf("Keystone at %s rejected the credentials of %s (HTTP 401: %s): %s", ks, b.who(), msg, what)
	case http.StatusNotFound:
		return fmt.Errorf("Keystone at %s found no such user, project or domain, or no Identity v3 API at that URL (HTTP 404: %s)", ks, msg)
	case 0:
		return fmt.Errorf("authentication at Keystone %s failed: %w", ks, err)
	}
	return fmt.Errorf("Keystone at %s refused the login of %s (HTTP %d: %s)", ks, b.who(), code, msg)
}

// blockStorageTypes are the catalog types searched for Cinder, in order
// of preference (service-types authority name first, then its aliases,
// v3 before older APIs).
var blockStorageTypes = []string{"block-storage", "volumev3", "volume", "block-store", "volumev2"}

// endpoint returns the block-storage URL: the configured one (with
// %(project_id)s, $(project_id)s or {project_id} replaced by the token's
// project), else the first catalog entry of blockStorageTypes with the
// configured interface and region. An unversioned or v1/v2 catalog URL is
// pointed at v3, the only Cinder API that has attachments and microversions.
func (b *Backend) endpoint(pc *gophercloud.ProviderClient) (string, error) {
	project := tokenProject(pc)
	if b.cfg.Endpoint != "" {
		u := b.cfg.Endpoint
		for _, p := range []string{"%(project_id)s", "$(project_id)s", "{project_id}", "%(tenant_id)s", "$(tenant_id)s"} {
			u = strings.ReplaceAll(u, p, project)
		}
		return gophercloud.NormalizeURL(u), nil
	}
	for _, t := range blockStorageTypes {
		u, err := pc.EndpointLocator(gophercloud.EndpointOpts{
			Type: t, Aliases: []string{t}, Region: b.cfg.Region, Availability: gophercloud.Availability(b.cfg.Interface),
		})
		if err == nil {
			v3 := toV3(u, project)
			if v3 != u {
				b.log.Info("block-storage endpoint in the catalog is not v3; using v3", "catalog_type", t, "catalog_url", u, "url", v3)
			}
			return v3, nil
		}
		if !isEndpointNotFound(err) {
			return "", fmt.Errorf("cannot read Keystone's service catalog: %w", err)
		}
	}
	region := b.cfg.Region
	if region == "" {
		region = "any"
	}
	return "", fmt.Errorf("Keystone's catalog has no block-storage endpoint (types %s) with interface %s in region %s: set region or interface to match the catalog, or give endpoint explicitly",
		strings.Join(blockStorageTypes, ", "), b.cfg.Interface, region)
}

var versionSegment = regexp.MustCompile(`/v([0-9]+)(\.[0-9]+)?(/|$)`)

// toV3 rewrites a Cinder URL to its v3 API: /v1 or /v2 become /v3, and an
// unversioned URL gets /v3/<project>.
func toV3(u, project string) string {
	loc := versionSegment.FindStringSubmatchIndex(u)
	switch {
	case loc == nil:
		return gophercloud.NormalizeURL(gophercloud.NormalizeURL(u) + "v3/" + project)
	case u[loc[2]:loc[3]] == "3":
		return gophercloud.NormalizeURL(u)
	}
	// "/vN[.M]" becomes "/v3"; the separator after it and the rest stay.
	return gophercloud.NormalizeURL(u[:loc[0]] + "/v3" + u[loc[6]:])
}

func isEndpointNotFound(err error) bool {
	var p *gophercloud.ErrEndpointNotFound
	var v gophercloud.ErrEndpointNotFound
	return errors.As(err, &p) || errors.As(err, &v)
}

// tokenProject returns the project ID of the provider's token, or "".
func tokenProject(pc *gophercloud.ProviderClient) string {
	r, ok := pc.GetAuthResult().(tokens.CreateResult)
	if !ok {
		return ""
	}
	p, err := r.ExtractProject()
	if err != nil || p == nil {
		return ""
	}
	return p.ID
}

// maxMicroversion reads the highest 3.x microversion from the version
// document at the root of the versioned endpoint (GET /v3/).
func maxMicroversion(ctx context.Context, sc *gophercloud.ServiceClient) (int, error) {
	root, err := utils.BaseVersionedEndpoint(sc.Endpoint)
	if err != nil {
		return 0, err
	}
	var doc struct {
		Versions []struct {
			ID      string `json:"id"`
			Status  string `json:"status"`
			Version string `json:"version"`
		} `json:"versions"`
		Version *struct {
			ID      string `json:"id"`
			Version string `json:"version"`
		} `json:"version"`
	}
	if _, err := sc.ProviderClient.Request(ctx, http.MethodGet, gophercloud.NormalizeURL(root), &gophercloud.RequestOpts{
		JSONResponse: &doc, OkCodes: []int{200, 300},
	}); err != nil {
		return 0, err
	}
	best := 0
	consider := func(id, v string) {
		if !strings.HasPrefix(id, "v3") {
			return
		}
		if maj, min, ok := strings.Cut(v, "."); ok && maj == "3" {
			if n, err := strconv.Atoi(min); err == nil && n > best {
				best = n
			}
		}
	}
	for _, v := range doc.Versions {
		consider(v.ID, v.Version)
	}
	if doc.Version != nil {
		consider(doc.Version.ID, doc.Version.Version)
	}
	return best, nil
}

// newHTTPClient returns the HTTP client of every request: per-request
// timeout, and the configured CA bundle for TLS.
func newHTTPClient(cfg Config) (*http.Client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("cinder: read ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("cinder: ca_file %s holds no PEM certificate", cfg.CAFile)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: tr, Timeout: cfg.RequestTimeout}, nil
}

// netError returns the network-level cause of err (connection refused, no
// such host, a timeout), or nil when the server answered.
func netError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	var oe *net.OpError
	if errors.As(err, &oe) {
		return oe
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return err
	}
	return nil
}

// httpStatus returns the HTTP status of a gophercloud error and the
// server's own message (Cinder: {"badRequest": {"message": ...}}; Keystone:
// {"error": {"message": ...}}), or 0 when err is not an HTTP answer.
func httpStatus(err error) (int, string) {
	var ue gophercloud.ErrUnexpectedResponseCode
	var uep *gophercloud.ErrUnexpectedResponseCode
	switch {
	case errors.As(err, &ue):
	case errors.As(err, &uep):
		ue = *uep
	default:
		return 0, ""
	}
	return ue.Actual, serverMessage(ue.Body, http.StatusText(ue.Actual))
}

func serverMessage(body []byte, fallback string) string {
	var doc map[string]json.RawMessage
	if json.Unmarshal(body, &doc) == nil {
		for _, v := range doc {
			var inner struct {
				Message string `json:"message"`
			}
			if json.Unmarshal(v, &inner) == nil && inner.Message != "" {
				return strings.TrimSpace(inner.Message)
			}
		}
	}
	if s := strings.TrimSpace(string(body)); s != "" && len(s) < 300 && !strings.ContainsAny(s, "<{") {
		return s
	}
	return fallback
}

// cinderError describes a failed Cinder call: what was attempted, and the
// HTTP status and Cinder's message, or the network failure.
func (b *Backend) cinderError(sc *gophercloud.ServiceClient, what string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return fmt.Errorf("%s: Cinder did not answer in time: %w", what, err)
	}
	var ure *gophercloud.ErrUnableToReauthenticate
	if errors.As(err, &ure) {
		return fmt.Errorf("%s: the Keystone token expired and logging in again failed: %w", what, b.authError(ure.ErrReauth))
	}
	if e := netError(err); e != nil {
		return fmt.Errorf("%s: cannot reach Cinder at %s: %w", what, sc.Endpoint, e)
	}
	if code, msg := httpStatus(err); code != 0 {
		return &apiError{what: what, code: code, msg: msg}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// apiError is an HTTP error answer of Cinder.
type apiError struct {
	what string
	code int
	msg  string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("%s: Cinder answered HTTP %d: %s", e.what, e.code, e.msg)
}

// statusOf returns the HTTP status carried by err (an *apiError or a raw
// gophercloud error), or 0.
func statusOf(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.code
	}
	code, _ := httpStatus(err)
	return code
}
