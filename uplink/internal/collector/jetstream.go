package collector

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// JetStreamOptions puts a NATS JetStream stream between the sensors and the collector's files:
// a container is confirmed to its sensor once the stream holds it, and consumers (the file
// archiver) read it from there, each at its own pace and restartable.
type JetStreamOptions struct {
	// URL lists an existing NATS cluster ("nats://a:4222,nats://b:4222"). Empty runs an embedded
	// single-node JetStream server in this process, without a listening port, storing in Dir.
	URL string
	// Dir is the embedded server's store; default <Store.Dir>/.jetstream (a sensor name cannot
	// start with a dot, so it never collides with a sensor's directory).
	Dir string
	// Stream is the stream's name; default DefaultStream. It takes the subjects dnssensor.>.
	Stream string
	// Replicas of the stream; default 3 with URL, 1 embedded.
	Replicas int
	// DupWindow is how long the stream remembers a container's message id (sensor, sequence_id,
	// sequence) to store its resend once; default DefaultDupWindow. A sensor resends what a
	// broken connection left unconfirmed when it reconnects, so the window must cover the
	// longest collector outage after which a resend must still be recognised.
	DupWindow time.Duration
	// MaxBytes and MaxAge bound the stream (0: no bound). The oldest messages are discarded
	// first; what a consumer had not read yet is counted as lost.
	MaxBytes int64
	MaxAge   time.Duration
	// Sync makes the embedded server fsync every message before its PubAck (the -fsync of the
	// direct path); a cluster's durability is its replicas and its own sync setting.
	Sync bool
	// Pipeline publishes a session's containers without waiting for each PubAck (up to 4 MiB
	// or 256 containers in flight) and answers the sensor's ping only once every container
	// before it has its PubAck; a ping whose containers are not all acknowledged within 4 s
	// ends the session unanswered (the sensor resends) instead of holding it. For a cluster
	// whose round trip is long (nodes on other hosts); on one loaded host it gained nothing.
	Pipeline bool
	// NoArchive leaves the stream to the other collectors' archivers: this one only ingests.
	NoArchive bool
	// ArchiveDurable names the archiver's durable consumer; default "archive". Two archives of
	// the same stream (two hosts, each a full copy) need two names.
	ArchiveDurable string

	// ForwardDurable names the durable consumer that feeds Options.Forward (the spool an uplinkd
	// ships to SIE Europe) from the stream; default "forward".
	ForwardDurable string
	// FanOut feeds the SOC's own analysis from the stream, each a durable consumer.
	FanOut []FanOut

	// forward is Options.Forward: with the stream, a consumer of it rather than a step of the
	// sensor's session.
	forward sielink.Handler
	// archiveDelay slows each archive write: a seam for tests of an archiver behind the stream.
	archiveDelay time.Duration
	// pubFail and pubAck are the publisher's failHook and ackHook (pipeline.go).
	pubFail func(data []byte) bool
	pubAck  func(ctx context.Context, data []byte)
}

// DefaultStream is JetStreamOptions.Stream's default.
const DefaultStream = "DNSSENSOR"

// DefaultDupWindow is JetStreamOptions.DupWindow's default: a collector restart or a NATS node's
// failover is minutes; the window costs about 100 octets of server memory per container.
const DefaultDupWindow = 10 * time.Minute

// subjectPrefix starts every subject: dnssensor.<channel>.<sensor>. A sensor name may contain
// dots, so the sensor is everything after the channel token.
const subjectPrefix = "dnssensor."

func subject(channel uint32, sensor string) string {
	return subjectPrefix + strconv.FormatUint(uint64(channel), 10) + "." + sensor
}

// subjectSensor returns the sensor of a subject, or false for a subject the collector does not
// publish.
func subjectSensor(subj string) (string, bool) {
	rest, ok := strings.CutPrefix(subj, subjectPrefix)
	if !ok {
		return "", false
	}
	_, sensor, ok := strings.Cut(rest, ".")
	return sensor, ok && sensor != ""
}

