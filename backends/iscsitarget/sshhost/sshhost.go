// Package sshhost runs programs on another host over SSH
// (golang.org/x/crypto/ssh): key authentication only, and the server's host
// key must be in a known_hosts file — an unknown or changed key is refused
// with an error that says which.
//
// # Arguments
//
// SSH carries one command string, which sshd hands to the user's login
// shell (`$SHELL -c STRING`). Command builds that string from an argv by
// quoting every argument for a POSIX shell (single quotes, a quote inside
// written as '"'"'), so each argument arrives verbatim, whatever it holds —
// spaces, quotes, $, `, ;, newlines. An argument with a NUL byte cannot be
// passed to a program at all and is refused. The login shell of the remote
// user must be a POSIX shell (sh, dash, bash, ksh, zsh); csh and fish are
// not supported.
//
// # Connections
//
// One connection is kept and shared; each Run or Hold opens a session on
// it (at most MaxSessions at once: OpenSSH allows 10 per connection by
// default). A connection that fails is dropped and the next call dials
// again; a session that cannot be opened on a connection that has gone
// stale is retried once on a new connection (the program never started,
// so this is safe), unless the host gave no answer at all within
// DialTimeout: then the call fails at once. A keepalive every 30 s keeps
// idle connections open through firewalls and drops dead ones.
package sshhost

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sema"
)

// Config configures a Host.
type Config struct {
	// Addr is host:port.
	Addr string
	// User logs in with the private key in KeyFile (unencrypted).
	User    string
	KeyFile string
	// KnownHostsFile holds the server's host key (OpenSSH format).
	KnownHostsFile string
	// DialTimeout bounds the TCP connection and the SSH handshake, and
	// the answer to each session request on an open connection (a host
	// that stopped answering costs a call this long, not the call's whole
	// deadline); 0 = 10s. A call's context may end them sooner.
	DialTimeout time.Duration
	// MaxSessions bounds the sessions open at once; 0 = 8.
	MaxSessions int
}

const (
	defaultDialTimeout = 10 * time.Second
	defaultMaxSessions = 8
	keepaliveEvery     = 30 * time.Second
	keepaliveTimeout   = 15 * time.Second
	// killGrace: a remote program is killed this long after its call's
	// deadline, so that the call itself reports the deadline first.
	killGrace = time.Second
)

// Host runs programs on one SSH server. It is safe for concurrent use.
type Host struct {
	cfg      Config
	signer   ssh.Signer
	hostKeys ssh.HostKeyCallback
	algos    []string

	slots sema.Sema     // session slots
	dial  chan struct{} // one dialer at a time
	mu    sync.Mutex
	c     *ssh.Client
}

// New reads the key and the known_hosts file and checks that the latter
// has a key for Addr. It does not connect: the first call does.
func New(cfg Config) (*Host, error) {
	if _, _, err := net.SplitHostPort(cfg.Addr); err != nil {
		return nil, fmt.Errorf("ssh: address %q must be host:port", cfg.Addr)
	}
	if cfg.User == "" {
		return nil, errors.New("ssh: a user is required")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = defaultMaxSessions
	}
	pem, err := os.ReadFile(cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("ssh: read private key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(pem)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, fmt.Errorf("ssh: private key %s is protected by a passphrase; blockvol needs a key without one (keep it readable by root only)", cfg.KeyFile)
	}
	if err != nil {
		return nil, fmt.Errorf("ssh: private key %s: %w", cfg.KeyFile, err)
	}
	cb, err := knownhosts.New(cfg.KnownHostsFile)
	if err != nil {
		return nil, fmt.Errorf("ssh: known_hosts: %w", err)
	}
	h := &Host{
		cfg:      cfg,
		signer:   signer,
		hostKeys: cb,
		slots:    sema.New(cfg.MaxSessions),
		dial:     make(chan struct{}, 1),
	}
	known := h.knownKeys()
	if len(known) == 0 {
		return nil, fmt.Errorf("ssh: %s has no host key for %s; add it after checking its fingerprint, e.g. `ssh-keyscan -p PORT HOST >> %s` and compare with `ssh-keygen -lf` on the target host",
			cfg.KnownHostsFile, knownhosts.Normalize(cfg.Addr), cfg.KnownHostsFile)
	}
	// Ask the server only for key types known_hosts has for it: otherwise
	// a server offering another type first would fail the check.
	for _, k := range known {
		for _, a := range algorithmsFor(k.Key.Type()) {
			if !slices.Contains(h.algos, a) {
				h.algos = append(h.algos, a)
			}
		}
	}
	return h, nil
}

// knownKeys returns known_hosts' keys for Addr: the callback, shown a key
// no file can hold, lists them in its KeyError.
func (h *Host) knownKeys() []knownhosts.KnownKey {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil
	}
	probe, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil
	}
	var keyErr *knownhosts.KeyError
	if err := h.hostKeys(h.cfg.Addr, remoteAddr(h.cfg.Addr), probe); errors.As(err, &keyErr) {
		return keyErr.Want
	}
	return nil
}

