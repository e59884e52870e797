package collector

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sie-europe/dnssensor/internal/secretfile"
	"github.com/sie-europe/dnssensor/uplink/internal/collector/auth"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// Options configures a collector.
type Options struct {
	// Listen is the sielink address, e.g. ":8443".
	Listen string
	// CertFile and KeyFile are the server's TLS certificate and key
	// (PEM). PlainHTTP serves without TLS instead, which is refused
	// unless Listen is a loopback address: it exists for tests.
	CertFile, KeyFile string
	PlainHTTP         bool
	// KeysFile maps sensors to API keys (auth.LoadKeys format,
	// mode 0600).
	KeysFile string
	// Store configures the NMSG files.
	Store StoreOptions
	// JetStream, if set, puts a JetStream stream between the sensors and the files: a container
	// is confirmed once the stream holds it, and the archiver writes the stream into the files.
	// Nil stores directly (the files are the only copy, a resend across a restart is stored
	// twice).
	JetStream *JetStreamOptions
	// MetricsListen serves the health contract (internal/health: /health.json, /metrics,
	// /metrics.json) and /status.json (Snapshot); it must be a loopback address. Empty disables.
	MetricsListen string
	// Fleet configures the fleet view (fleet.go): the sensors' health reports.
	Fleet FleetOptions
	// Heartbeat is the sielink heartbeat; default 30 s.
	Heartbeat time.Duration
	// MaxUnauthenticated caps connections that are not (yet) sielink sessions: TLS handshakes,
	// requests being read, refused peers. Beyond it new connections are closed at once, so
	// unauthenticated peers cannot use up the file descriptors real sensors need. Default 256.
	MaxUnauthenticated int
	// MaxSessionsPerSensor caps one sensor's concurrent sessions; default
	// sielink.DefaultMaxSessionsPerSensor.
	MaxSessionsPerSensor int
	// Forward, if set, receives every payload after it was stored:
	// the seam for a spool + uplink to SIE Europe. An error from it
	// ends the sensor's session like a storage error (the sensor keeps
	// and resends the unconfirmed data), so it should only fail when
	// it cannot accept data at all.
	Forward sielink.Handler
	// Logf receives the collector's log lines; nil discards.
	Logf sielink.Logf
	// Ready, if set, is called with the bound sielink and metrics
	// addresses once both listen.
	Ready func(sielinkAddr, metricsAddr string)

	headerTimeout time.Duration  // seam for tests; default HeaderTimeout
	metricsHook   func(*metrics) // seam for benchmarks: the collector's counters
}

// HeaderTimeout bounds a connection's TLS handshake and request headers: a peer that has not
// asked for a session by then is closed.
const HeaderTimeout = 10 * time.Second

// ShutdownTimeout bounds the wait for sensors to answer Shutdown.
const ShutdownTimeout = 30 * time.Second