// msgID is a container's message id: a resend of the same spool container (same run, same
// sequence) has the same id, whichever collector receives it.
func msgID(sensor string, id uint64, seq uint32) string {
	return sensor + "/" + strconv.FormatUint(id, 16) + "/" + strconv.FormatUint(uint64(seq), 10)
}

// msgIDSeq is the container sequence named by mid, a message id msgID made for sensor (a
// sensor name has no '/'); unknown when mid is not one.
func msgIDSeq(sensor, mid string) containerSeq {
	rest, ok := strings.CutPrefix(mid, sensor+"/")
	idHex, seq, ok2 := strings.Cut(rest, "/")
	id, err1 := strconv.ParseUint(idHex, 16, 64)
	sq, err2 := strconv.ParseUint(seq, 10, 32)
	if !ok || !ok2 || err1 != nil || err2 != nil {
		return containerSeq{}
	}
	return containerSeq{id: id, seq: uint32(sq), ok: true, known: true}
}

// containerSeq is a container's NMSG sequence fields when they are known without reading the
// container (a zlib body would have to be inflated): from its validation (sielink.Delivery)
// or from its stream message's id.
type containerSeq struct {
	id        uint64
	seq       uint32
	ok, known bool
}

// of returns the sequence fields of data, read from it only when they are not known.
func (sq containerSeq) of(data []byte) (uint64, uint32, bool) {
	if sq.known {
		return sq.id, sq.seq, sq.ok
	}
	return nmsg.ContainerSequence(data)
}

// deliverySeq is what the session's validation read of d's sequence fields.
func deliverySeq(d *sielink.Delivery) containerSeq {
	if !d.HasSequence {
		// A container without them, or a Delivery made without validation (tests, the
		// stream's forward): read the container.
		return containerSeq{}
	}
	return containerSeq{id: d.SequenceID, seq: d.Sequence, ok: true, known: true}
}

// bus is the collector's connection to JetStream, and the embedded server when it runs one.
type bus struct {
	opts   JetStreamOptions
	ns     *server.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
}

func openBus(ctx context.Context, o JetStreamOptions, storeDir string, logf sielink.Logf) (*bus, error) {
	if o.Stream == "" {
		o.Stream = DefaultStream
	}
	if o.DupWindow == 0 {
		o.DupWindow = DefaultDupWindow
	}
	if o.DupWindow < 0 || o.MaxBytes < 0 || o.MaxAge < 0 || o.Replicas < 0 {
		return nil, errors.New("jetstream: -nats-dup-window, -nats-max-bytes, -nats-max-age and -nats-replicas must not be negative")
	}
	if o.ArchiveDurable == "" {
		o.ArchiveDurable = "archive"
	}
	b := &bus{opts: o}
	nopts := []nats.Option{nats.Name("collector"), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond)}
	url := o.URL
	if url == "" {
		if o.Replicas == 0 {
			o.Replicas = 1
		}
		dir := o.Dir
		if dir == "" {
			dir = filepath.Join(storeDir, ".jetstream")
		}
		ns, err := server.NewServer(&server.Options{
			ServerName: "collector", JetStream: true, StoreDir: dir,
			DontListen: true, NoSigs: true, NoLog: true,
			SyncAlways: o.Sync,
		})
		if err != nil {
			return nil, fmt.Errorf("jetstream: embedded server: %w", err)
		}
		ns.Start()
		if !ns.ReadyForConnections(30 * time.Second) {
			ns.Shutdown()
			return nil, fmt.Errorf("jetstream: embedded server in %s did not start", dir)
		}
		b.ns = ns
		nopts = append(nopts, nats.InProcessServer(ns))
	} else if o.Replicas == 0 {
		o.Replicas = 3
	}
	b.opts = o
	nc, err := nats.Connect(url, nopts...)
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("jetstream: connecting to %q (-nats): %w", url, err)
	}
	b.nc = nc
	// An asynchronous publish (pipeline.go) whose PubAck does not come is published again.
	if b.js, err = jetstream.New(nc, jetstream.WithPublishAsyncTimeout(PublishTimeout)); err != nil {
		b.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	cfg := jetstream.StreamConfig{
		Name: o.Stream, Subjects: []string{subjectPrefix + ">"},
		Storage: jetstream.FileStorage, Retention: jetstream.LimitsPolicy, Discard: jetstream.DiscardOld,
		Replicas: o.Replicas, Duplicates: o.DupWindow, MaxBytes: o.MaxBytes, MaxAge: o.MaxAge,
		Description: "NMSG containers from dnssensor sensors, one message each",
	}
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = -1
	}
	// A cluster may still be electing its meta leader when the collector starts.
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		b.stream, err = b.js.CreateOrUpdateStream(cctx, cfg)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			b.Close()
			return nil, fmt.Errorf("jetstream: creating stream %s: %w", o.Stream, err)
		}
		logTo(logf, "collector: jetstream: creating stream %s: %v (retrying)", o.Stream, err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	return b, nil
}

