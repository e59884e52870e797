package sielink

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/sie-europe/dnssensor/internal/logger"
)

// Resolver looks up SRV records; *net.Resolver implements it. Tests and
// appliances with their own DNS settings inject one.
type Resolver interface {
	LookupSRV(ctx context.Context, service, proto, name string) (cname string, addrs []*net.SRV, err error)
}

// Config configures a client connection.
type Config struct {
	// URL of the server, wss://host[:port][/prefix]; the session path
	// /session/<Name> is appended. Without a port, the targets come
	// from the SRV record _https._tcp.<host> (falling back to port
	// 443), as the reference client does. ws:// (clear text, API key
	// included) is refused unless the host is a loopback address or
	// localhost, and never consults SRV.
	URL string
	// Name is the sensor's name, the last element of the session path.
	Name string
	// APIKeyFile holds the API key sent as X-API-Key. It is read on
	// every dial, so a rotated key takes effect at the next
	// reconnection, and refused unless its mode is 0600 or stricter.
	APIKeyFile string
	// Origin is sent as the Origin header; default the server's own
	// origin (https://host), which origin-checking servers accept.
	Origin string
	// Channel is the SIE channel of every payload; default 202.
	Channel uint32
	// Heartbeat is our heartbeat interval, announced to the peer;
	// default 30 s.
	Heartbeat time.Duration
	// TLS is the base TLS configuration (roots, client certificates).
	// ServerName is always set to the URL's host, also when the
	// address came from an SRV record.
	TLS *tls.Config
	// Resolver looks up SRV records; default net.DefaultResolver.
	Resolver Resolver
	// HandshakeTimeout bounds connecting, TLS, the upgrade and the
	// wait for the peer's first message; default 30 s.
	HandshakeTimeout time.Duration
	// MaxMessageSize caps received messages and the messages Send
	// writes; default 2 MiB.
	MaxMessageSize int
	// Logf receives rate-limited reports of bad input; nil discards.
	Logf Logf

	// MinBackoff and MaxBackoff bound a Client's wait between
	// connection attempts (defaults 1 s, or MaxBackoff when smaller, and
	// 2 min); a FatalError alert or a rejected upgrade waits at least
	// FatalBackoff (default 30 s, capped by MaxBackoff). Each wait is
	// jittered down by up to 50 %, never up: MaxBackoff is what a
	// supervisor's operator configured as the longest a reachable
	// destination may go untried.
	MinBackoff, MaxBackoff, FatalBackoff time.Duration
}

func (cfg *Config) withDefaults() (Config, *url.URL, error) {
	c := *cfg
	if c.Channel == 0 {
		c.Channel = DefaultChannel
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.Resolver == nil {
		c.Resolver = net.DefaultResolver
	}
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.MaxMessageSize <= 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = 2 * time.Minute
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = min(time.Second, c.MaxBackoff)
	}
	if c.FatalBackoff <= 0 {
		c.FatalBackoff = 30 * time.Second
	}
	c.MaxBackoff = max(c.MaxBackoff, c.MinBackoff)
	c.FatalBackoff = min(c.FatalBackoff, c.MaxBackoff)
	if !validSessionName(c.Name) {
		return c, nil, fmt.Errorf("sielink: invalid sensor name %q", c.Name)
	}
	if c.APIKeyFile == "" {
		return c, nil, errors.New("sielink: no API key file")
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return c, nil, fmt.Errorf("sielink: server URL: %w", err)
	}
	switch u.Scheme {
	case "wss", "ws":
	default:
		return c, nil, fmt.Errorf("sielink: server URL %q: scheme must be wss", c.URL)
	}
	if u.Hostname() == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return c, nil, fmt.Errorf("sielink: server URL %q: want wss://host[:port][/prefix]", c.URL)
	}
	// ws:// sends the API key in clear text: never beyond this host.
	if u.Scheme == "ws" && !loopbackHost(u.Hostname()) {
		return c, nil, fmt.Errorf("sielink: server URL %q: ws:// is unencrypted and allowed only to a loopback address; use wss://", c.URL)
	}
	su := *u
	su.Path = strings.TrimSuffix(u.Path, "/") + "/session/" + c.Name
	su.RawPath = ""
	if c.Origin == "" {
		c.Origin = "https://" + u.Host
	}
	return c, &su, nil
}