// Run serves until ctx ends, then sends Shutdown to every sensor, waits
// for their Finished (at most ShutdownTimeout), and seals all files.
func Run(ctx context.Context, opts Options) error {
	keys, err := auth.LoadKeys(opts.KeysFile)
	if err != nil {
		return err
	}
	fleet, stopFleet, err := startFleet(opts.Fleet, opts.Store.Dir, keys.Sensors(), opts.Logf)
	if err != nil {
		return err
	}
	// Runs after the sessions' shutdown (deferred before it): their last reports are saved.
	defer stopFleet()
	store, err := NewStore(opts.Store)
	if err != nil {
		return err
	}
	var handler admitHandler = store
	var js *jsRunner
	if opts.JetStream != nil {
		jo := *opts.JetStream
		jo.forward = opts.Forward // a consumer of the stream
		if js, err = startJetStream(ctx, jo, store, opts.Logf); err != nil {
			store.Close()
			return err
		}
		defer js.close()
		handler = js.pub
		// Every collector on the stream shows the whole fleet, whichever one a sensor reports to.
		defer shareFleet(fleet, js.bus, opts.Logf)() // stops before js.close: the last reports are put while the bus is open
		if jo.Pipeline {
			handler = pipelinedPublisher{js.pub}
		}
	}
	if opts.Forward != nil && js == nil {
		handler = &storeForward{store: handler, fwd: opts.Forward}
	}
	srv := &sielink.Server{Auth: keys, Handler: handler, Reports: fleet, Heartbeat: opts.Heartbeat, Logf: opts.Logf,
		MaxSessionsPerSensor: opts.MaxSessionsPerSensor}

	tln, err := listen(opts)
	if err != nil {
		store.Close()
		return err
	}
	ln := newConnGate(tln, opts.MaxUnauthenticated)
	mux := http.NewServeMux()
	mux.Handle("/session/", srv)
	hs := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: cmp.Or(opts.headerTimeout, HeaderTimeout),
		// A kept-alive connection between requests; sessions are hijacked and unaffected.
		IdleTimeout:    30 * time.Second,
		MaxHeaderBytes: 64 << 10,
		ConnState:      ln.state,
		ErrorLog:       log.New(logWriter{opts.Logf}, "", 0),
	}

	var mln net.Listener
	if opts.MetricsListen != "" {
		if !isLoopback(opts.MetricsListen) {
			ln.Close()
			store.Close()
			return fmt.Errorf("metrics address %s is not a loopback address", opts.MetricsListen)
		}
		if mln, err = net.Listen("tcp", opts.MetricsListen); err != nil {
			ln.Close()
			store.Close()
			return err
		}
	}
	m := &metrics{srv: srv, store: store, gate: ln, quota: opts.Store.Quota, sensors: keys.Sensors(), js: js, fleet: fleet}
	if opts.metricsHook != nil {
		opts.metricsHook(m)
	}

	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	// The health server runs until Run returns (after the sessions' shutdown, so /status.json
	// shows it); healthDone (nil without a metrics address) carries its end.
	var healthDone chan error
	if mln != nil {
		healthDone = make(chan error, 1)
		hctx, hcancel := context.WithCancel(context.Background())
		go func() { healthDone <- m.serveHealth(hctx, mln, ln.Addr().String(), opts.Logf) }()
		defer func() {
			hcancel()
			if healthDone != nil {
				<-healthDone
			}
		}()
	}
	if opts.Ready != nil {
		maddr := ""
		if mln != nil {
			maddr = mln.Addr().String()
		}
		opts.Ready(ln.Addr().String(), maddr)
	}
	rotate := time.NewTicker(time.Second)
	defer rotate.Stop()
	var serveErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-rotate.C:
			store.Rotate()
		case serveErr = <-errc:
			break loop
		case err := <-healthDone:
			healthDone = nil // ended: nothing to wait for
			serveErr = fmt.Errorf("metrics: serving stopped: %v", err)
			break loop
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	srv.Shutdown(sctx)
	hs.Shutdown(sctx)
	js.stopArchiver()
	if err := store.Close(); err != nil {
		return err
	}
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return nil
}

// logWriter routes the http.Server's own reports (failed TLS handshakes) to Logf.
type logWriter struct{ logf sielink.Logf }

func (w logWriter) Write(b []byte) (int, error) {
	if w.logf != nil {
		w.logf("collector: %s", strings.TrimSuffix(string(b), "\n"))
	}
	return len(b), nil
}

// storeForward stores, then forwards. It keeps the Store's admission check (quota), and
// remembers the containers stored but not forwarded, so that their resend is forwarded (and its
// linkLoss counted) while the resend of one that went both ways is neither.
type storeForward struct {
	store admitHandler
	fwd   sielink.Handler

	mu          sync.Mutex
	unforwarded map[fwdKey]struct{}
}

type fwdKey struct {
	sensor string
	seq    seqKey
}

// maxUnforwarded bounds the memory of failed forwards; each one ended a session, so reaching it
// means the forward spool has refused data for a long time.
const maxUnforwarded = 1 << 12

func (h *storeForward) Admit(sensor string) error { return h.store.Admit(sensor) }

func (h *storeForward) Deliver(d *sielink.Delivery) error {
	if err := h.store.Deliver(d); err != nil {
		return err
	}
	id, seq, hasKey := deliverySeq(d).of(d.Payload.Data)
	k := fwdKey{d.Sensor, seqKey{id, seq}}
	if d.Duplicate {
		h.mu.Lock()
		_, retry := h.unforwarded[k]
		h.mu.Unlock()
		if !retry {
			return nil
		}
	}
	if err := h.fwd.Deliver(d); err != nil {
		if hasKey {
			h.mu.Lock()
			if h.unforwarded == nil {
				h.unforwarded = make(map[fwdKey]struct{})
			}
			if len(h.unforwarded) < maxUnforwarded {
				h.unforwarded[k] = struct{}{}
			}
			h.mu.Unlock()
		}
		return err
	}
	if d.Duplicate {
		h.mu.Lock()
		delete(h.unforwarded, k)
		h.mu.Unlock()
		d.Duplicate = false // its first delivery failed, so its linkLoss was not counted
	}
	return nil
}

