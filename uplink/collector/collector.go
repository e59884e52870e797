package collector

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sie-europe/dnssensor/nmsg"
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
	// KeysFile maps sensors to API keys (sielink.LoadKeys format,
	// mode 0600).
	KeysFile string
	// Store configures the NMSG files.
	Store StoreOptions
	// MetricsListen serves /metrics (Prometheus text) and
	// /metrics.json; it must be a loopback address. Empty disables.
	MetricsListen string
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

	headerTimeout time.Duration // seam for tests; default HeaderTimeout
}

// HeaderTimeout bounds a connection's TLS handshake and request headers: a peer that has not
// asked for a session by then is closed.
const HeaderTimeout = 10 * time.Second

// ShutdownTimeout bounds the wait for sensors to answer Shutdown.
const ShutdownTimeout = 30 * time.Second

// Run serves until ctx ends, then sends Shutdown to every sensor, waits
// for their Finished (at most ShutdownTimeout), and seals all files.
func Run(ctx context.Context, opts Options) error {
	keys, err := sielink.LoadKeys(opts.KeysFile)
	if err != nil {
		return err
	}
	store, err := NewStore(opts.Store)
	if err != nil {
		return err
	}
	var handler sielink.Handler = store
	if opts.Forward != nil {
		handler = &storeForward{store: store, fwd: opts.Forward}
	}
	srv := &sielink.Server{Keys: keys, Handler: handler, Heartbeat: opts.Heartbeat, Logf: opts.Logf,
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
	m := &metrics{srv: srv, store: store, gate: ln, quota: opts.Store.Quota}
	ms := &http.Server{Handler: m, ReadHeaderTimeout: 10 * time.Second}

	errc := make(chan error, 2)
	go func() { errc <- hs.Serve(ln) }()
	if mln != nil {
		go func() { errc <- ms.Serve(mln) }()
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
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	srv.Shutdown(sctx)
	hs.Shutdown(sctx)
	ms.Close()
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
	store *Store
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
	id, seq, hasKey := nmsg.ContainerSequence(d.Payload.Data)
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
	keyPEM, err := sielink.ReadSecretFile(opts.KeyFile)
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
	srv   *sielink.Server
	store *Store
	gate  *connGate
	quota int64
}

// Snapshot is the JSON form of the collector's metrics.
type Snapshot struct {
	Server          sielink.ServerStats `json:"server"`
	Unauthenticated int                 `json:"unauthenticated"`       // connections that are not sessions (yet)
	RefusedConns    uint64              `json:"refused_connections"`   // closed at once: too many unauthenticated
	Quota           int64               `json:"quota_bytes,omitempty"` // per-sensor disk quota
	Sensors         []SensorSnapshot    `json:"sensors"`
}

// SensorSnapshot joins a sensor's session and storage counters.
type SensorSnapshot struct {
	sielink.SensorStats
	Files FileStats `json:"files"`
}

func (m *metrics) snapshot() Snapshot {
	snap := Snapshot{Server: m.srv.Stats(), Unauthenticated: m.gate.count(), RefusedConns: m.gate.refused.Load(), Quota: m.quota}
	files := m.store.Stats()
	for _, s := range m.srv.Sensors() {
		snap.Sensors = append(snap.Sensors, SensorSnapshot{SensorStats: s, Files: files[s.Sensor]})
	}
	return snap
}

func (m *metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	snap := m.snapshot()
	switch r.URL.Path {
	case "/metrics.json":
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(snap)
	case "/metrics":
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.Write([]byte(snap.Prometheus()))
	default:
		http.NotFound(w, r)
	}
}

// Prometheus renders the snapshot in the Prometheus text format.
func (s Snapshot) Prometheus() string {
	var b strings.Builder
	g := func(name, typ, help string, v any) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s %v\n", name, help, name, typ, name, v)
	}
	st := s.Server
	g("collector_sessions_active", "gauge", "Open sensor sessions.", st.Active)
	g("collector_sessions_accepted_total", "counter", "Sessions past the handshake.", st.Accepted)
	g("collector_rejected_auth_total", "counter", "Sessions refused for a missing, unknown or wrong API key.", st.RejectedAuth)
	g("collector_rejected_other_total", "counter", "Sessions refused for other reasons.", st.RejectedOther)
	g("collector_handshake_failed_total", "counter", "Sessions without a valid first message.", st.HandshakeFailed)
	g("collector_heartbeat_timeouts_total", "counter", "Sessions closed because the sensor went silent.", st.HeartbeatTimeouts)
	g("collector_malformed_total", "counter", "Messages that did not decode.", st.Malformed)
	g("collector_oversize_total", "counter", "Messages above the size cap.", st.Oversize)
	g("collector_invalid_containers_total", "counter", "Payloads that are not one valid NMSG container.", st.InvalidContainers)
	g("collector_handler_errors_total", "counter", "Payloads that could not be stored or forwarded.", st.HandlerErrors)
	g("collector_store_stalls_total", "counter", "Attempts to store a payload that failed and were retried (disk full); nothing after it is confirmed meanwhile.", st.Stalls)
	g("collector_sessions_refused_total", "counter", "Sessions refused by the store (sensor over its disk quota).", st.Refused)
	g("collector_sessions_too_many_total", "counter", "Sessions refused above the per-sensor session cap.", st.TooManySessions)
	g("collector_bad_heartbeat_total", "counter", "Sessions refused for announcing no heartbeat or one above the maximum.", st.BadHeartbeat)
	g("collector_unauthenticated_connections", "gauge", "Connections that are not sessions (yet).", s.Unauthenticated)
	g("collector_unauthenticated_refused_total", "counter", "Connections closed at once because too many were unauthenticated.", s.RefusedConns)
	g("collector_sensor_quota_bytes", "gauge", "Disk quota per sensor (0: none).", s.Quota)

	sensors := append([]SensorSnapshot(nil), s.Sensors...)
	sort.Slice(sensors, func(i, j int) bool { return sensors[i].Sensor < sensors[j].Sensor })
	per := func(name, typ, help string, v func(*SensorSnapshot) any) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
		for i := range sensors {
			fmt.Fprintf(&b, "%s{sensor=%q} %v\n", name, sensors[i].Sensor, v(&sensors[i]))
		}
	}
	per("collector_sensor_sessions", "gauge", "Open sessions of the sensor.", func(s *SensorSnapshot) any { return s.Sessions })
	per("collector_sensor_payloads_total", "counter", "NMSG containers received.", func(s *SensorSnapshot) any { return s.Payloads })
	per("collector_sensor_bytes_total", "counter", "Octets of NMSG containers received.", func(s *SensorSnapshot) any { return s.Bytes })
	per("collector_sensor_records_total", "counter", "NMSG payloads (records) received.", func(s *SensorSnapshot) any { return s.Records })
	per("collector_sensor_invalid_total", "counter", "Messages of the sensor dropped as malformed or invalid.", func(s *SensorSnapshot) any { return s.Invalid })
	per("collector_sensor_last_seen_seconds", "gauge", "Unix time of the last message.", func(s *SensorSnapshot) any { return s.LastSeen.Unix() })
	per("collector_sensor_link_loss_bytes_total", "counter", "Octets the sensor reported lost (linkLoss).", func(s *SensorSnapshot) any { return s.LinkLossBytes })
	per("collector_sensor_link_loss_payloads_total", "counter", "Containers the sensor reported lost (linkLoss).", func(s *SensorSnapshot) any { return s.LinkLossPayloads })
	per("collector_sensor_files_sealed_total", "counter", "NMSG files completed.", func(s *SensorSnapshot) any { return s.Files.FilesSealed })
	per("collector_sensor_file_bytes_total", "counter", "Octets written to NMSG files.", func(s *SensorSnapshot) any { return s.Files.Bytes })
	per("collector_sensor_write_errors_total", "counter", "File write, fsync and seal errors.", func(s *SensorSnapshot) any { return s.Files.WriteErrors })
	per("collector_sensor_store_stalled", "gauge", "1 while the sensor's data cannot be stored (it waits in the sensor's spool).", func(s *SensorSnapshot) any { return b2i(s.Files.Stalled) })
	per("collector_sensor_pending_seals", "gauge", "Files whose seal failed and is retried.", func(s *SensorSnapshot) any { return s.Files.PendingSeals })
	per("collector_sensor_disk_bytes", "gauge", "Octets in the sensor's directory, as measured for the quota.", func(s *SensorSnapshot) any { return s.Files.DiskBytes })
	per("collector_sensor_quota_refusals_total", "counter", "Sessions and payloads refused because the sensor was over its quota.", func(s *SensorSnapshot) any { return s.Files.QuotaRefusals })
	return b.String()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}