// Close drains the connection and stops the embedded server (its store is consistent on disk).
func (b *bus) Close() {
	if b.nc != nil {
		b.nc.Close()
	}
	if b.ns != nil {
		b.ns.Shutdown()
		b.ns.WaitForShutdown()
	}
}

// publisher is the sielink.Handler of the JetStream path: it publishes each container and
// returns only after the stream's PubAck, so the sensor's next Sync confirms stored data.
type publisher struct {
	js      jetstream.JetStream
	stream  string
	timeout time.Duration
	retry   time.Duration // between publishes of a container whose PubAck failed; default 1 s

	// Seams for tests of the pipeline (pipeline.go): failHook turns a container's first PubAck
	// into a failure, ackHook runs after a PubAck, before the container counts as stored.
	failHook func(data []byte) bool
	ackHook  func(ctx context.Context, data []byte)

	mu      sync.Mutex
	sensors map[string]*PublishStats
}

// PublishStats are a sensor's counters on the way into the stream.
type PublishStats struct {
	Published  uint64    `json:"published"`  // containers the stream acknowledged as new
	Duplicates uint64    `json:"duplicates"` // resends the stream recognised (message id) and stored once
	InProcess  uint64    `json:"in_process"` // publishes that found the same container being stored by another (a resend racing its first send) and waited for that outcome
	Errors     uint64    `json:"errors"`     // publishes that failed (held and retried; the data stays in the sensor's spool)
	LastError  string    `json:"last_error,omitempty"`
	LastSeq    uint64    `json:"last_stream_seq"`
	LastAck    time.Time `json:"last_ack"`
}

// PublishTimeout bounds one publish: a cluster that lost its quorum holds the sensor's session
// (the data stays unconfirmed) and the publish is tried again.
const PublishTimeout = 10 * time.Second

// newPubMsg is a container's message, with its message id when the container has a sequence.
func (p *publisher) newPubMsg(sensor string, channel uint32, data []byte, sq containerSeq) (*nats.Msg, []jetstream.PublishOpt) {
	msg := nats.NewMsg(subject(channel, sensor))
	msg.Data = data
	opts := []jetstream.PublishOpt{jetstream.WithExpectStream(p.stream)}
	if id, seq, ok := sq.of(data); ok {
		opts = append(opts, jetstream.WithMsgID(msgID(sensor, id, seq)))
	}
	return msg, opts
}

func (p *publisher) Deliver(d *sielink.Delivery) error {
	// Data is copied into the connection's buffer before PublishMsg returns.
	msg, opts := p.newPubMsg(d.Sensor, d.Payload.Channel, d.Payload.Data, deliverySeq(d))
	ctx, cancel := context.WithTimeout(context.Background(), cmpDur(p.timeout, PublishTimeout))
	ack, waits, err := p.publish(ctx, msg, opts)
	cancel()
	if err != nil {
		p.account(d.Sensor, nil, waits, err)
		// Unconfirmed, the container waits in the sensor's spool; the session is held and the
		// publish retried rather than the session ended, as for a full disk on the direct path.
		return sielink.Stall(fmt.Errorf("jetstream: publishing: %w", err))
	}
	d.Duplicate = p.account(d.Sensor, ack, waits, nil)
	return nil
}

