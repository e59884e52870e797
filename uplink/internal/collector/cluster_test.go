package collector

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// freePorts returns n loopback ports that were free a moment ago.
func freePorts(t testing.TB, n int) []int {
	var ports []int
	var lns []net.Listener
	for i := 0; i < n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// natsNodeEnv makes the test binary a NATS node: the separate nats-server processes of the
// cluster tests, so that a node can be killed (SIGKILL) like a real one. Its value is the node's
// nodeConfig as JSON.
const natsNodeEnv = "DNSSENSOR_TEST_NATS_NODE"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(natsNodeEnv); cfg != "" {
		os.Exit(runNATSNode(cfg))
	}
	os.Exit(m.Run())
}

type nodeConfig struct {
	Name              string
	Port, ClusterPort int
	Routes            string
	Dir               string
	// ProfPort serves the node's /debug/pprof (0: none): see natsProfEnv.
	ProfPort int
}

// natsProfEnv, set to a port, has the cluster's nodes serve their /debug/pprof on it and the
// ports after it (node i on port+i), to profile the nats-server side of BenchmarkSensorsToArchive.
const natsProfEnv = "DNSSENSOR_TEST_NATS_PPROF"

func runNATSNode(cfg string) int {
	var c nodeConfig
	if err := json.Unmarshal([]byte(cfg), &c); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	s, err := server.NewServer(&server.Options{
		ServerName: c.Name, Host: "127.0.0.1", Port: c.Port,
		JetStream: true, StoreDir: c.Dir, NoSigs: true, NoLog: true,
		Cluster:  server.ClusterOpts{Name: "soc", Host: "127.0.0.1", Port: c.ClusterPort},
		Routes:   server.RoutesFromStr(c.Routes),
		ProfPort: c.ProfPort,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	s.Start()
	// The node lives until the test kills it, or until its stdin closes: the test process died.
	io.Copy(io.Discard, os.Stdin)
	s.Shutdown()
	return 0
}

// natsNode is one nats-server process of a loopback cluster, restartable on its ports and store.
type natsNode struct {
	cfg nodeConfig
	cmd *exec.Cmd
}

func (n *natsNode) start(t testing.TB) {
	t.Helper()
	cfg, _ := json.Marshal(n.cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), natsNodeEnv+"="+string(cfg))
	cmd.Stderr = os.Stderr
	if _, err := cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.cmd = cmd
	url := fmt.Sprintf("nats://127.0.0.1:%d", n.cfg.Port)
	testenv.WaitFor(t, "NATS node "+n.cfg.Name+" to accept connections", func() bool {
		nc, err := nats.Connect(url, nats.Timeout(time.Second))
		if err != nil {
			return false
		}
		nc.Close()
		return true
	})
}

// kill ends the node's process with SIGKILL: what it had not written is lost, as in a crash.
func (n *natsNode) kill() {
	if n.cmd != nil {
		n.cmd.Process.Kill()
		n.cmd.Wait()
		n.cmd = nil
	}
}

func startCluster(t testing.TB, size int) ([]*natsNode, string) {
	ports := freePorts(t, 2*size)
	var routes, urls []string
	for i := 0; i < size; i++ {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[size+i]))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
	}
	var nodes []*natsNode
	root := t.TempDir()
	prof, _ := strconv.Atoi(os.Getenv(natsProfEnv))
	for i := 0; i < size; i++ {
		n := &natsNode{cfg: nodeConfig{
			Name: fmt.Sprintf("n%d", i), Port: ports[i], ClusterPort: ports[size+i],
			Routes: strings.Join(routes, ","), Dir: filepath.Join(root, fmt.Sprintf("n%d", i)),
		}}
		if prof > 0 {
			n.cfg.ProfPort = prof + i
		}
		nodes = append(nodes, n)
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.kill()
		}
	})
	for _, n := range nodes {
		n.start(t)
	}
	// A stream can be created once the nodes elected the meta leader; asked before, the first
	// request of a collector timed out (10 s).
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the NATS cluster's JetStream meta leader", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := js.AccountInfo(ctx)
		return err == nil
	})
	return nodes, strings.Join(urls, ",")
}