// remoteAddr is a net.Addr for addr, as the known_hosts callback needs one;
// the callback matches on the host name given with it first.
func remoteAddr(addr string) net.Addr {
	host, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	ip := net.ParseIP(host)
	if ip == nil {
		ip = net.IPv4zero
	}
	return &net.TCPAddr{IP: ip, Port: p}
}

func algorithmsFor(keyType string) []string {
	if keyType == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{keyType}
}

// Close closes the connection, ending every session on it.
func (h *Host) Close() error {
	h.mu.Lock()
	c := h.c
	h.c = nil
	h.mu.Unlock()
	if c != nil {
		return c.Close()
	}
	return nil
}

// Quote quotes s for a POSIX shell: the shell reads it back as the one
// word s. Words of only letters, digits and _ . / , : @ + - are left as
// they are, for legible logs.
func Quote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./,:@+-") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

// Command is the command string that makes a POSIX shell run name with
// args, each passed verbatim. An argument holding a NUL byte is refused.
func Command(name string, args ...string) (string, error) {
	words := make([]string, 0, 1+len(args))
	for i, w := range append([]string{name}, args...) {
		if strings.IndexByte(w, 0) >= 0 {
			return "", fmt.Errorf("ssh: argument %d of %s holds a NUL byte, which no program can receive", i, name)
		}
		words = append(words, Quote(w))
	}
	return strings.Join(words, " "), nil
}

// Run runs name with args on the host, as hostexec.Runner does: standard
// output is returned, a non-zero exit is an *hostexec.ExitError with the
// standard error text.
//
// sshd does not pass signals to root's sessions ("session signalling
// requires privilege separation"), nor end a program when its session is
// closed. So when ctx has a deadline the program runs under
// `timeout -s KILL`, set to end it shortly after that deadline: a remote
// program never outlives its call for long, even when the target host
// hangs (a wedged tgtd, a stuck file system). When ctx ends, Run closes
// the session and returns at once.
func (h *Host) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	argv := append([]string{name}, args...)
	if dl, ok := ctx.Deadline(); ok {
		limit := time.Until(dl) + killGrace
		argv = append([]string{"timeout", "-s", "KILL", strconv.FormatFloat(limit.Round(time.Millisecond).Seconds(), 'f', -1, 64)}, argv...)
	}
	cmd, err := Command(argv[0], argv[1:]...)
	if err != nil {
		return nil, err
	}
	if err := h.slots.Acquire(ctx); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s, err := h.session(ctx)
	if err != nil {
		h.slots.Release()
		return nil, err
	}
	var stdout, stderr hostexec.SyncBuffer
	s.Stdout, s.Stderr = &stdout, &stderr
	if err := s.Start(cmd); err != nil {
		s.Close()
		h.slots.Release()
		return nil, fmt.Errorf("ssh %s: start %s: %w", h.cfg.Addr, name, err)
	}
	done := make(chan error, 1)
	go func() {
		err := s.Wait()
		s.Close()
		h.slots.Release()
		done <- err
	}()
	select {
	case err = <-done:
		return stdout.Bytes(), h.exitErr(name, args, stderr.String(), err)
	case <-ctx.Done():
		_ = s.Signal(ssh.SIGKILL) // works for other users than root
		s.Close()
		return stdout.Bytes(), fmt.Errorf("%s: %w", name, ctx.Err())
	}
}