// account counts a publish's outcome for its sensor and reports whether the stream recognised
// the container as a resend.
func (p *publisher) account(sensor string, ack *jetstream.PubAck, waits uint64, err error) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.sensors[sensor]
	if st == nil {
		st = &PublishStats{}
		p.sensors[sensor] = st
	}
	st.InProcess += waits
	if err != nil {
		st.Errors++
		st.LastError = err.Error()
		return false
	}
	st.LastError = ""
	st.LastSeq, st.LastAck = ack.Sequence, time.Now()
	if ack.Duplicate {
		st.Duplicates++
		return true
	}
	st.Published++
	return false
}

// errCodeMsgIDInProcess is the stream's answer to a publish whose message id another publish
// has proposed and the cluster has not applied yet ("409 duplicate message id is in process").
const errCodeMsgIDInProcess jetstream.ErrorCode = 10158

// inProcessWait bounds the pause between publishes of a container that is in process elsewhere.
const inProcessWait = 200 * time.Millisecond

// publish publishes msg until the stream decides. A resend that races its first send (the
// sensor's earlier session, here or at another collector, is still publishing it) finds the
// message id in process: the container is then neither stored nor refused, and only the first
// publish's outcome tells which. So the publish is repeated, quickly at first, until the stream
// answers with the stored sequence (a duplicate) or, if the first one failed, stores it. It
// returns how often it waited so.
func (p *publisher) publish(ctx context.Context, msg *nats.Msg, opts []jetstream.PublishOpt) (*jetstream.PubAck, uint64, error) {
	var waits uint64
	for wait := time.Millisecond; ; wait = min(2*wait, inProcessWait) {
		ack, err := p.js.PublishMsg(ctx, msg, opts...)
		var apiErr *jetstream.APIError
		if err == nil || !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeMsgIDInProcess {
			return ack, waits, err
		}
		waits++
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, waits, err
		case <-t.C:
		}
	}
}

func (p *publisher) stats() map[string]PublishStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]PublishStats, len(p.sensors))
	for k, v := range p.sensors {
		out[k] = *v
	}
	return out
}

func cmpDur(a, b time.Duration) time.Duration {
	if a > 0 {
		return a
	}
	return b
}

// admitHandler is a sielink.Handler that also admits sessions (Store, publisher).
type admitHandler interface {
	sielink.Handler
	sielink.Admitter
}

// Admit lets every session in: limits apply in the stream and in the archive.
func (p *publisher) Admit(string) error { return nil }

// jsRunner is the JetStream side of a running collector: the bus, the publisher that sessions
// deliver to, and the archiver.
type jsRunner struct {
	bus  *bus
	pub  *publisher
	arch *archiver

	cancel context.CancelFunc
	done   chan struct{}

	// consumers hand the stream on: the forward to SIE Europe, the fan-outs.
	consumers     []*streamConsumer
	stopConsumers context.CancelFunc
	consumersDone sync.WaitGroup
}

// closeConsumers stops the forward and fan-out consumers (what they had not acknowledged is
// handed on again at the next start) and closes their feeds.
func (r *jsRunner) closeConsumers() {
	if r.stopConsumers != nil {
		r.stopConsumers()
		r.consumersDone.Wait()
		r.stopConsumers = nil
	}
	for _, c := range r.consumers {
		if c.close != nil {
			c.close()
		}
	}
	r.consumers = nil
}