// TestPublishSameContainerConcurrently: a sensor whose session broke resends its unconfirmed
// containers in a new session, possibly to the other collector, while the first session's
// publishes are still being proposed in the R3 stream. The stream then answers "409 duplicate
// message id is in process" (err_code 10158): the container is neither stored nor refused yet.
// The publisher must wait for the outcome and report it (stored once, the other a duplicate),
// not fail the delivery: a failed one holds the session, retried only every second.
func TestPublishSameContainerConcurrently(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node NATS cluster: skipped with -short")
	}
	_, urls := startCluster(t, 3)
	ctx := ctxT(t, 60*time.Second)
	var pubs [2]*publisher
	for i := range pubs {
		b, err := openBus(ctx, JetStreamOptions{URL: urls}, t.TempDir(), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		pubs[i] = &publisher{js: b.js, stream: b.opts.Stream, sensors: make(map[string]*PublishStats)}
	}
	var rec records
	conts := sequenced(t, 21, 400, &rec)
	for _, c := range conts {
		var wg sync.WaitGroup
		var errs [2]error
		var dup [2]bool
		for i, p := range pubs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := &sielink.Delivery{Sensor: "alpha", Payload: &sielink.Payload{Channel: 202, Data: c}}
				errs[i], dup[i] = p.Deliver(d), d.Duplicate
			}()
		}
		wg.Wait()
		if errs[0] != nil || errs[1] != nil {
			t.Fatalf("concurrent publishes of one container: %v, %v", errs[0], errs[1])
		}
		if dup[0] == dup[1] {
			t.Fatalf("concurrent publishes of one container: duplicate %v and %v, want one stored", dup[0], dup[1])
		}
	}
	var waits uint64
	for _, p := range pubs {
		waits += p.stats()["alpha"].InProcess
	}
	t.Logf("%d containers published twice at once; %d publishes waited for the other's outcome", len(conts), waits)
}

// gate lets the simulated sensors send a share of their containers per phase of the proof, so
// that each fault hits the stream while data is flowing, whatever the machine's speed.
type gate struct {
	mu     sync.Mutex
	share  float64 // of each sensor's containers that may be sent
	raised chan struct{}
}

func newGate(share float64) *gate { return &gate{share: share, raised: make(chan struct{})} }

func (g *gate) raise(share float64) {
	g.mu.Lock()
	g.share = share
	close(g.raised)
	g.raised = make(chan struct{})
	g.mu.Unlock()
}

// limit is how many of n containers may be sent now, and a channel closed when that changes.
func (g *gate) limit(n int) (int, <-chan struct{}) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return int(g.share * float64(n)), g.raised
}

// simSensor sends its containers at least once: after a broken session it dials the next
// collector and resends everything after the last Sync that succeeded, as a sensor's spool does.
// With report, it then sends that health report (as uplinkd does) and syncs, so the collector
// of its last session has read it.
func simSensor(ctx context.Context, name string, conts [][]byte, cfg func(i int, sensor string) sielink.Config, batch int, g *gate, report *sielink.HealthReport) error {
	confirmed, attempt := 0, 0
	reported := report == nil
	for confirmed < len(conts) || !reported {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %d of %d containers confirmed: %w", name, confirmed, len(conts), ctx.Err())
		}
		c := cfg(attempt, name)
		attempt++
		// Dial's context is the connection's life (a timeout of its own ended every session
		// right after its handshake, and the resends raced each other); the handshake has its
		// own bound.
		conn, err := sielink.Dial(ctx, c)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		for confirmed < len(conts) && err == nil {
			limit, raised := g.limit(len(conts))
			if confirmed >= limit {
				select {
				case <-raised:
				case <-conn.Done():
					err = errors.New("session ended while waiting")
				case <-ctx.Done():
					err = ctx.Err()
				}
				continue
			}
			end := min(confirmed+batch, limit)
			for _, ct := range conts[confirmed:end] {
				if err = conn.Send(ctx, ct, sielink.LossCounter{}); err != nil {
					break
				}
			}
			if err == nil {
				sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err = conn.Sync(sctx)
				cancel()
			}
			if err == nil {
				confirmed = end
			}
		}
		if confirmed == len(conts) && !reported && err == nil {
			if err = conn.SendReport(ctx, report); err == nil {
				sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err = conn.Sync(sctx)
				cancel()
			}
			reported = err == nil
		}
		conn.Close()
	}
	return nil
}

