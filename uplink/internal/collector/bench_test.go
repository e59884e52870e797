package collector

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sie-europe/dnssensor/internal/testenv"
	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/uplink/sielink"
	"github.com/sie-europe/dnssensor/uplink/sielink/sielinktest"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

var benchSizes = []int{64 << 10, 256 << 10, 1000 << 10}

// BenchmarkSielinkToCollector measures a sensor's client sending
// containers to a collector over loopback TLS, the collector validating
// each and writing it to its NMSG file: directly (path=direct), or through the
// embedded JetStream server (R1; like the direct path here without fsync) and its
// archiver (path=jetstream; timed until the archive holds the last container).
// Compare with BenchmarkLoopbackCopy.
func BenchmarkSielinkToCollector(b *testing.B) {
	for _, path := range []string{"direct", "jetstream"} {
		for _, size := range benchSizes {
			benchCollector(b, path, size)
		}
	}
}

func benchCollector(b *testing.B, path string, size int) {
	b.Run(fmt.Sprintf("path=%s/container=%dKiB", path, size>>10), func(b *testing.B) {
		dir := b.TempDir()
		certPEM, keyPEM, _ := sielinktest.CertPEM("127.0.0.1")
		certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		os.WriteFile(certFile, certPEM, 0o644)
		os.WriteFile(keyFile, keyPEM, 0o600)
		keysFile, apiKeys, _ := sielinktest.WriteKeys(dir, "bench")
		ready := make(chan string, 1)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		opts := Options{Listen: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, KeysFile: keysFile,
			Store: StoreOptions{Dir: filepath.Join(dir, "nmsg"), Rotate: time.Hour},
			Ready: func(a, _ string) { ready <- a }}
		var m *metrics
		if path == "jetstream" {
			opts.JetStream = &JetStreamOptions{}
			opts.metricsHook = func(mm *metrics) { m = mm }
		}
		go func() { done <- Run(ctx, opts) }()
		addr := <-ready
		conn, err := sielink.Dial(ctx, sielink.Config{URL: "wss://" + addr, Name: "bench", APIKeyFile: apiKeys["bench"],
			TLS: &tls.Config{RootCAs: x509Pool(b, certPEM)}})
		if err != nil {
			b.Fatal(err)
		}
		// ~250-octet records, the size of a typical dnsqr payload.
		c := makeContainer(b, rand.New(rand.NewPCG(1, 2)), size/260, 250, nil)
		b.SetBytes(int64(len(c)))
		b.ReportAllocs()
		b.ResetTimer()
		start := time.Now()
		for i := 0; i < b.N; i++ {
			if err := conn.Send(ctx, c, sielink.LossCounter{}); err != nil {
				b.Fatal(err)
			}
		}
		// Count only what the collector has read and stored.
		if err := conn.Sync(ctx); err != nil {
			b.Fatal(err)
		}
		for m != nil {
			js := m.js.snapshot()
			if js.Archiver.StreamSeq >= js.LastSeq {
				break
			}
			time.Sleep(time.Millisecond)
		}
		el := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/el.Seconds(), "payloads/s")
		conn.Close()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	})
}

// BenchmarkLoopbackCopy is the floor: the same octets copied over a
// loopback TCP connection (plain and TLS) into io.Discard.
func BenchmarkLoopbackCopy(b *testing.B) {
	for _, useTLS := range []bool{false, true} {
		for _, size := range benchSizes {
			name := fmt.Sprintf("tls=%v/chunk=%dKiB", useTLS, size>>10)
			b.Run(name, func(b *testing.B) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					b.Fatal(err)
				}
				defer ln.Close()
				var ctls *tls.Config
				if useTLS {
					stls, c, err := sielinktest.TLS("127.0.0.1")
					if err != nil {
						b.Fatal(err)
					}
					ln, ctls = tls.NewListener(ln, stls), c
				}
				done := make(chan int64)
				go func() {
					c, err := ln.Accept()
					if err != nil {
						done <- 0
						return
					}
					n, _ := io.Copy(io.Discard, c)
					c.Close()
					done <- n
				}()
				var c net.Conn
				if useTLS {
					c, err = tls.Dial("tcp", ln.Addr().String(), ctls)
				} else {
					c, err = net.Dial("tcp", ln.Addr().String())
				}
				if err != nil {
					b.Fatal(err)
				}
				buf := make([]byte, size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				for i := 0; i < b.N; i++ {
					if _, err := c.Write(buf); err != nil {
						b.Fatal(err)
					}
				}
				c.Close()
				<-done
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "payloads/s")
			})
		}
	}
}