// tlsConfig offers TLS 1.3, and TLS 1.2 only with forward-secret AEAD suites (no CBC, no RSA
// key exchange).
func tlsConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
			tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
		},
		NextProtos: []string{"http/1.1"},
	}
}

func listen(opts Options) (net.Listener, error) {
	if opts.PlainHTTP {
		if !isLoopback(opts.Listen) {
			return nil, fmt.Errorf("plain HTTP is only allowed on loopback addresses, not %s", opts.Listen)
		}
		return net.Listen("tcp", opts.Listen)
	}
	certPEM, err := os.ReadFile(opts.CertFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate (-cert): %w", err)
	}
	// The private key is held to the keys file's rule: a key others could read must be replaced.
	keyPEM, err := secretfile.Read(opts.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS private key (-key): %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("loading TLS certificate (-cert, -key): %w", err)
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return nil, err
	}
	return tls.NewListener(ln, tlsConfig(cert)), nil
}

// DefaultMaxUnauthenticated is Options.MaxUnauthenticated's default.
const DefaultMaxUnauthenticated = 256

// connGate closes new connections while max connections are open that are not sielink sessions
// yet (a WebSocket upgrade hijacks the connection from the http.Server, which ends its count).
type connGate struct {
	net.Listener
	max     int
	mu      sync.Mutex
	open    map[net.Conn]struct{}
	refused atomic.Uint64
}

func newConnGate(ln net.Listener, max int) *connGate {
	if max <= 0 {
		max = DefaultMaxUnauthenticated
	}
	return &connGate{Listener: ln, max: max, open: make(map[net.Conn]struct{})}
}

func (g *connGate) Accept() (net.Conn, error) {
	for {
		c, err := g.Listener.Accept()
		if err != nil {
			return nil, err
		}
		g.mu.Lock()
		full := len(g.open) >= g.max
		if !full {
			g.open[c] = struct{}{}
		}
		g.mu.Unlock()
		if !full {
			return c, nil
		}
		g.refused.Add(1)
		c.Close()
	}
}

// state is the http.Server's ConnState hook.
func (g *connGate) state(c net.Conn, st http.ConnState) {
	if st == http.StateHijacked || st == http.StateClosed {
		g.mu.Lock()
		delete(g.open, c)
		g.mu.Unlock()
	}
}

func (g *connGate) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.open)
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// metrics serves the counters as Prometheus text (/metrics) and JSON
// (/metrics.json).
type metrics struct {
	srv     *sielink.Server
	store   *Store
	gate    *connGate
	quota   int64
	sensors []string // of the keys file, each a check in /health.json
	js      *jsRunner
	fleet   *Fleet
}

// Snapshot is the collector's state in one document (/status.json); /metrics and /metrics.json
// carry the same counters.
type Snapshot struct {
	Server          sielink.ServerStats `json:"server"`
	Unauthenticated int                 `json:"unauthenticated"`       // connections that are not sessions (yet)
	RefusedConns    uint64              `json:"refused_connections"`   // closed at once: too many unauthenticated
	Quota           int64               `json:"quota_bytes,omitempty"` // per-sensor disk quota
	Sensors         []SensorSnapshot    `json:"sensors"`
	JetStream       *JetStreamSnapshot  `json:"jetstream,omitempty"`
}

// SensorSnapshot joins a sensor's session and storage counters.
type SensorSnapshot struct {
	sielink.SensorStats
	Files   FileStats     `json:"files"`
	Publish *PublishStats `json:"publish,omitempty"` // into the stream (JetStream)
}

func (m *metrics) snapshot() Snapshot {
	snap := Snapshot{Server: m.srv.Stats(), Unauthenticated: m.gate.count(), RefusedConns: m.gate.refused.Load(), Quota: m.quota}
	files := m.store.Stats()
	var pub map[string]PublishStats
	if m.js != nil {
		snap.JetStream = m.js.snapshot()
		pub = m.js.pub.stats()
	}
	for _, s := range m.srv.Sensors() {
		ss := SensorSnapshot{SensorStats: s, Files: files[s.Sensor]}
		if p, ok := pub[s.Sensor]; ok {
			ss.Publish = &p
		}
		snap.Sensors = append(snap.Sensors, ss)
	}
	return snap
}