// TestClusterProof: a 3-node NATS cluster on loopback (separate processes), an R3 stream, 2 collectors (one archives),
// simulated sensors pushing real records; one NATS node (SIGKILL) and then the archiving collector
// are stopped while the sensors send, and restarted: every record is in the archive exactly once.
// The short version runs always (not with -short); DNSSENSOR_NATS_PROOF=1 runs the scale:
// 100 sensors.
func TestClusterProof(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node NATS cluster: skipped with -short")
	}
	sensors, perSensor := 10, 600
	if os.Getenv("DNSSENSOR_NATS_PROOF") != "" {
		sensors, perSensor = 100, 1200
	}
	start := time.Now()
	nodes, urls := startCluster(t, 3)
	archive := filepath.Join(t.TempDir(), "nmsg")
	names := make([]string, sensors)
	for i := range names {
		names[i] = fmt.Sprintf("s%03d", i)
	}
	// Both collectors share one keys file (the sensors' keys), as two hosts behind one name.
	archiving := func(o *Options) {
		o.Store.Dir = archive
		o.JetStream = &JetStreamOptions{URL: urls, DupWindow: 10 * time.Minute}
	}
	a := startCollectorKeys(t, names, archiving, nil)
	b := startCollectorKeys(t, names, func(o *Options) {
		o.Store.Dir = filepath.Join(t.TempDir(), "unused")
		o.JetStream = &JetStreamOptions{URL: urls, NoArchive: true}
	}, a)
	t.Logf("%v: cluster and collectors up", time.Since(start).Round(time.Millisecond))

	want := map[string]records{}
	conts := map[string][][]byte{}
	total := uint64(0)
	for i, n := range names {
		var rec records
		conts[n] = sequenced(t, uint64(1000+i), perSensor, &rec)
		want[n] = rec
		total += uint64(len(conts[n]))
	}
	var mu sync.Mutex
	collectors := []*testCollector{a, b}
	cfg := func(i int, sensor string) sielink.Config {
		mu.Lock()
		defer mu.Unlock()
		c := collectors[i%2].config(sensor)
		c.Heartbeat = 5 * time.Second
		return c
	}
	ctx := ctxT(t, time.Duration(sensors/10+2)*time.Minute)
	g := newGate(0.5)
	// allowed is how many containers the stream holds once every sensor sent its share.
	allowed := func(share float64) uint64 {
		n := uint64(0)
		for _, c := range conts {
			n += uint64(int(share * float64(len(c))))
		}
		return n
	}
	errc := make(chan error, sensors)
	sendStart := time.Now()
	for _, n := range names {
		rep := greenReport()
		rep.Sensor, rep.Version = n, "proof-"+n
		go func() { errc <- simSensor(ctx, n, conts[n], cfg, 8, g, rep) }()
	}
	stream := func() *JetStreamSnapshot { return fetchSnapshot(t, b.metrics).JetStream }
	waitSeq := func(seq uint64) {
		for stream().LastSeq < seq {
			if ctx.Err() != nil {
				t.Fatalf("stream stopped growing: %+v\ncollector a: %s\ncollector b: %s", stream(), a.log, b.log)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// The sensors may send half: a NATS node stops a quarter in, the rest of the half goes
	// through the two nodes left.
	waitSeq(allowed(0.25))
	t.Logf("%v: killing NATS node n1 at stream sequence %d", time.Since(start).Round(time.Millisecond), stream().LastSeq)
	nodes[1].kill()
	waitSeq(allowed(0.5))
	nodes[1].start(t)
	// The archiving collector stops as the sensors start on the third quarter: those with a
	// session there resend what it had not confirmed to the other one.
	t.Logf("%v: n1 restarted; stopping the archiving collector at %d", time.Since(start).Round(time.Millisecond), stream().LastSeq)
	g.raise(0.75)
	mu.Lock()
	if err := a.stop(); err != nil {
		t.Errorf("archiving collector: %v", err)
	}
	mu.Unlock()
	waitSeq(allowed(0.75))
	t.Logf("%v: restarting the archiving collector at %d", time.Since(start).Round(time.Millisecond), stream().LastSeq)
	mu.Lock()
	a = startCollectorKeys(t, names, archiving, b)
	collectors[0] = a
	mu.Unlock()
	g.raise(1)
	for range names {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	sent := time.Since(sendStart)
	// Each sensor reported at the end to the collector of its last session, one or the other:
	// both fleet pages show every sensor, the restarted collector too.
	for _, tc := range []*testCollector{a, b} {
		testenv.WaitFor(t, "both collectors' fleet pages to show every sensor's report", func() bool {
			v := fetchFleet(t, tc.metrics)
			for _, n := range names {
				if row := fleetRow(v, n); row == nil || row.LastSeen == nil || row.Version != "proof-"+n || row.State != "green" {
					return false
				}
			}
			return len(v.Sensors) == len(names)
		})
	}
	js := waitArchived(t, a)
	archived := time.Since(sendStart)
	if err := a.stop(); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		got, _ := readDir(t, filepath.Join(archive, n))
		if len(got) != len(want[n]) {
			t.Errorf("%s: %d records in the archive, want %d", n, len(got), len(want[n]))
		}
		equalRecords(t, want[n], got)
	}
	if js.Messages != total {
		t.Errorf("stream holds %d containers, %d sent", js.Messages, total)
	}
	var dups, waits uint64
	for _, tc := range []*testCollector{b} {
		for _, s := range fetchSnapshot(t, tc.metrics).Sensors {
			if s.Publish != nil {
				dups, waits = dups+s.Publish.Duplicates, waits+s.Publish.InProcess
			}
		}
	}
	t.Logf("%d sensors, %d containers, %d records: all confirmed in %v, archived in %v (%.0f records/s); "+
		"collector b: %d resends stored once, %d publishes waited for a racing one; archiver after its restart %+v",
		sensors, total, sensors*perSensor, sent.Round(time.Millisecond), archived.Round(time.Millisecond),
		float64(sensors*perSensor)/archived.Seconds(), dups, waits, *js.Archiver)
}
