package sielink

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/uplink/internal/collector/auth"
	"github.com/sie-europe/dnssensor/uplink/sielink/sielinktest"
)

// safeLog forwards to t.Logf until the test ends; goroutines that log
// late must not panic the test binary.
func safeLog(t *testing.T) Logf {
	var done atomic.Bool
	t.Cleanup(func() { done.Store(true) })
	return func(format string, args ...any) {
		if !done.Load() {
			t.Logf(format, args...)
		}
	}
}

// container returns one NMSG container holding records payloads of
// size octets each (random data, so zlib does not shrink it).
func container(t testing.TB, rng *rand.Rand, records, size int) []byte {
	var buf bytes.Buffer
	w, err := nmsg.NewFileWriter(&buf, nmsg.FileOptions{CRC: true})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, size)
	for i := 0; i < records; i++ {
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		if err := w.Write(&nmsg.Payload{Vid: 1, Msgtype: 9, TimeSec: 1700000000 + int64(i), Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	if n := nmsg.HeaderSize + int(uint32(b[6])<<24|uint32(b[7])<<16|uint32(b[8])<<8|uint32(b[9])); n != len(b) {
		t.Fatalf("container helper produced more than one container (%d of %d octets)", n, len(b))
	}
	return b
}

type env struct {
	t         *testing.T
	srv       *Server
	ts        *httptest.Server
	addr      string
	clientTLS *tls.Config
	keyFiles  map[string]string
	dir       string

	mu  sync.Mutex
	got map[string][][]byte
}

// envHeartbeat is both sides' heartbeat in tests that are not about heartbeats. It is far above
// any scheduling delay of a loaded machine: with 1 s (a 1.5 s read deadline) a busy CI machine
// timed sessions out in the middle of TestDeliver. Tests of heartbeats set their own.
const envHeartbeat = 20 * time.Second

func newEnv(t *testing.T, opt func(*Server)) *env {
	e := &env{t: t, dir: t.TempDir(), got: make(map[string][][]byte)}
	keysFile, keyFiles, err := sielinktest.WriteKeys(e.dir, "s1", "s2")
	if err != nil {
		t.Fatal(err)
	}
	e.keyFiles = keyFiles
	keys, err := auth.LoadKeys(keysFile)
	if err != nil {
		t.Fatal(err)
	}
	stls, ctls, err := sielinktest.TLS("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	e.clientTLS = ctls
	e.srv = &Server{
		Auth:      keys,
		Heartbeat: envHeartbeat,
		Logf:      safeLog(t),
		Handler: HandlerFunc(func(d *Delivery) error {
			e.mu.Lock()
			e.got[d.Sensor] = append(e.got[d.Sensor], bytes.Clone(d.Payload.Data))
			e.mu.Unlock()
			return nil
		}),
	}
	if opt != nil {
		opt(e.srv)
	}
	e.ts = httptest.NewUnstartedServer(e.srv)
	e.ts.TLS = stls
	e.ts.StartTLS()
	e.addr = e.ts.Listener.Addr().String()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		e.srv.Shutdown(ctx)
		e.ts.Close()
	})
	return e
}

func (e *env) config(sensor string) Config {
	return Config{
		URL:        "wss://" + e.addr,
		Name:       sensor,
		APIKeyFile: e.keyFiles[sensor],
		TLS:        e.clientTLS,
		Heartbeat:  envHeartbeat,
		Logf:       safeLog(e.t),
	}
}

func (e *env) received(sensor string) [][]byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([][]byte(nil), e.got[sensor]...)
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestDeliver(t *testing.T) {
	testenv.CheckLeaks(t)
	e := newEnv(t, nil)
	ctx := ctxT(t, 30*time.Second)
	conn, err := Dial(ctx, e.config("s1"))
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var sent [][]byte
	records := 0
	for i, size := range []int{100, 1000, 4000, 30000, 60000, 200000, 500000, 900000} {
		n := 1 + i
		c := container(t, rng, n, size/n)
		records += n
		loss := LossCounter{}
		if i == 3 {
			loss = LossCounter{Bytes: 1234, Payloads: 2}
		}
		if err := conn.Send(ctx, c, loss); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, c)
	}
	if err := conn.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if u := conn.Unconfirmed(); !u.IsZero() {
		t.Errorf("after Sync, unconfirmed %+v", u)
	}
	got := e.received("s1")
	if len(got) != len(sent) {
		t.Fatalf("server received %d payloads, want %d", len(got), len(sent))
	}
	for i := range sent {
		if !bytes.Equal(got[i], sent[i]) {
			t.Errorf("payload %d differs (%d vs %d octets)", i, len(got[i]), len(sent[i]))
		}
	}
	st := e.srv.Sensors()
	if len(st) != 1 || st[0].Sensor != "s1" || st[0].Payloads != uint64(len(sent)) || st[0].Records != uint64(records) ||
		st[0].LinkLossBytes != 1234 || st[0].LinkLossPayloads != 2 || st[0].Invalid != 0 {
		t.Errorf("sensor stats %+v", st)
	}
	if err := conn.Send(ctx, []byte("not nmsg"), LossCounter{}); !errors.Is(err, ErrNotContainer) {
		t.Errorf("Send(garbage) = %v", err)
	}
	if err := conn.Send(ctx, append([]byte("NMSG\x00\x02"), make([]byte, 3<<20)...), LossCounter{}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("Send(3 MiB) = %v", err)
	}
	cs := conn.Stats()
	if cs.PayloadsSent != uint64(len(sent)) || cs.Connects != 1 {
		t.Errorf("client stats %+v", cs)
	}
	conn.Close()
	if !errors.Is(conn.Err(), ErrClosed) {
		t.Errorf("Err after Close = %v", conn.Err())
	}
	if err := conn.Send(ctx, sent[0], LossCounter{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close = %v", err)
	}
	testenv.WaitFor(t, "Finished at the server", func() bool { return e.srv.Stats().FinishedReceived == 1 && e.srv.Stats().Active == 0 })
	if ps := conn.Stats().PossiblyLostPayloads; ps != 0 {
		t.Errorf("clean close reported %d payloads possibly lost", ps)
	}
}

func TestRejected(t *testing.T) {
	testenv.CheckLeaks(t)
	e := newEnv(t, nil)
	ctx := ctxT(t, 10*time.Second)

	unknown := filepath.Join(e.dir, "unknown.key")
	os.WriteFile(unknown, []byte(sielinktest.NewAPIKey()), 0o600)
	cfg := e.config("s1")
	cfg.APIKeyFile = unknown
	if _, err := Dial(ctx, cfg); !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "401") {
		t.Errorf("unknown key: Dial = %v, want ErrRejected (401)", err)
	}
	// A valid key of another sensor.
	cfg = e.config("s1")
	cfg.APIKeyFile = e.keyFiles["s2"]
	if _, err := Dial(ctx, cfg); !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "403") {
		t.Errorf("other sensor's key: Dial = %v, want ErrRejected (403)", err)
	}
	if st := e.srv.Stats(); st.RejectedAuth != 2 || st.Accepted != 0 {
		t.Errorf("server stats %+v", st)
	}
}