func startJetStream(ctx context.Context, o JetStreamOptions, store *Store, logf sielink.Logf) (*jsRunner, error) {
	b, err := openBus(ctx, o, store.opts.Dir, logf)
	if err != nil {
		return nil, err
	}
	r := &jsRunner{bus: b, pub: &publisher{js: b.js, stream: b.opts.Stream, sensors: make(map[string]*PublishStats),
		failHook: o.pubFail, ackHook: o.pubAck}}
	if o.forward != nil {
		r.consumers = append(r.consumers, newForward(b.stream, cmp.Or(o.ForwardDurable, "forward"), o.forward, logf))
	}
	for i, f := range o.FanOut {
		c, err := newFanOut(i, f, b.stream, logf)
		if err != nil {
			r.closeConsumers()
			b.Close()
			return nil, err
		}
		r.consumers = append(r.consumers, c)
	}
	cctx, cancel := context.WithCancel(context.Background())
	r.stopConsumers = cancel
	for _, c := range r.consumers {
		r.consumersDone.Add(1)
		go func() {
			defer r.consumersDone.Done()
			c.run(cctx)
		}()
	}
	if !b.opts.NoArchive {
		r.arch = &archiver{store: store, stream: b.stream, durable: b.opts.ArchiveDurable, logf: logf, delay: o.archiveDelay}
		actx, cancel := context.WithCancel(context.Background())
		r.cancel, r.done = cancel, make(chan struct{})
		go func() {
			defer close(r.done)
			r.arch.run(actx)
		}()
	}
	return r, nil
}

// stopArchiver ends the archiver (after the sessions, before the store closes); what it had not
// acknowledged is delivered again at the next start.
// archiverDrain bounds how long a shutdown waits for the archiver to write what the stream
// holds.
const archiverDrain = 10 * time.Second

func (r *jsRunner) stopArchiver() {
	if r == nil || r.cancel == nil {
		return
	}
	// Drain first: the sensors were confirmed once the stream held their data, so a clean stop
	// leaves the files holding all of it, not the archive some seconds behind the stream (the
	// rest would be archived at the next start, but the files are what a SOC reads now).
	if r.arch != nil {
		ctx, cancel := context.WithTimeout(context.Background(), archiverDrain)
		if info, err := r.bus.stream.Info(ctx); err == nil {
			for last := info.State.LastSeq; r.arch.store.Archived() < last && ctx.Err() == nil; {
				time.Sleep(20 * time.Millisecond)
			}
		}
		cancel()
	}
	r.cancel()
	<-r.done
	r.cancel = nil
}

func (r *jsRunner) close() {
	if r == nil {
		return
	}
	r.stopArchiver()
	r.closeConsumers()
	r.bus.Close()
}

// JetStreamSnapshot is the stream's and the archiver's state (/status.json).
type JetStreamSnapshot struct {
	URL       string          `json:"url"` // empty: embedded
	Stream    string          `json:"stream"`
	Replicas  int             `json:"replicas"`
	DupWindow string          `json:"duplicate_window"`
	Connected bool            `json:"connected"`
	Messages  uint64          `json:"messages"`
	Bytes     uint64          `json:"bytes"`
	FirstSeq  uint64          `json:"first_seq"`
	LastSeq   uint64          `json:"last_seq"`
	InfoError string          `json:"info_error,omitempty"`
	Archiver  *ArchiverStats  `json:"archiver,omitempty"`
	Consumers []ConsumerStats `json:"consumers,omitempty"` // forward, fan-outs
}

func (r *jsRunner) snapshot() *JetStreamSnapshot {
	o := r.bus.opts
	s := &JetStreamSnapshot{URL: o.URL, Stream: o.Stream, Replicas: o.Replicas, DupWindow: o.DupWindow.String(),
		Connected: r.bus.nc.IsConnected()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if info, err := r.bus.stream.Info(ctx); err != nil {
		s.InfoError = err.Error()
	} else {
		s.Messages, s.Bytes, s.FirstSeq, s.LastSeq = info.State.Msgs, info.State.Bytes, info.State.FirstSeq, info.State.LastSeq
	}
	if r.arch != nil {
		a := r.arch.stats()
		s.Archiver = &a
	}
	for _, c := range r.consumers {
		s.Consumers = append(s.Consumers, c.stats())
	}
	return s
}