// targets returns the addresses to try, in order.
func targets(ctx context.Context, r Resolver, u *url.URL) ([]string, error) {
	host, port := u.Hostname(), u.Port()
	if port != "" {
		return []string{net.JoinHostPort(host, port)}, nil
	}
	service, defPort := "https", "443"
	if u.Scheme == "ws" {
		service, defPort = "http", "80"
	}
	// An SRV record could send a loopback ws:// session, API key and all, to another host.
	if _, err := netip.ParseAddr(host); err == nil || u.Scheme == "ws" {
		return []string{net.JoinHostPort(host, defPort)}, nil
	}
	_, srvs, err := r.LookupSRV(ctx, service, "tcp", host)
	if err == nil {
		var out []string
		for _, s := range srvs {
			t := strings.TrimSuffix(s.Target, ".")
			if t == "" || s.Port == 0 {
				continue // "." means: service decidedly not available here
			}
			out = append(out, net.JoinHostPort(t, strconv.Itoa(int(s.Port))))
		}
		if len(out) > 0 {
			return out, nil
		}
		return nil, fmt.Errorf("sielink: SRV _%s._tcp.%s lists no usable target", service, host)
	}
	// A temporary failure must not silently send us to port 443 of a
	// host that only has SRV-advertised endpoints; retrying later is
	// what the reference client does too.
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) && dnsErr.Temporary() {
		return nil, fmt.Errorf("sielink: SRV lookup for %s: %w", host, err)
	}
	return []string{net.JoinHostPort(host, defPort)}, nil
}

// loopbackHost accepts loopback address literals and localhost, which
// resolves only to them (RFC 6761).
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// ErrRejected is wrapped by Dial errors where the server refused the
// WebSocket upgrade (wrong API key, wrong sensor name, or no such
// endpoint): retrying soon will not help.
var ErrRejected = errors.New("sielink: server rejected the session")

// Dial connects to the server, exchanges the Topology messages and
// returns the connection, which then runs until Close, a peer Shutdown
// or FatalError, a heartbeat timeout or a network error; Done and Err
// tell which. When ctx ends, so does the connection (abruptly; Close
// ends it cleanly).
func Dial(ctx context.Context, cfg Config) (*Conn, error) {
	return dial(ctx, ctx, cfg, new(counters))
}

// dial connects within ctx; life, when it ends, ends the connection.
func dial(ctx, life context.Context, cfg Config, cnt *counters) (*Conn, error) {
	c, u, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	key, err := ReadAPIKey(c.APIKeyFile)
	if err != nil {
		return nil, err
	}
	cnt.dials.Add(1)
	hctx, cancel := context.WithTimeout(ctx, c.HandshakeTimeout)
	defer cancel()
	addrs, err := targets(hctx, c.Resolver, u)
	if err != nil {
		return nil, err
	}
	var ws *websocket.Conn
	var errs []error
	for _, addr := range addrs {
		ws, err = upgrade(hctx, &c, u, addr, key)
		if err == nil {
			break
		}
		errs = append(errs, fmt.Errorf("%s: %w", addr, err))
		if errors.Is(err, ErrRejected) || hctx.Err() != nil {
			break
		}
	}
	if ws == nil {
		return nil, fmt.Errorf("sielink: dialing %s: %w", u.Redacted(), errors.Join(errs...))
	}
	conn, err := handshake(hctx, life, ws, &c, cnt)
	if err != nil {
		ws.CloseNow()
		return nil, err
	}
	return conn, nil
}

func upgrade(ctx context.Context, c *Config, u *url.URL, addr, key string) (*websocket.Conn, error) {
	var tc *tls.Config
	if c.TLS != nil {
		tc = c.TLS.Clone()
	} else {
		tc = new(tls.Config)
	}
	tc.ServerName = u.Hostname()
	// WebSocket upgrades need HTTP/1.1; advertising h2 would let a
	// server pick a protocol the upgrade cannot use.
	tc.NextProtos = []string{"http/1.1"}
	d := &net.Dialer{KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig:   tc,
		DisableKeepAlives: true,
		Proxy:             nil,
	}
	defer tr.CloseIdleConnections()
	h := http.Header{}
	h.Set("X-API-Key", key)
	h.Set("Origin", c.Origin)
	ws, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: tr},
		HTTPHeader: h,
	})
	if err != nil {
		if resp != nil && resp.StatusCode >= 400 && resp.StatusCode < 500 {
			return nil, fmt.Errorf("%w: HTTP %s", ErrRejected, resp.Status)
		}
		return nil, err
	}
	// readMessage enforces MaxMessageSize itself, draining oversize
	// messages instead of letting the library drop the connection.
	ws.SetReadLimit(-1)
	return ws, nil
}