// BenchmarkSensorsToArchive is the end-to-end figure: several sensors at once send
// 64 KiB or 1000 KiB containers of ~250-octet records over sielink/TLS into one collector, timed until the
// file archive holds every record: straight into the files (path=direct), through the embedded
// single-node JetStream server (path=r1), and through a 3-node cluster of nats-server processes
// on loopback with an R3 stream (path=r3). Each sensor sends b.N containers; records/s is the
// figure to compare (the ratio to path=direct). Nothing is fsynced on any path.
func BenchmarkSensorsToArchive(b *testing.B) {
	for _, path := range []string{"direct", "r1", "r1-pipeline", "r3", "r3-pipeline"} {
		for _, c := range []struct{ sensors, size int }{{1, 64 << 10}, {8, 64 << 10}, {32, 64 << 10}, {8, 1000 << 10}} {
			b.Run(fmt.Sprintf("path=%s/sensors=%d/container=%dKiB", path, c.sensors, c.size>>10), func(b *testing.B) {
				benchSensors(b, path, c.sensors, c.size)
			})
		}
	}
}

// recordGen makes sensor i's b.N containers of at most size octets; n is how many records they
// hold.
type recordGen func(b *testing.B, i, size int) (conts [][]byte, n int)

// randomRecords are ~250-octet records of random octets (incompressible).
func randomRecords(b *testing.B, i, size int) ([][]byte, int) {
	records := size / 260
	var buf bytes.Buffer
	w, err := nmsg.NewFileWriter(&buf, nmsg.FileOptions{SequenceID: uint64(i + 1), MaxSize: size})
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(uint64(i), 2))
	d := make([]byte, 250)
	for range b.N * records {
		for j := range d {
			d[j] = byte(rng.Uint32())
		}
		if err := w.Write(&nmsg.Payload{Vid: 1, Msgtype: 9, TimeSec: 1700000000, Data: d}); err != nil {
			b.Fatal(err)
		}
	}
	w.Close()
	return splitContainers(buf.Bytes()), b.N * records
}

func benchSensors(b *testing.B, path string, sensors, size int) {
	benchSensorsWith(b, path, sensors, size, nil)
}

