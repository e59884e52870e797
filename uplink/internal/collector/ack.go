package collector

import (
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ackDelay is the longest a consumer holds an acknowledgement back while fewer than its batch
// have been handled: a restart hands on again (or skips) at most that much.
const ackDelay = 100 * time.Millisecond

// ackBatcher acknowledges a consumer's messages in batches: one acknowledgement of the latest
// message handled covers the stream through it (AckAll), sent once every messages were handled
// since the last one, or ackDelay after the first of them. In an R3 stream each acknowledgement
// is a write of the consumer's state replicated to three nodes. The consumer must hand messages
// to add in stream order, each once everything before it is done. (Acknowledging whenever the
// message's NumPending is 0 instead, as before, acknowledged nearly every message: the pull
// buffers up to 256 messages, and NumPending counts only those not yet delivered to it.)
type ackBatcher struct {
	every int
	// flush, if set, runs before each acknowledgement (consumer.flush).
	flush func() error
	// failed is told an acknowledgement or flush that failed from the timer; it is tried again
	// after feedRetry.
	failed func(error)

	mu      sync.Mutex
	last    jetstream.Msg // handled, not acknowledged
	n       int
	timer   *time.Timer
	stopped bool
}

// add records msg as handled; due reports that the batch is full and ackNow should run.
func (b *ackBatcher) add(msg jetstream.Msg) (due bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last = msg
	b.n++
	if b.n >= b.every {
		return true
	}
	if b.n == 1 {
		if b.timer == nil {
			b.timer = time.AfterFunc(ackDelay, b.fire)
		} else {
			b.timer.Reset(ackDelay)
		}
	}
	return false
}

// waiting reports whether a message handled is waiting for its acknowledgement.
func (b *ackBatcher) waiting() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last != nil
}

func (b *ackBatcher) fire() {
	if err := b.ackNow(); err != nil {
		b.failed(err)
		b.mu.Lock()
		if !b.stopped {
			b.timer.Reset(feedRetry)
		}
		b.mu.Unlock()
	}
}

// ackNow flushes and acknowledges the stream through the latest message handled. A failed
// acknowledgement is not repeated: the next covers it, or the message comes again.
func (b *ackBatcher) ackNow() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last == nil {
		return nil
	}
	if b.flush != nil {
		if err := b.flush(); err != nil {
			return err
		}
	}
	msg := b.last
	b.last, b.n = nil, 0
	return msg.Ack()
}

// stop acknowledges what was handled (when the flush succeeds) and stops the timer for good.
func (b *ackBatcher) stop() {
	b.ackNow()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stopped = true
	if b.timer != nil {
		b.timer.Stop()
	}
}