func TestKeyFilePermissions(t *testing.T) {
	testenv.CheckLeaks(t)
	e := newEnv(t, nil)
	cfg := e.config("s1")
	if err := os.Chmod(cfg.APIKeyFile, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Dial(ctxT(t, 10*time.Second), cfg); !errors.Is(err, ErrKeyFilePermissions) {
		t.Errorf("Dial with a 0640 key file = %v", err)
	}
	if _, err := NewClient(cfg); !errors.Is(err, ErrKeyFilePermissions) {
		t.Errorf("NewClient with a 0640 key file = %v", err)
	}
	if st := e.srv.Stats(); st.RejectedAuth+st.Accepted != 0 {
		t.Errorf("a refused key file still reached the server: %+v", st)
	}
}

// fakeServer accepts one session on loopback TLS, sends a Topology
// announcing hb, and then runs script.
func fakeServer(t *testing.T, hb time.Duration, script func(ctx context.Context, ws *websocket.Conn)) (Config, *tls.Config) {
	stls, ctls, err := sielinktest.TLS("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer ws.CloseNow()
		var buf []byte
		writeMessage(ctx, ws, &buf, &Message{ProtocolVersion: []uint32{1}, Type: TypeTopology, Topology: &Topology{}, Heartbeat: heartbeatMillis(hb)})
		if _, _, err := ws.Read(ctx); err != nil { // the client's Topology
			return
		}
		script(ctx, ws)
	}))
	ts.TLS = stls
	ts.StartTLS()
	t.Cleanup(func() {
		cancel()
		ts.Close()
	})
	dir := t.TempDir()
	kf := filepath.Join(dir, "key")
	os.WriteFile(kf, []byte("k"), 0o600)
	return Config{URL: "wss://" + ts.Listener.Addr().String(), Name: "s1", APIKeyFile: kf, TLS: ctls, Heartbeat: time.Hour, Logf: safeLog(t)}, stls
}