func benchSensorsWith(b *testing.B, path string, sensors, size int, gen recordGen) {
	names := make([]string, sensors)
	for i := range names {
		names[i] = fmt.Sprintf("bench%d", i)
	}
	dir := b.TempDir()
	certPEM, keyPEM, _ := sielinktest.CertPEM("127.0.0.1")
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, certPEM, 0o644)
	os.WriteFile(keyFile, keyPEM, 0o600)
	keysFile, apiKeys, _ := sielinktest.WriteKeys(dir, names...)
	ready := make(chan string, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	opts := Options{Listen: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile, KeysFile: keysFile,
		Store: StoreOptions{Dir: filepath.Join(dir, "nmsg"), Rotate: time.Hour},
		Ready: func(a, _ string) { ready <- a }}
	var m *metrics
	var nodes []*natsNode
	switch strings.TrimSuffix(path, "-pipeline") {
	case "r1":
		opts.JetStream = &JetStreamOptions{}
	case "r3":
		var urls string
		nodes, urls = startCluster(b, 3)
		opts.JetStream = &JetStreamOptions{URL: urls}
	}
	if opts.JetStream != nil {
		opts.JetStream.Pipeline = strings.HasSuffix(path, "-pipeline")
	}
	if opts.JetStream != nil {
		opts.metricsHook = func(mm *metrics) { m = mm }
	}
	go func() { done <- Run(ctx, opts) }()
	addr := <-ready
	conns := make([]*sielink.Conn, sensors)
	for i, n := range names {
		c, err := sielink.Dial(ctx, sielink.Config{URL: "wss://" + addr, Name: n, APIKeyFile: apiKeys[n],
			TLS: &tls.Config{RootCAs: x509Pool(b, certPEM)}})
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}
	if gen == nil {
		gen = randomRecords
	}
	// Distinct containers: the stream's duplicate detection must not drop any (sequence ids
	// differ per sensor, sequences per container).
	conts := make([][][]byte, sensors)
	records, wire := 0, 0
	for i := range conts {
		var n int
		conts[i], n = gen(b, i, size)
		records += n
		for _, c := range conts[i] {
			wire += len(c)
		}
	}
	b.ResetTimer()
	profiled := profileNodes(b, nodes)
	cpu0, nodes0 := benchCPU(b, nodes), nodesCPU(b, nodes)
	start := time.Now()
	errc := make(chan error, sensors)
	for i, c := range conns {
		go func() {
			for _, ct := range conts[i] {
				if err := c.Send(ctx, ct, sielink.LossCounter{}); err != nil {
					errc <- err
					return
				}
			}
			errc <- c.Sync(ctx)
		}()
	}
	for range conns {
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
	confirmedIn := time.Since(start) // every sensor's Sync returned: the stream holds it all
	if m != nil {
		// The stream's last sequence is asked once: a stream info request a millisecond (as
		// before) cost the NATS nodes CPU that the figures counted as the path's.
		last := m.js.snapshot().LastSeq
		for m.js.arch.stats().StreamSeq < last {
			time.Sleep(time.Millisecond)
		}
	}
	el := time.Since(start)
	cpu, nodeCPU := benchCPU(b, nodes)-cpu0, nodesCPU(b, nodes)-nodes0
	b.StopTimer()
	profiled()
	total := 0
	for _, c := range conts {
		total += len(c)
	}
	b.ReportMetric(float64(records)/el.Seconds(), "records/s")
	// Separates the way in (sessions, publishes, PubAcks) from the archiver behind the stream.
	b.ReportMetric(float64(records)/confirmedIn.Seconds(), "confirmed-records/s")
	b.ReportMetric(float64(total)/el.Seconds(), "containers/s")
	// The CPU time every process of the path spent (sensors, collector, NATS nodes) per record:
	// on a shared machine records/s follows the load, the CPU a record costs much less so.
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(records), "cpu-ns/record")
	if nodes != nil {
		b.ReportMetric(float64(nodeCPU.Nanoseconds())/float64(records), "nodes-cpu-ns/record")
	}
	b.ReportMetric(float64(wire)/float64(records), "wire-octets/record")
	for _, c := range conns {
		c.Close()
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// natsProfSecondsEnv, with natsProfEnv, has benchSensorsWith take a CPU profile of each NATS
// node for that many seconds from the start of its timed part (b.N > 1 only), written to
// node<i>.pprof in the directory natsProfDirEnv names (default the working directory). Choose
// -benchtime so that the timed part lasts longer.
const (
	natsProfSecondsEnv = "DNSSENSOR_TEST_NATS_PPROF_SECONDS"
	natsProfDirEnv     = "DNSSENSOR_TEST_NATS_PPROF_DIR"
)

// profileNodes starts the nodes' profiles (natsProfSecondsEnv); the function it returns waits
// for them.
func profileNodes(b *testing.B, nodes []*natsNode) func() {
	secs, _ := strconv.Atoi(os.Getenv(natsProfSecondsEnv))
	if secs <= 0 || b.N <= 1 {
		return func() {}
	}
	var wg sync.WaitGroup
	for i, n := range nodes {
		if n.cfg.ProfPort == 0 {
			b.Fatalf("%s needs %s", natsProfSecondsEnv, natsProfEnv)
		}
		wg.Go(func() {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/profile?seconds=%d", n.cfg.ProfPort, secs))
			if err != nil {
				b.Error(err)
				return
			}
			defer resp.Body.Close()
			data, err := io.ReadAll(resp.Body)
			if err == nil {
				err = os.WriteFile(filepath.Join(os.Getenv(natsProfDirEnv), fmt.Sprintf("node%d.pprof", i)), data, 0o644)
			}
			if err != nil {
				b.Error(err)
			}
		})
	}
	return wg.Wait
}

// benchCPU is the CPU time (user and system) this process and the NATS node processes used so
// far.
func benchCPU(b *testing.B, nodes []*natsNode) time.Duration {
	return procCPU(b, true, nodes)
}

// nodesCPU is the CPU time the NATS node processes used so far.
func nodesCPU(b *testing.B, nodes []*natsNode) time.Duration {
	return procCPU(b, false, nodes)
}

func procCPU(b *testing.B, self bool, nodes []*natsNode) time.Duration {
	var pids []string
	if self {
		pids = append(pids, "self")
	}
	for _, n := range nodes {
		pids = append(pids, strconv.Itoa(n.cmd.Process.Pid))
	}
	var ticks uint64
	for _, pid := range pids {
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			b.Fatal(err)
		}
		// The fields after the command name (which may hold spaces): utime and stime are the
		// 14th and 15th of the line, the 12th and 13th after the name.
		f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
		for _, v := range f[11:13] {
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				b.Fatalf("/proc/%s/stat: %q", pid, v)
			}
			ticks += n
		}
	}
	// USER_HZ is 100 on every Linux the tests run on.
	return time.Duration(ticks) * (time.Second / 100)
}

