package collector

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// A session publishes its containers asynchronously, up to pipelineBytes (or pipelineCount
// containers) waiting for their PubAck at once: waiting for each PubAck before reading the next
// container bounded a session to one stream round trip per container (R3: a replication quorum
// each). The sensor's ping is still answered only after every container before it has its
// PubAck (sielink.Pipeline), so a confirmation never runs ahead of the stream. Off by default
// (JetStreamOptions.Pipeline): on the 2-core test machine the path is bound by CPU, and
// pipelining gained nothing there (uplink/README.md).
const (
	pipelineBytes = 4 << 20 // a few containers of 1 MiB, 64 of 64 KiB; copied, so per session memory
	pipelineCount = 256
)

// errPipelineClosed ends what a session's pipeline still held when the session ended.
var errPipelineClosed = errors.New("jetstream: session ended")

// pipelinedPublisher is the publisher as a sielink.Pipeliner (JetStreamOptions.Pipeline).
type pipelinedPublisher struct{ *publisher }

func (p pipelinedPublisher) Pipeline(sensor string) sielink.Pipeline { return p.pipeline(sensor) }

func (p *publisher) pipeline(sensor string) *pubPipeline {
	ctx, cancel := context.WithCancel(context.Background())
	pp := &pubPipeline{p: p, sensor: sensor, ctx: ctx, cancel: cancel,
		queue: make(chan *inFlight, pipelineCount), changed: make(chan struct{}), done: make(chan struct{})}
	go pp.complete()
	return pp
}

// pubPipeline is one session's containers between their publish and their PubAck, in the
// order they were read.
type pubPipeline struct {
	p      *publisher
	sensor string
	ctx    context.Context // ends with the session
	cancel context.CancelFunc
	queue  chan *inFlight // in read order; never more than pipelineCount
	done   chan struct{}  // complete has returned

	mu       sync.Mutex
	started  uint64 // containers Start took
	stored   uint64 // of them, the first stored ones: complete advances it in order
	inFlight int
	bytes    int
	changed  chan struct{} // closed (and replaced) when stored grows
}

type inFlight struct {
	data    []byte
	channel uint32
	seq     containerSeq
	fut     jetstream.PubAckFuture // nil if the asynchronous publish could not be sent
	err     error
	stored  func(duplicate bool)
}

func (pp *pubPipeline) Start(d *sielink.Delivery, stored func(bool)) error {
	n := len(d.Payload.Data)
	pp.mu.Lock()
	for pp.inFlight > 0 && (pp.inFlight >= pipelineCount || pp.bytes+n > pipelineBytes) {
		ch := pp.changed
		pp.mu.Unlock()
		select {
		case <-ch:
		case <-pp.ctx.Done():
			return errPipelineClosed
		}
		pp.mu.Lock()
	}
	pp.started++
	pp.inFlight++
	pp.bytes += n
	pp.mu.Unlock()
	f := &inFlight{data: slices.Clone(d.Payload.Data), channel: d.Payload.Channel, seq: deliverySeq(d), stored: stored}
	msg, opts := pp.p.newPubMsg(pp.sensor, f.channel, f.data, f.seq)
	f.fut, f.err = pp.p.js.PublishMsgAsync(msg, opts...)
	pp.queue <- f
	return nil
}

func (pp *pubPipeline) Wait(ctx context.Context) error {
	pp.mu.Lock()
	target := pp.started
	for pp.stored < target {
		ch := pp.changed
		pp.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-pp.ctx.Done():
			return errPipelineClosed
		}
		pp.mu.Lock()
	}
	pp.mu.Unlock()
	return nil
}

// Close abandons what has no PubAck yet: it was not confirmed, the sensor sends it again, and
// the message id stores it once if its publish got through after all.
func (pp *pubPipeline) Close() {
	pp.cancel()
	<-pp.done
}

// complete takes the PubAcks in read order. A container whose asynchronous publish failed
// (no PubAck in time, an error from the stream, a message id in process elsewhere) is published
// again, synchronously and in its place, until the stream takes it or the session ends: the
// session's later containers wait behind it, as the session held a stalled container before.
func (pp *pubPipeline) complete() {
	defer close(pp.done)
	for {
		var f *inFlight
		select {
		case f = <-pp.queue:
		case <-pp.ctx.Done():
			return
		}
		ack, waits, err := pp.await(f)
		if err != nil {
			return // the session ended
		}
		dup := pp.p.account(pp.sensor, ack, waits, nil)
		if pp.p.ackHook != nil {
			if pp.p.ackHook(pp.ctx, f.data); pp.ctx.Err() != nil {
				return
			}
		}
		f.stored(dup)
		pp.mu.Lock()
		pp.stored++
		pp.inFlight--
		pp.bytes -= len(f.data)
		close(pp.changed)
		pp.changed = make(chan struct{})
		pp.mu.Unlock()
	}
}

func (pp *pubPipeline) await(f *inFlight) (*jetstream.PubAck, uint64, error) {
	err := f.err
	if f.fut != nil {
		select {
		case ack := <-f.fut.Ok():
			if pp.p.failHook == nil || !pp.p.failHook(f.data) {
				return ack, 0, nil
			}
			err = errors.New("PubAck refused by the test seam")
		case err = <-f.fut.Err():
		case <-pp.ctx.Done():
			return nil, 0, errPipelineClosed
		}
	}
	pp.p.account(pp.sensor, nil, 0, err)
	for {
		msg, opts := pp.p.newPubMsg(pp.sensor, f.channel, f.data, f.seq)
		ctx, cancel := context.WithTimeout(pp.ctx, cmpDur(pp.p.timeout, PublishTimeout))
		ack, waits, err := pp.p.publish(ctx, msg, opts)
		cancel()
		if err == nil {
			return ack, waits, nil
		}
		if pp.ctx.Err() != nil {
			return nil, 0, errPipelineClosed
		}
		pp.p.account(pp.sensor, nil, waits, err)
		t := time.NewTimer(cmpDur(pp.p.retry, time.Second))
		select {
		case <-pp.ctx.Done():
			t.Stop()
			return nil, 0, errPipelineClosed
		case <-t.C:
		}
	}
}