// handshake sends our Topology and reads the peer's first message.
// hctx bounds the handshake; ctx becomes the connection's parent.
func handshake(hctx, ctx context.Context, ws *websocket.Conn, c *Config, cnt *counters) (*Conn, error) {
	var buf []byte
	hb := heartbeatMillis(c.Heartbeat)
	err := writeMessage(hctx, ws, &buf, &Message{
		ProtocolVersion: []uint32{ProtocolVersion},
		Type:            TypeTopology,
		Topology:        &Topology{},
		Heartbeat:       hb,
	})
	if err != nil {
		return nil, fmt.Errorf("sielink: sending topology: %w", err)
	}
	var rbuf []byte
	var msg []byte
	for {
		msg, rbuf, err = readMessage(hctx, ws, rbuf, c.MaxMessageSize)
		if err == nil {
			break
		}
		if !errors.Is(err, errOversize) && !errors.Is(err, errTextMessage) {
			return nil, fmt.Errorf("sielink: waiting for the peer's topology: %w", err)
		}
		cnt.malformed.Add(1)
	}
	var m Message
	if err := DecodeMessage(msg, &m); err != nil {
		cnt.malformed.Add(1)
		return nil, fmt.Errorf("sielink: peer's first message: %w", err)
	}
	if !versionSupported(m.ProtocolVersion) {
		writeMessage(hctx, ws, &buf, fatalAlert("protocol version 1 required"))
		return nil, fmt.Errorf("sielink: peer supports protocol versions %v, not %d", m.ProtocolVersion, ProtocolVersion)
	}
	switch m.Type {
	case TypeTopology, TypeHeartbeat:
	case TypeAlert:
		cnt.alerts.Add(1)
		if m.Alert != nil && m.Alert.Level == AlertFatalError {
			return nil, m.Alert
		}
	default:
		writeMessage(hctx, ws, &buf, fatalAlert("unexpected first message"))
		return nil, fmt.Errorf("sielink: peer's first message is %v", m.Type)
	}
	conn := &Conn{
		cfg:  *c,
		ws:   ws,
		cnt:  cnt,
		bad:  logger.NewLimiter(c.Logf, logInterval),
		done: make(chan struct{}),
	}
	conn.peerHB.Store(m.Heartbeat)
	cnt.connects.Add(1)
	conn.ctx, conn.cancel = context.WithCancel(context.WithoutCancel(ctx))
	conn.stopCtx = context.AfterFunc(ctx, func() { conn.fail(ErrClosed) })
	go conn.run()
	return conn, nil
}

// Conn is one client connection. Send and Sync may be called from any
// goroutine; the connection's own goroutines (a reader that owns its
// lifetime and a heartbeat sender) end when it does.
type Conn struct {
	cfg     Config
	ws      *websocket.Conn
	cnt     *counters
	bad     *logger.Limiter
	peerHB  atomic.Uint32
	closing atomic.Bool
	ctx     context.Context
	cancel  context.CancelFunc
	stopCtx func() bool
	done    chan struct{}

	errOnce sync.Once
	err     error

	// sendMu serializes payload writes with the Finished answer, so
	// that no payload follows a Finished.
	sendMu    sync.Mutex
	sendBuf   []byte
	ended     bool
	sent      uint64 // payloads written
	sentBytes uint64

	confirmed      atomic.Uint64 // payloads the peer is known to have read
	confirmedBytes atomic.Uint64
	pings          atomic.Int32 // pings awaiting their pong
}

// fail ends the connection with err unless it already ended.
func (c *Conn) fail(err error) {
	c.errOnce.Do(func() {
		c.err = err
		c.cancel()
		c.ws.CloseNow()
	})
}

func (c *Conn) run() {
	defer close(c.done)
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		c.heartbeats()
	}()
	err := c.readLoop()
	c.fail(err)
	<-hbDone
	c.stopCtx()
	c.sendMu.Lock()
	c.ended = true
	lost := c.sent - c.confirmed.Load()
	lostBytes := c.sentBytes - c.confirmedBytes.Load()
	c.sendMu.Unlock()
	c.cnt.possiblyLostPayloads.Add(lost)
	c.cnt.possiblyLostBytes.Add(lostBytes)
}