// BenchmarkStreamConsumers: one durable consumer of the stream hands on b.N containers of
// 64 KiB of base:dnsqr records, already in the stream: the forward into a spool (sealed before
// each acknowledgement), the JSON lines fan-out into a file, the NMSG/UDP fan-out to a loopback
// socket; embedded R1 server or three nats-server processes with an R3 stream. Timed from the
// consumer's start until it handed on the last container; cpu-ns/record is the CPU of this
// process and the NATS nodes.
func BenchmarkStreamConsumers(b *testing.B) {
	for _, path := range []string{"r1", "r3"} {
		for _, kind := range []string{"forward", "json", "udp"} {
			b.Run(fmt.Sprintf("path=%s/kind=%s", path, kind), func(b *testing.B) {
				benchConsumer(b, path, kind)
			})
		}
	}
}

func benchConsumer(b *testing.B, path, kind string) {
	b.ReportAllocs()
	dir := b.TempDir()
	var o JetStreamOptions
	var nodes []*natsNode
	if path == "r3" {
		nodes, o.URL = startCluster(b, 3)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	bus, err := openBus(ctx, o, dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer bus.Close()
	records := b.N * 64 << 10 / benchDnsqrSize
	conts, _ := dnsqrContainersSized(b, 1, records, 64<<10)
	var futs []jetstream.PubAckFuture
	for i, c := range conts {
		f, err := bus.js.PublishAsync(subjectPrefix+"202.bench", c, jetstream.WithMsgID(strconv.Itoa(i)))
		if err != nil {
			b.Fatal(err)
		}
		futs = append(futs, f)
	}
	for _, f := range futs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			b.Fatal(err)
		}
	}
	var c *streamConsumer
	switch kind {
	case "forward":
		p, err := spool.OpenProducer(spool.Options{Dir: filepath.Join(dir, "spool"), RAMQuota: 1 << 40})
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		c = newForward(bus.stream, "bench", SpoolForwarder{P: p}, nil)
	case "json":
		c, err = newFanOut(0, FanOut{Durable: "bench", JSONFile: filepath.Join(dir, "lines.json")}, bus.stream, nil)
	case "udp":
		l, lerr := net.ListenPacket("udp", "127.0.0.1:0")
		if lerr != nil {
			b.Fatal(lerr)
		}
		defer l.Close()
		go func() {
			buf := make([]byte, 65536)
			for {
				if _, _, err := l.ReadFrom(buf); err != nil {
					return
				}
			}
		}()
		c, err = newFanOut(0, FanOut{Durable: "bench", UDP: l.LocalAddr().String(), MTU: 60000}, bus.stream, nil)
	}
	if err != nil {
		b.Fatal(err)
	}
	// The consumer exists before the clock starts (an R3 consumer's creation takes a raft
	// election): run finds it.
	cctx0, cancel0 := context.WithTimeout(ctx, 30*time.Second)
	if _, err := bus.stream.CreateOrUpdateConsumer(cctx0, streamConsumerConfig("bench", c.desc)); err != nil {
		b.Fatal(err)
	}
	cancel0()
	last := uint64(len(conts))
	b.ResetTimer()
	cpu0 := benchCPU(b, nodes)
	start := time.Now()
	cctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.run(cctx)
	}()
	for c.stats().StreamSeq < last {
		time.Sleep(time.Millisecond)
	}
	el := time.Since(start)
	cpu := benchCPU(b, nodes) - cpu0
	b.StopTimer()
	stop()
	<-done
	if c.close != nil {
		c.close()
	}
	b.ReportMetric(float64(records)/el.Seconds(), "records/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(records), "cpu-ns/record")
}