// drain reads and discards messages (answering pings) until the
// connection ends.
func drain(ctx context.Context, ws *websocket.Conn) {
	for {
		if _, _, err := ws.Read(ctx); err != nil {
			return
		}
	}
}

func TestClientDetectsDeadServer(t *testing.T) {
	testenv.CheckLeaks(t)
	cfg, _ := fakeServer(t, 100*time.Millisecond, func(ctx context.Context, ws *websocket.Conn) {
		drain(ctx, ws) // answers pings, sends nothing: a hung peer
	})
	start := time.Now()
	conn, err := Dial(ctxT(t, 10*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-conn.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("silent peer not detected")
	}
	if el := time.Since(start); !errors.Is(conn.Err(), ErrHeartbeatTimeout) || el < 150*time.Millisecond {
		t.Errorf("after %v: Err = %v, want ErrHeartbeatTimeout after ≥ 150 ms", el, conn.Err())
	}
}

func TestServerDetectsDeadClient(t *testing.T) {
	testenv.CheckLeaks(t)
	e := newEnv(t, nil)
	ws := rawClient(t, e, "s1", 100*time.Millisecond)
	defer ws.CloseNow()
	start := time.Now()
	testenv.WaitFor(t, "heartbeat timeout at the server", func() bool {
		st := e.srv.Stats()
		return st.HeartbeatTimeouts == 1 && st.Active == 0
	})
	// The client announced 100 ms heartbeats, so the server's deadline is 150 ms; the server's
	// own heartbeat is envHeartbeat. Detection well before that proves the peer's interval was
	// used, without a bound a loaded machine's scheduling could break (2 s took 3.4 s under -race
	// at load 15).
	if el := time.Since(start); el > envHeartbeat/2 {
		t.Errorf("dead client detected only after %v", el)
	}
}

// rawClient performs the sielink handshake by hand and returns the
// WebSocket, for tests that misbehave on purpose.
func rawClient(t *testing.T, e *env, sensor string, hb time.Duration) *websocket.Conn {
	key, err := ReadAPIKey(e.keyFiles[sensor])
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set("X-API-Key", key)
	ctx := ctxT(t, 10*time.Second)
	ws, _, err := websocket.Dial(ctx, "wss://"+e.addr+"/session/"+sensor, &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: &http.Transport{TLSClientConfig: e.clientTLS}},
		HTTPHeader: h,
	})
	if err != nil {
		t.Fatal(err)
	}
	var buf []byte
	if err := writeMessage(ctx, ws, &buf, &Message{ProtocolVersion: []uint32{1}, Type: TypeTopology, Topology: &Topology{}, Heartbeat: heartbeatMillis(hb)}); err != nil {
		t.Fatal(err)
	}
	return ws
}

func TestShutdownAnswered(t *testing.T) {
	testenv.CheckLeaks(t)
	e := newEnv(t, nil)
	conn, err := Dial(ctxT(t, 10*time.Second), e.config("s1"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.srv.Shutdown(ctxT(t, 5*time.Second)); err != nil {
		t.Fatalf("Shutdown had to force sessions closed: %v", err)
	}
	<-conn.Done()
	if !errors.Is(conn.Err(), ErrShutdown) {
		t.Errorf("client Err = %v, want ErrShutdown", conn.Err())
	}
	if st := e.srv.Stats(); st.ShutdownsSent != 1 || st.FinishedReceived != 1 || st.Active != 0 {
		t.Errorf("server stats %+v", st)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("shutdown took %v", el)
	}
	// New sessions are refused while shut down.
	if _, err := Dial(ctxT(t, 10*time.Second), e.config("s1")); !errors.Is(err, ErrRejected) && err == nil {
		t.Errorf("Dial after Shutdown succeeded")
	}
}

func TestFatalError(t *testing.T) {
	testenv.CheckLeaks(t)
	var sessions atomic.Int32
	cfg, _ := fakeServer(t, time.Second, func(ctx context.Context, ws *websocket.Conn) {
		sessions.Add(1)
		var buf []byte
		writeMessage(ctx, ws, &buf, &Message{ProtocolVersion: []uint32{1}, Type: TypeAlert, Alert: &Alert{Level: AlertWarning, Message: "just so you know"}})
		writeMessage(ctx, ws, &buf, fatalAlert("quota exceeded"))
		drain(ctx, ws)
	})
	conn, err := Dial(ctxT(t, 10*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	<-conn.Done()
	var alert *Alert
	if !errors.As(conn.Err(), &alert) || alert.Level != AlertFatalError || alert.Message != "quota exceeded" {
		t.Fatalf("Err = %v, want the FatalError alert", conn.Err())
	}
	if a := conn.Stats().Alerts; a != 2 {
		t.Errorf("alerts counted %d, want 2", a)
	}

	// A Client backs off for FatalBackoff before trying again.
	cfg.MinBackoff, cfg.FatalBackoff, cfg.MaxBackoff = 10*time.Millisecond, 10*time.Second, time.Minute
	cl, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- cl.Run(ctx) }()
	testenv.WaitFor(t, "back-off after FatalError", func() bool { return cl.Status().State == StateBackoff })
	time.Sleep(300 * time.Millisecond)
	st := cl.Status()
	if st.State != StateBackoff || !strings.Contains(st.LastError, "quota exceeded") || st.Stats.Dials != 1 || sessions.Load() != 2 {
		t.Errorf("status %+v, sessions %d", st, sessions.Load())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
	if cl.Status().State != StateStopped {
		t.Errorf("state after Run %v", cl.Status().State)
	}
}

func TestBadInputAtServer(t *testing.T) {
	testenv.CheckLeaks(t)
	e := newEnv(t, func(s *Server) { s.MaxMessageSize = 64 << 10 })
	ws := rawClient(t, e, "s1", time.Second)
	defer ws.CloseNow()
	ctx := ctxT(t, 10*time.Second)
	go func() { // keep control frames flowing
		for {
			if _, _, err := ws.Read(ctx); err != nil {
				return
			}
		}
	}()
	rng := rand.New(rand.NewPCG(3, 4))
	valid := container(t, rng, 3, 100)
	data := func(p *Payload) []byte {
		return AppendMessage(nil, &Message{ProtocolVersion: []uint32{1}, Type: TypeData, Payload: p})
	}
	nm := func(d []byte) *Payload { return &Payload{Channel: 202, PayloadType: PayloadNmsgContainer, Data: d} }
	badZlib := append([]byte(nil), valid...)
	badZlib[4] |= 0x01
	for _, m := range [][]byte{
		{0xff, 0xff, 0xff},                          // malformed protobuf
		data(&Payload{Channel: 202, Data: nil})[:5], // truncated
		data(nm([]byte("hello, world"))),            // not NMSG
		data(nm(valid[:len(valid)-1])),              // truncated container
		data(nm(append(bytes.Clone(valid), 0))),     // trailing octet
		data(nm(badZlib)),                           // zlib flag on plain body
		data(&Payload{Channel: 202, PayloadType: PayloadAccountingRecord, Data: valid}), // unsupported (a LogRecord is a health report: report_test.go)
		data(nm(make([]byte, 100<<10))), // oversize
	} {
		if err := ws.Write(ctx, websocket.MessageBinary, m); err != nil {
			t.Fatal(err)
		}
	}
	ws.Write(ctx, websocket.MessageText, []byte("hi"))
	ws.Write(ctx, websocket.MessageBinary, data(nm(valid)))
	testenv.WaitFor(t, "the valid payload", func() bool { return len(e.received("s1")) == 1 })
	if !bytes.Equal(e.received("s1")[0], valid) {
		t.Error("valid payload altered")
	}
	st := e.srv.Stats()
	if st.Malformed != 3 || st.InvalidContainers != 4 || st.Unsupported != 1 || st.Oversize != 1 || st.Active != 1 {
		t.Errorf("server stats %+v", st)
	}
	if ss := e.srv.Sensors(); ss[0].Invalid != 9 || ss[0].Payloads != 1 {
		t.Errorf("sensor stats %+v", ss)
	}
}

func TestBadInputAtClient(t *testing.T) {
	testenv.CheckLeaks(t)
	// Not a heartbeat test: with a 1 s heartbeat, draining the 3 MiB message under the race
	// detector on a loaded machine outlasted the 1.5 s read deadline and ended the connection.
	cfg, _ := fakeServer(t, envHeartbeat, func(ctx context.Context, ws *websocket.Conn) {
		var buf []byte
		ws.Write(ctx, websocket.MessageBinary, []byte{0x0a, 0xff})
		ws.Write(ctx, websocket.MessageBinary, make([]byte, 3<<20))
		ws.Write(ctx, websocket.MessageText, []byte("hi"))
		writeMessage(ctx, ws, &buf, &Message{ProtocolVersion: []uint32{1}, Type: TypeData, Payload: &Payload{Channel: 1}})
		writeMessage(ctx, ws, &buf, &Message{ProtocolVersion: []uint32{1}, Type: 99})
		writeMessage(ctx, ws, &buf, &Message{ProtocolVersion: []uint32{1}, Type: TypeHeartbeat, Heartbeat: 10000})
		drain(ctx, ws)
	})
	conn, err := Dial(ctxT(t, 10*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	testenv.WaitFor(t, "the heartbeat after the garbage", func() bool { return conn.Stats().HeartbeatsReceived == 1 || conn.Err() != nil })
	st := conn.Stats()
	if st.Malformed != 2 || st.Oversize != 1 || st.Unexpected != 2 || conn.Err() != nil {
		t.Errorf("client stats %+v, err %v", st, conn.Err())
	}
}

type srvResolver struct {
	mu      sync.Mutex
	queries []string
	answer  []*net.SRV
	err     error
}

func (r *srvResolver) LookupSRV(ctx context.Context, service, proto, name string) (string, []*net.SRV, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.queries = append(r.queries, fmt.Sprintf("_%s._%s.%s", service, proto, name))
	return "", r.answer, r.err
}

func TestSRV(t *testing.T) {
	testenv.CheckLeaks(t)
	e := newEnv(t, nil)
	// Replace the server certificate with one for the URL's name only,
	// and record the SNI: the client must verify and ask for the URL
	// host, not the SRV target.
	stls, ctls, err := sielinktest.TLS("collector.test")
	if err != nil {
		t.Fatal(err)
	}
	var sni atomic.Value
	e.ts.TLS.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		sni.Store(h.ServerName)
		return stls, nil
	}
	_, port, _ := net.SplitHostPort(e.addr)
	var p uint16
	fmt.Sscan(port, &p)
	r := &srvResolver{answer: []*net.SRV{{Target: "127.0.0.1.", Port: p}}}
	cfg := e.config("s1")
	cfg.URL, cfg.TLS, cfg.Resolver = "wss://collector.test", ctls, r
	conn, err := Dial(ctxT(t, 10*time.Second), cfg)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if got := sni.Load(); got != "collector.test" {
		t.Errorf("SNI %v, want collector.test", got)
	}
	if len(r.queries) != 1 || r.queries[0] != "_https._tcp.collector.test" {
		t.Errorf("SRV queries %q", r.queries)
	}

	// A temporary DNS failure is an error, not a silent fallback.
	r.err = &net.DNSError{Err: "timeout", IsTemporary: true}
	if _, err := Dial(ctxT(t, 10*time.Second), cfg); err == nil || !strings.Contains(err.Error(), "SRV") {
		t.Errorf("Dial with a failing resolver = %v", err)
	}
	// No SRV record: port 443 of the host, as the reference client does.
	r.err = &net.DNSError{Err: "no such host", IsNotFound: true}
	u, _ := (&Config{URL: "wss://collector.test"}).URLForTest()
	got, err := targets(context.Background(), r, u)
	if err != nil || len(got) != 1 || got[0] != "collector.test:443" {
		t.Errorf("fallback targets %q, %v", got, err)
	}
	// An explicit port skips SRV.
	n := len(r.queries)
	u, _ = (&Config{URL: "wss://collector.test:8443"}).URLForTest()
	if got, _ := targets(context.Background(), r, u); len(got) != 1 || got[0] != "collector.test:8443" || len(r.queries) != n {
		t.Errorf("explicit port: targets %q", got)
	}
}

func TestClientReconnects(t *testing.T) {
	testenv.CheckLeaks(t)
	e := newEnv(t, nil)
	cfg := e.config("s1")
	cfg.Heartbeat = time.Hour // no automatic Sync: the drop below must find unconfirmed payloads
	cfg.MinBackoff, cfg.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	cl, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- cl.Run(ctx) }()
	tctx := ctxT(t, 10*time.Second)
	conn, err := cl.Conn(tctx)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	c := container(t, rng, 2, 1000)
	for i := 0; i < 3; i++ {
		if err := conn.Send(tctx, c, LossCounter{}); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, "delivery", func() bool { return len(e.received("s1")) == 3 })
	e.srv.mu.Lock()
	for s := range e.srv.sessions {
		s.ws.CloseNow() // the collector drops the connection
	}
	e.srv.mu.Unlock()
	<-conn.Done()
	conn2, err := cl.Conn(tctx)
	if err != nil {
		t.Fatal(err)
	}
	if conn2 == conn {
		t.Fatal("Conn returned the dead connection")
	}
	if err := conn2.Send(tctx, c, LossCounter{}); err != nil {
		t.Fatal(err)
	}
	if err := conn2.Sync(tctx); err != nil {
		t.Fatal(err)
	}
	st := cl.Status()
	if st.State != StateUp || st.Stats.Reconnects != 1 || st.Stats.PossiblyLostPayloads != 3 || st.Stats.PayloadsSent != 4 {
		t.Errorf("status %+v", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Error(err)
	}
	testenv.WaitFor(t, "clean close", func() bool { return e.srv.Stats().FinishedReceived == 1 })
}

// TestClearTextOnlyOnLoopback: ws:// would send the API key in clear text, so a client refuses it
// for any host but this one, and a loopback ws:// URL is never redirected by an SRV record.
func TestClearTextOnlyOnLoopback(t *testing.T) {
	key := filepath.Join(t.TempDir(), "key")
	os.WriteFile(key, []byte(sielinktest.NewAPIKey()+"\n"), 0o600)
	for _, u := range []string{"ws://collector.example.net:8080", "ws://192.0.2.1", "ws://[2001:db8::1]:80", "ws://localhost.example.net"} {
		if _, err := NewClient(Config{URL: u, Name: "s1", APIKeyFile: key}); err == nil || !strings.Contains(err.Error(), "wss://") {
			t.Errorf("NewClient(%s) = %v, want a refusal pointing to wss://", u, err)
		}
	}
	for _, u := range []string{"ws://127.0.0.1:8080", "ws://[::1]:8080", "ws://localhost:8080", "wss://collector.example.net"} {
		if _, err := NewClient(Config{URL: u, Name: "s1", APIKeyFile: key}); err != nil {
			t.Errorf("NewClient(%s) = %v", u, err)
		}
	}
	r := &srvResolver{answer: []*net.SRV{{Target: "collector.example.net.", Port: 80}}}
	u, _ := (&Config{URL: "ws://localhost"}).URLForTest()
	if got, err := targets(context.Background(), r, u); err != nil || len(got) != 1 || got[0] != "localhost:80" {
		t.Errorf("ws://localhost: targets %q, %v; want localhost:80 without SRV", got, err)
	}
}

// TestBackoffBoundedByMax: a MaxBackoff below the default MinBackoff is honoured (not raised to
// 1 s), and the jitter never takes a wait above MaxBackoff.
func TestBackoffBoundedByMax(t *testing.T) {
	cfg := Config{URL: "wss://collector.example.net", Name: "s1", APIKeyFile: "k", MaxBackoff: 200 * time.Millisecond}
	c, _, err := cfg.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.MinBackoff != 200*time.Millisecond || c.MaxBackoff != 200*time.Millisecond || c.FatalBackoff != 200*time.Millisecond {
		t.Errorf("back-off bounds %v, %v, fatal %v; want all 200ms", c.MinBackoff, c.MaxBackoff, c.FatalBackoff)
	}
	for _, j := range []float64{0, 0.5, 0.999999} {
		if w := jittered(c.MaxBackoff, j); w > c.MaxBackoff || w < c.MaxBackoff/2 {
			t.Errorf("jitter %v: wait %v outside [MaxBackoff/2, MaxBackoff]", j, w)
		}
	}
}

// mapAuth is an Authenticator with its own name rule, to show that the server asks it.
type mapAuth map[string]string

func (m mapAuth) ValidName(name string) bool { return !strings.HasPrefix(name, "no-") }
func (m mapAuth) Lookup(key string) (string, bool) {
	s, ok := m[key]
	return s, ok
}

// TestSessionPath: a session path names one sensor that the Authenticator accepts as a name,
// before any key is looked at (404), so a name that walks out of its directory at the collector
// never reaches a handler; then the key decides (401 unknown, 403 another sensor's).
func TestSessionPath(t *testing.T) {
	keys := mapAuth{"k1": "s1", "k2": "s2", "k3": "no-s3", "k4": "../x"}
	for _, tc := range []struct {
		path, key string
		auth      Authenticator
		want      int
	}{
		{"/session/", "k1", keys, http.StatusNotFound},
		{"/session/..%2Fs1", "k1", keys, http.StatusNotFound},
		{"/session/..%2Fx", "k4", keys, http.StatusNotFound},
		{"/session/s1%2F..%2Fs2", "k1", keys, http.StatusNotFound},
		{"/session/..", "k1", keys, http.StatusNotFound},
		{"/session/no-s3", "k3", keys, http.StatusNotFound}, // the Authenticator's name rule
		{"/other/s1", "k1", keys, http.StatusNotFound},
		{"/session/s1", "", keys, http.StatusUnauthorized},
		{"/session/s1", "k9", keys, http.StatusUnauthorized},
		{"/session/s1", "k1", nil, http.StatusUnauthorized}, // no Authenticator: nobody
		{"/session/s1", "k2", keys, http.StatusForbidden},
	} {
		srv := &Server{Auth: tc.auth}
		req := httptest.NewRequest("GET", "https://collector.test"+tc.path, nil)
		if tc.key != "" {
			req.Header.Set("X-API-Key", tc.key)
		}
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("%s with key %q: status %d, want %d", tc.path, tc.key, rec.Code, tc.want)
		}
		st := srv.Stats()
		if tc.want == http.StatusNotFound && (st.RejectedOther != 1 || st.RejectedAuth != 0) ||
			tc.want != http.StatusNotFound && (st.RejectedAuth != 1 || st.RejectedOther != 0) {
			t.Errorf("%s with key %q: counted as %+v", tc.path, tc.key, st)
		}
	}
}

// TestClientSessionName: the client refuses a name that cannot be one URL path element.
func TestClientSessionName(t *testing.T) {
	for _, name := range []string{"", ".", "..", "../x", "a/b", "a b", "a?b"} {
		if _, err := NewClient(Config{URL: "wss://collector.example.net", Name: name, APIKeyFile: "k"}); err == nil || !strings.Contains(err.Error(), "sensor name") {
			t.Errorf("NewClient(Name %q) = %v, want an invalid sensor name error", name, err)
		}
	}
}