// Hold starts name with args on the host and returns the first line it
// prints on standard output, once printed. The program keeps running, its
// standard input open, until release closes that input and waits for it to
// exit. A program that exits before printing a line yields its error, as
// Run would. When ctx ends before the line arrives the program is killed;
// once the line is there ctx no longer matters. If the connection is lost,
// the program's standard input ends on the host.
func (h *Host) Hold(ctx context.Context, name string, args ...string) (string, func() error, error) {
	cmd, err := Command(name, args...)
	if err != nil {
		return "", nil, err
	}
	if err := h.slots.Acquire(ctx); err != nil {
		return "", nil, fmt.Errorf("%s: %w", name, err)
	}
	s, err := h.session(ctx)
	if err != nil {
		h.slots.Release()
		return "", nil, err
	}
	fail := func(err error) (string, func() error, error) {
		s.Close()
		h.slots.Release()
		return "", nil, err
	}
	stdin, err := s.StdinPipe()
	if err != nil {
		return fail(err)
	}
	stdout, err := s.StdoutPipe()
	if err != nil {
		return fail(err)
	}
	var stderr hostexec.SyncBuffer
	s.Stderr = &stderr
	if err := s.Start(cmd); err != nil {
		return fail(fmt.Errorf("ssh %s: start %s: %w", h.cfg.Addr, name, err))
	}
	line, err := hostexec.FirstLine(ctx, stdout, func() { _ = s.Signal(ssh.SIGKILL); s.Close() })
	if err != nil {
		stdin.Close()
		go func() { _, _ = io.Copy(io.Discard, stdout) }()
		if ctx.Err() != nil {
			// The program may go on until it reads the end of its input
			// (the lock holder: once it has the lock, at once).
			go func() { _ = s.Wait(); s.Close(); h.slots.Release() }()
			return "", nil, fmt.Errorf("%s: %w", name, ctx.Err())
		}
		werr := s.Wait()
		if werr == nil {
			werr = fmt.Errorf("%s exited without printing a line", name)
		}
		return fail(h.exitErr(name, args, stderr.String(), werr))
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	var once sync.Once
	var rerr error
	release := func() error {
		once.Do(func() {
			stdin.Close()
			werr := s.Wait()
			s.Close()
			h.slots.Release()
			rerr = h.exitErr(name, args, stderr.String(), werr)
		})
		return rerr
	}
	return line, release, nil
}

// exitErr turns a session's end into Run's error.
func (h *Host) exitErr(name string, args []string, stderr string, err error) error {
	var ee *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee):
		return &hostexec.ExitError{Argv: append([]string{name}, args...), Code: ee.ExitStatus(), Stderr: stderr}
	case errors.As(err, &missing):
		return fmt.Errorf("ssh %s: %s ended without an exit status (connection lost?)", h.cfg.Addr, name)
	}
	return fmt.Errorf("ssh %s: %s: %w", h.cfg.Addr, name, err)
}

// session opens a session, dialing first when there is no connection, and
// once more on a new connection when the current one turns out dead.
func (h *Host) session(ctx context.Context) (*ssh.Session, error) {
	var lastErr error
	for range 2 {
		c, err := h.client(ctx)
		if err != nil {
			return nil, err
		}
		s, err := newSession(ctx, c, h.cfg.DialTimeout)
		if err == nil {
			return s, nil
		}
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) {
			// The server answered: the connection is fine, the session
			// was refused (MaxSessions on the server, say).
			return nil, fmt.Errorf("ssh %s: the server refused a session: %w", h.cfg.Addr, err)
		}
		h.drop(c)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("ssh %s: open a session: %w", h.cfg.Addr, ctx.Err())
		}
		if errors.Is(err, errNoAnswer) {
			// The host, not just this connection, stopped answering
			// (it died, or the network to it did): a new connection
			// would only cost another DialTimeout.
			return nil, fmt.Errorf("ssh %s: open a session: %w", h.cfg.Addr, err)
		}
		lastErr = err
	}
	return nil, fmt.Errorf("ssh %s: open a session: %w", h.cfg.Addr, lastErr)
}

// errNoAnswer: a session request on an open connection got no answer.
var errNoAnswer = errors.New("the host did not answer")