// benchDnsqrSize is about the octets a record of dnsqrContainers takes in a container.
const benchDnsqrSize = 100

// BenchmarkSensorsToArchiveDnsqr is BenchmarkSensorsToArchive with real base:dnsqr records
// (the conformance corpus's, made distinct per copy: see dnsqrRecords) in plain and in zlib
// containers (sensord -z), 8 sensors, 64 KiB containers (the bound is on the uncompressed
// body, so a zlib container carries as many records). wire-octets/record is what crosses
// sielink, the stream and the archive per record.
//
// containers=zlib-1000KiB are the containers of a busy sensor: the spool's default segment
// (spool.DefaultSegmentSize) bounds a container at 1 MiB of body, filled within its segment
// age from about 3 k records/s on.
func BenchmarkSensorsToArchiveDnsqr(b *testing.B) {
	recs := corpusDnsqr(b)
	for _, path := range []string{"direct", "r1", "r1-pipeline", "r3", "r3-pipeline"} {
		for _, c := range []struct {
			name string
			z    bool
			size int
		}{{"plain", false, 64 << 10}, {"zlib", true, 64 << 10}, {"zlib-1000KiB", true, 1000 << 10}} {
			b.Run(fmt.Sprintf("path=%s/containers=%s", path, c.name), func(b *testing.B) {
				benchSensorsWith(b, path, 8, c.size, dnsqrRecords(recs, c.z))
			})
		}
	}
}

// corpusDnsqr reads the base:dnsqr records of the conformance corpus's NMSG files (the C
// reference's output and real-world containers).
func corpusDnsqr(b *testing.B) []*dnsqr.Record {
	dir := testenv.Conformance(b)
	var recs []*dnsqr.Record
	for _, f := range []string{"nmsg/generic-tests/dnsqr.nmsg", "nmsg/generic-tests/dnsqr2.nmsg", "nmsg/nmsg-dnsqr-tests/test1-dnsqr.nmsg"} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			b.Fatal(err)
		}
		rd := nmsg.NewReader(bytes.NewReader(data), nmsg.ReaderOptions{})
		for {
			p, err := rd.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatalf("%s: %v", f, err)
			}
			if p.Vid != dnsqr.VendorBase || p.Msgtype != dnsqr.MsgtypeDnsQR {
				continue
			}
			r, err := dnsqr.Parse(p.Data)
			if err != nil {
				b.Fatalf("%s: %v", f, err)
			}
			recs = append(recs, r)
		}
	}
	if len(recs) < 40 {
		b.Fatalf("%d base:dnsqr records in the corpus, want its 42", len(recs))
	}
	return recs
}

// dnsqrRecords cycles through recs, each copy made distinct as distinct traffic is: its own
// DNS id, client port and time, and its own letters in the question name (in the record and in
// its packets). Without that, copies of the corpus's 42 records repeat within zlib's window
// and compress many times better than a sensor's output does (sensor/README.md: about 3:1).
func dnsqrRecords(recs []*dnsqr.Record, z bool) recordGen {
	return func(b *testing.B, i, size int) ([][]byte, int) {
		var buf bytes.Buffer
		w, err := nmsg.NewFileWriter(&buf, nmsg.FileOptions{Zlib: z, SequenceID: uint64(i + 1), MaxSize: size})
		if err != nil {
			b.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(uint64(i), 3))
		var p nmsg.Payload
		var pb []byte
		n, body := 0, 0
		for k := 0; body < b.N*(size-1024); k++ {
			r := distinctCopy(recs[k%len(recs)], rng, int64(k)*1e6)
			pb = dnsqr.Payload(&p, pb, r)
			if err := w.Write(&p); err != nil {
				b.Fatal(err)
			}
			n++
			body += nmsg.PayloadSize(&p)
		}
		w.Close()
		return splitContainers(buf.Bytes()), n
	}
}