func (c *Conn) readLoop() error {
	var buf, msg []byte
	var m Message
	var err error
	for {
		rctx, cancel := c.ctx, context.CancelFunc(func() {})
		if hb := c.peerHB.Load(); hb > 0 {
			rctx, cancel = context.WithTimeout(c.ctx, readDeadline(hb))
		}
		msg, buf, err = readMessage(rctx, c.ws, buf, c.cfg.MaxMessageSize)
		timedOut := rctx.Err() != nil && c.ctx.Err() == nil
		cancel()
		switch {
		case errors.Is(err, errOversize):
			c.cnt.oversize.Add(1)
			c.bad.Printf("bad", "sielink: %s: discarded a message above %d octets", c.cfg.URL, c.cfg.MaxMessageSize)
			continue
		case errors.Is(err, errTextMessage):
			c.cnt.malformed.Add(1)
			c.bad.Printf("bad", "sielink: %s: discarded a text message", c.cfg.URL)
			continue
		case timedOut:
			return ErrHeartbeatTimeout
		case c.ctx.Err() != nil || c.closing.Load():
			return ErrClosed
		case err != nil:
			return fmt.Errorf("sielink: reading: %w", err)
		}
		if err := DecodeMessage(msg, &m); err != nil {
			c.cnt.malformed.Add(1)
			c.bad.Printf("bad", "sielink: %s: %v", c.cfg.URL, err)
			continue
		}
		if m.Heartbeat != 0 {
			c.peerHB.Store(m.Heartbeat)
		}
		switch m.Type {
		case TypeHeartbeat:
			c.cnt.heartbeatsReceived.Add(1)
		case TypeTopology:
		case TypeAlert:
			c.cnt.alerts.Add(1)
			if m.Alert != nil && m.Alert.Level == AlertFatalError {
				return m.Alert
			}
			if m.Alert != nil && c.cfg.Logf != nil {
				c.cfg.Logf("sielink: %s: %v", c.cfg.URL, m.Alert)
			}
		case TypeShutdown:
			c.finish(5 * time.Second)
			c.ws.Close(websocket.StatusNormalClosure, "finished")
			return ErrShutdown
		case TypeFinished:
			return ErrFinished
		default:
			// A client subscribes to nothing, so Data (and any newer
			// message type) is unexpected but harmless.
			c.cnt.unexpected.Add(1)
		}
	}
}

// finish sends Finished, after which Send refuses to write.
func (c *Conn) finish(timeout time.Duration) {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.ended {
		return
	}
	c.ended = true
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	defer cancel()
	writeMessage(ctx, c.ws, &c.sendBuf, &Message{ProtocolVersion: []uint32{ProtocolVersion}, Type: TypeFinished})
}

func (c *Conn) heartbeats() {
	interval := c.cfg.Heartbeat
	t := time.NewTicker(interval)
	defer t.Stop()
	m := &Message{ProtocolVersion: []uint32{ProtocolVersion}, Type: TypeHeartbeat, Heartbeat: heartbeatMillis(interval)}
	var buf []byte
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		}
		// No deadline of its own: the WebSocket library ends the whole
		// connection when a write's context expires mid-frame, and a
		// heartbeat queued behind a large payload on a slow link (or a
		// starved machine) is late, not a sign of a dead peer. The
		// read deadline finds dead peers and then ends this write.
		if err := writeMessage(c.ctx, c.ws, &buf, m); err == nil {
			c.cnt.heartbeatsSent.Add(1)
		}
		// Confirm what was sent so far, so that a drop reports only
		// the payloads of the last interval as possibly lost.
		// A peer that has not answered the last ping yet (a stalled
		// collector stops reading) gets no new one: pings would pile up.
		if c.pings.Load() == 0 {
			ctx, cancel := context.WithTimeout(c.ctx, interval)
			c.Sync(ctx)
			cancel()
		}
	}
}

// Send writes container, one whole NMSG container, as one Data message
// on the configured channel, with linkLoss (what was lost before it on
// this hop; omitted when zero). It returns when the message has been
// written to the connection, not when the peer has it: see Sync. The
// caller may reuse container once Send returns.
//
// Send blocks while another Send is writing. Cancelling ctx while the
// message is being written ends the whole connection (the WebSocket
// framing cannot be resumed). After the connection ended, Send returns
// an error wrapping ErrClosed without writing. ErrTooLarge and
// ErrNotContainer reject the container, not the connection.
func (c *Conn) Send(ctx context.Context, container []byte, linkLoss LossCounter) error {
	if len(container) < 10 || string(container[:4]) != "NMSG" {
		return ErrNotContainer
	}
	p := Payload{Channel: c.cfg.Channel, PayloadType: PayloadNmsgContainer, Data: container}
	if !linkLoss.IsZero() {
		p.LinkLoss = &linkLoss
	}
	m := Message{ProtocolVersion: versionList, Type: TypeData, Payload: &p}
	if MessageSize(&m) > c.cfg.MaxMessageSize {
		return ErrTooLarge
	}
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	if c.ended {
		return c.closedErr()
	}
	if err := writeMessage(ctx, c.ws, &c.sendBuf, &m); err != nil {
		err = fmt.Errorf("sielink: sending payload: %w", err)
		c.fail(err)
		return err
	}
	c.sent++
	c.sentBytes += uint64(len(container))
	c.cnt.payloadsSent.Add(1)
	c.cnt.bytesSent.Add(uint64(len(container)))
	// Drop a large send buffer instead of pinning it while idle
	// connections outnumber busy ones.
	if cap(c.sendBuf) > 4*c.cfg.MaxMessageSize {
		c.sendBuf = nil
	}
	return nil
}

var versionList = []uint32{ProtocolVersion}

func (c *Conn) closedErr() error {
	select {
	case <-c.done:
		return fmt.Errorf("%w: %w", ErrClosed, c.err)
	default:
		return ErrClosed
	}
}

// Sync returns nil once the peer has read every payload written before
// Sync was called: it sends a WebSocket ping, which RFC 6455 peers
// answer in stream order. A supervisor keeps data until Sync succeeds;
// whatever was written after the last successful Sync counts as possibly
// lost if the connection drops. Sync does not end the connection when
// ctx expires.
func (c *Conn) Sync(ctx context.Context) error {
	c.sendMu.Lock()
	n, b := c.sent, c.sentBytes
	c.sendMu.Unlock()
	// The ping runs under the connection's context, and ctx bounds only
	// the wait for it: the WebSocket library ends the connection when a
	// write's context expires mid-frame, which a loaded machine or a
	// slow link made happen to Syncs that had only run out of patience.
	// The ping goroutine ends with the pong or the connection.
	res := make(chan error, 1)
	c.pings.Add(1)
	go func() {
		defer c.pings.Add(-1)
		res <- c.ws.Ping(c.ctx)
	}()
	var err error
	select {
	case err = <-res:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		select {
		case <-c.done:
			return c.closedErr()
		default:
		}
		return fmt.Errorf("sielink: sync: %w", err)
	}
	for {
		old := c.confirmed.Load()
		if old >= n || c.confirmed.CompareAndSwap(old, n) {
			break
		}
	}
	for {
		old := c.confirmedBytes.Load()
		if old >= b || c.confirmedBytes.CompareAndSwap(old, b) {
			break
		}
	}
	c.cnt.syncs.Add(1)
	return nil
}

// Unconfirmed returns what was written since the last successful Sync:
// what a drop now may have lost.
func (c *Conn) Unconfirmed() LossCounter {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return LossCounter{Payloads: c.sent - c.confirmed.Load(), Bytes: c.sentBytes - c.confirmedBytes.Load()}
}

// PeerHeartbeat returns the heartbeat interval the peer announced.
func (c *Conn) PeerHeartbeat() time.Duration {
	return time.Duration(c.peerHB.Load()) * time.Millisecond
}

// Done is closed when the connection has ended and its goroutines have
// returned.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended: nil while it runs, ErrClosed
// after Close, ErrShutdown after a peer Shutdown (answered with
// Finished), an *Alert for a peer FatalError, ErrHeartbeatTimeout, or a
// network error.
func (c *Conn) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

// Close ends the connection cleanly: it confirms what was sent (waiting
// at most the heartbeat interval), sends Finished and closes the
// WebSocket. It returns when the connection's goroutines have ended.
func (c *Conn) Close() error {
	c.closing.Store(true)
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.Heartbeat)
	c.Sync(ctx)
	cancel()
	c.finish(5 * time.Second)
	c.ws.Close(websocket.StatusNormalClosure, "finished")
	c.fail(ErrClosed)
	<-c.done
	return nil
}

// URLForTest exposes the session URL computation to tests.
func (cfg *Config) URLForTest() (*url.URL, error) {
	c := *cfg
	c.Name, c.APIKeyFile = "x", "x"
	_, u, err := c.withDefaults()
	return u, err
}