// newSession is c.NewSession, bounded by ctx and by timeout: a connection
// whose peer vanished (a host that died, a network cut) would block it
// until TCP gives up, and a live server answers a session request in one
// round trip. On timeout c is closed and the error wraps errNoAnswer.
func newSession(ctx context.Context, c *ssh.Client, timeout time.Duration) (*ssh.Session, error) {
	type result struct {
		s   *ssh.Session
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := c.NewSession()
		ch <- result{s, err}
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	var err error
	select {
	case r := <-ch:
		return r.s, r.err
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
		err = fmt.Errorf("%w to a session request within %s", errNoAnswer, timeout)
	}
	c.Close() // unblocks NewSession
	if r := <-ch; r.s != nil {
		r.s.Close()
	}
	return nil, err
}

// client returns the connection, dialing when there is none.
func (h *Host) client(ctx context.Context) (*ssh.Client, error) {
	select {
	case h.dial <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("ssh %s: %w", h.cfg.Addr, ctx.Err())
	}
	defer func() { <-h.dial }()
	h.mu.Lock()
	c := h.c
	h.mu.Unlock()
	if c != nil {
		return c, nil
	}
	c, err := h.connect(ctx)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	h.c = c
	h.mu.Unlock()
	go h.keepalive(c)
	return c, nil
}

func (h *Host) connect(ctx context.Context) (*ssh.Client, error) {
	who := h.cfg.User + "@" + h.cfg.Addr
	d := net.Dialer{Timeout: h.cfg.DialTimeout}
	conn, err := d.DialContext(ctx, "tcp", h.cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("ssh %s: connect: %w", who, err)
	}
	deadline := time.Now().Add(h.cfg.DialTimeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	_ = conn.SetDeadline(deadline)
	var keyErr error
	config := &ssh.ClientConfig{
		User: h.cfg.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(h.signer)},
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			err := h.hostKeys(hostname, remote, key)
			if err != nil {
				keyErr = h.explainHostKey(err, key)
			}
			return err
		},
		HostKeyAlgorithms: h.algos,
		Timeout:           h.cfg.DialTimeout,
	}
	sc, chans, reqs, err := ssh.NewClientConn(conn, h.cfg.Addr, config)
	if err != nil {
		conn.Close()
		switch {
		case keyErr != nil:
			return nil, keyErr
		case strings.Contains(err.Error(), "unable to authenticate"):
			return nil, fmt.Errorf("ssh %s: the server refused key %s (is its public key in the user's authorized_keys?): %w", who, h.cfg.KeyFile, err)
		case ctx.Err() != nil:
			return nil, fmt.Errorf("ssh %s: handshake: %w", who, ctx.Err())
		}
		return nil, fmt.Errorf("ssh %s: handshake: %w", who, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), nil
}

// explainHostKey turns the known_hosts verdict into one sentence.
func (h *Host) explainHostKey(err error, key ssh.PublicKey) error {
	fp := key.Type() + " " + ssh.FingerprintSHA256(key)
	var keyErr *knownhosts.KeyError
	var revoked *knownhosts.RevokedError
	switch {
	case errors.As(err, &revoked):
		return fmt.Errorf("ssh %s: the server's host key %s is marked revoked in %s (line %d): refusing to connect", h.cfg.Addr, fp, revoked.Revoked.Filename, revoked.Revoked.Line)
	case errors.As(err, &keyErr) && len(keyErr.Want) > 0:
		return fmt.Errorf("ssh %s: host key mismatch: the server presented %s, but %s holds another key for it (line %d): refusing to connect — someone may be impersonating the target host; if its key was changed on purpose, check the new fingerprint there and update the file",
			h.cfg.Addr, fp, keyErr.Want[0].Filename, keyErr.Want[0].Line)
	case errors.As(err, &keyErr):
		return fmt.Errorf("ssh %s: unknown host key %s: %s has no key for %s: refusing to connect", h.cfg.Addr, fp, h.cfg.KnownHostsFile, knownhosts.Normalize(h.cfg.Addr))
	}
	return fmt.Errorf("ssh %s: host key check: %w", h.cfg.Addr, err)
}

// keepalive pings the server until the connection ends, and drops a
// connection that stops answering.
func (h *Host) keepalive(c *ssh.Client) {
	closed := make(chan struct{})
	go func() { _ = c.Wait(); close(closed) }()
	t := time.NewTicker(keepaliveEvery)
	defer t.Stop()
	for {
		select {
		case <-closed:
			h.drop(c)
			return
		case <-t.C:
		}
		answered := make(chan error, 1)
		go func() {
			_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
			answered <- err
		}()
		select {
		case err := <-answered:
			if err == nil {
				continue
			}
		case <-time.After(keepaliveTimeout):
		case <-closed:
		}
		h.drop(c)
		return
	}
}

// drop closes c and forgets it, if it is still the current connection.
func (h *Host) drop(c *ssh.Client) {
	h.mu.Lock()
	if h.c == c {
		h.c = nil
	}
	h.mu.Unlock()
	c.Close()
}