// distinctCopy is a copy of r with a random DNS id and client port, times shifted by shift and
// the question name's letters random, also in the packets (IPv4 or IPv6, UDP).
func distinctCopy(r *dnsqr.Record, rng *rand.Rand, shift int64) *dnsqr.Record {
	c := *r
	c.ID, c.QueryPort = uint16(rng.Uint32()), uint16(1024+rng.IntN(64000))
	oldName := r.Qname
	if r.HasQuestion {
		c.Qname = bytes.Clone(r.Qname)
		for j := 0; j < len(c.Qname) && c.Qname[j] != 0; j += int(c.Qname[j]) + 1 {
			for k := j + 1; k <= j+int(c.Qname[j]) && k < len(c.Qname); k++ {
				if ch := c.Qname[k] | 0x20; ch >= 'a' && ch <= 'z' {
					c.Qname[k] = 'a' + byte(rng.IntN(26))
				}
			}
		}
	}
	patch := func(pkts [][]byte, query bool) [][]byte {
		out := make([][]byte, len(pkts))
		for j, pk := range pkts {
			pk = bytes.Clone(pk)
			if r.HasQuestion && len(oldName) > 1 {
				pk = bytes.ReplaceAll(pk, oldName, c.Qname)
			}
			var udp []byte
			switch {
			case len(pk) >= 20 && pk[0]>>4 == 4 && pk[9] == 17 && len(pk) >= int(pk[0]&15)*4+12:
				udp = pk[int(pk[0]&15)*4:]
			case len(pk) >= 52 && pk[0]>>4 == 6 && pk[6] == 17:
				udp = pk[40:]
			}
			if udp != nil {
				port := 0
				if !query {
					port = 2
				}
				binary.BigEndian.PutUint16(udp[port:], c.QueryPort)
				binary.BigEndian.PutUint16(udp[8:], c.ID)
			}
			out[j] = pk
		}
		return out
	}
	c.QueryPackets, c.ResponsePackets = patch(r.QueryPackets, true), patch(r.ResponsePackets, false)
	shiftAll := func(ts []int64) []int64 {
		out := make([]int64, len(ts))
		for j, t := range ts {
			out[j] = t + shift
		}
		return out
	}
	c.QueryTimes, c.ResponseTimes = shiftAll(r.QueryTimes), shiftAll(r.ResponseTimes)
	if c.EventTime != 0 {
		c.EventTime += shift
	}
	return &c
}

// BenchmarkDnsqrContainerWriter is the sensor's side of -z: the CPU a record costs to put into
// 64 KiB containers (the spool's, sensord -z) with and without zlib, on the records of
// BenchmarkSensorsToArchiveDnsqr, and the octets a record takes in them.
func BenchmarkDnsqrContainerWriter(b *testing.B) {
	recs := corpusDnsqr(b)
	for _, z := range []bool{false, true} {
		name := "plain"
		if z {
			name = "zlib"
		}
		b.Run(name, func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, 3))
			ps := make([]nmsg.Payload, 4096)
			for k := range ps {
				var pb []byte
				pb = dnsqr.Payload(&ps[k], pb, distinctCopy(recs[k%len(recs)], rng, int64(k)*1e6))
				ps[k].Data = pb
			}
			var out countWriter
			fw, err := nmsg.NewFileWriter(&out, nmsg.FileOptions{Zlib: z, SequenceID: 1, MaxSize: 64 << 10})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			i := 0
			cpu0 := benchCPU(b, nil)
			for b.Loop() {
				if err := fw.Write(&ps[i%len(ps)]); err != nil {
					b.Fatal(err)
				}
				i++
			}
			fw.Flush()
			// On a shared machine the CPU time says more than ns/op.
			b.ReportMetric(float64((benchCPU(b, nil)-cpu0).Nanoseconds())/float64(i), "cpu-ns/record")
			b.ReportMetric(float64(out.n)/float64(i), "octets/record")
		})
	}
}

type countWriter struct{ n int }

func (w *countWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }
