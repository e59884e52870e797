package collector

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sie-europe/dnssensor/uplink/internal/collector/auth"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// archiver is the durable consumer that writes the stream into the rotated per-sensor files.
// It takes the messages in stream order, one at a time, and acknowledges the stream through a
// message (AckAll) once its container and stream sequence are in the files (Store.Archive), not
// every message: see archiverAckEvery. A restart resumes at the consumer's acknowledged floor;
// the messages it redelivers that the files already hold (archived but not yet acknowledged, or
// the acknowledgement was lost with the process) are at or below Store.Archived and are skipped,
// so each container is in the archive exactly once.
type archiver struct {
	store   *Store
	stream  jetstream.Stream
	durable string
	logf    sielink.Logf
	delay   time.Duration // JetStreamOptions.archiveDelay

	acks *ackBatcher

	mu sync.Mutex
	st ArchiverStats
}

// ArchiverStats is the archiver's progress (/status.json, /metrics).
type ArchiverStats struct {
	Durable    string    `json:"durable"`
	Archived   uint64    `json:"archived"`   // containers written
	Skipped    uint64    `json:"skipped"`    // redelivered containers the archive already held
	GapFilled  uint64    `json:"gap_filled"` // containers read from the stream because their delivery came out of order
	Duplicates uint64    `json:"duplicates"` // containers the store recognised by (sequence_id, sequence)
	StreamSeq  uint64    `json:"stream_seq"` // stream sequence the archive holds through
	Pending    uint64    `json:"pending"`    // messages in the stream not yet delivered to the archiver
	Stalls     uint64    `json:"stalls"`     // write attempts that failed and were retried (disk full)
	Lost       LossStats `json:"lost"`       // containers acknowledged without being archived, by reason
	LastError  string    `json:"last_error,omitempty"`
	LastWrite  time.Time `json:"last_write"`
	Running    bool      `json:"running"`
	Stalled    bool      `json:"stalled"`
}

// LossStats counts containers the archive will never hold, by reason.
type LossStats struct {
	Quota      uint64 `json:"quota"`       // the sensor's directory was over -quota
	BadSubject uint64 `json:"bad_subject"` // a message on the stream that no collector published
	Limits     uint64 `json:"limits"`      // discarded by the stream's limits before the archiver read them
}

// archiverAckWait is how long the server waits for an acknowledgement before redelivering; the
// archiver extends it (InProgress) while a write stalls.
const archiverAckWait = time.Minute

// archiverAckEvery is how many messages the archiver handles per acknowledgement; fewer are
// acknowledged ackDelay after the first of them (ackBatcher). In an R3 stream
// every acknowledgement is a write of the consumer's state replicated to three nodes: one per
// 64 KiB container was about a tenth of the CPU a record costs from the sensor to the files
// (BenchmarkSensorsToArchive, path=r3). AckAll makes one acknowledgement cover every message
// before it, which is exact here because the archiver takes the stream in order: it
// acknowledges only through Store.Archived.
const archiverAckEvery = 64

func (a *archiver) stats() ArchiverStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.st
}

func (a *archiver) update(f func(*ArchiverStats)) {
	a.mu.Lock()
	f(&a.st)
	a.mu.Unlock()
}

// archiverConsumer is the archiver's durable pull consumer.
func archiverConsumer(durable string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable: durable, AckPolicy: jetstream.AckAllPolicy, AckWait: archiverAckWait,
		DeliverPolicy: jetstream.DeliverAllPolicy, MaxAckPending: 1024,
		FilterSubject: subjectPrefix + ">",
		Description:   "the collector's file archive",
	}
}

// run consumes until ctx ends; it reconnects by itself (nats.go) and recreates its pull on errors.
func (a *archiver) run(ctx context.Context) error {
	cfg := archiverConsumer(a.durable)
	a.update(func(s *ArchiverStats) { s.Durable, s.StreamSeq = a.durable, a.store.Archived() })
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cons, err := openDurable(cctx, a.stream, cfg, false, a.logf)
		cancel()
		if err == nil {
			err = a.consume(ctx, cons)
		}
		if ctx.Err() != nil {
			break
		}
		a.update(func(s *ArchiverStats) { s.Running, s.LastError = false, err.Error() })
		logTo(a.logf, "collector: archiver: %v (retrying)", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
	a.update(func(s *ArchiverStats) { s.Running = false })
	return nil
}

func (a *archiver) consume(ctx context.Context, cons jetstream.Consumer) error {
	a.acks = &ackBatcher{every: archiverAckEvery, failed: func(err error) {
		logTo(a.logf, "collector: archiver: acknowledging: %v", err)
	}}
	defer a.acks.stop()
	return pullEach(ctx, cons, func() { a.update(func(s *ArchiverStats) { s.Running, s.LastError = true, "" }) }, a.handle)
}

// handle archives one message and acknowledges it; it returns an error only when ctx ended
// before the message could be written (it stays unacknowledged and is delivered again).
func (a *archiver) handle(ctx context.Context, msg jetstream.Msg) error {
	meta, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("message metadata: %w", err)
	}
	seq := meta.Sequence.Stream
	a.update(func(s *ArchiverStats) { s.Pending = meta.NumPending })
	if seq <= a.store.Archived() {
		a.update(func(s *ArchiverStats) { s.Skipped++ })
		return a.ack(ctx, msg)
	}
	if floor := a.store.Archived(); seq > floor+1 {
		// A consumer delivers in stream order except what it redelivers: a message delivered
		// before a restart or a failover of the consumer's leader and never acknowledged comes
		// again only after AckWait, behind later ones. Archiving this one first would raise the
		// floor over it, and its redelivery would be skipped as already archived: lost. So the
		// archive takes the messages in between from the stream itself, in order; only those the
		// stream no longer holds (its limits discarded them) are lost.
		if err := a.fillGap(ctx, floor+1, seq, msg); err != nil {
			return err
		}
	}
	if err := a.archive(ctx, msg.Subject(), msg.Data(), msg.Headers().Get(jetstream.MsgIDHeader), seq, msg); err != nil {
		return err
	}
	return a.ack(ctx, msg)
}

// ack acknowledges the stream through msg, whose container the archive now holds (or skipped),
// in batches (ackBatcher). What is left unacknowledged when the archiver stops is delivered again
// at the next start and skipped.
func (a *archiver) ack(_ context.Context, msg jetstream.Msg) error {
	if a.acks.add(msg) {
		return a.acks.ackNow()
	}
	return nil
}

// fillGap archives the stream's messages from through to-1 by reading them from the stream, and
// counts those it no longer holds as lost to its limits (readGap).
func (a *archiver) fillGap(ctx context.Context, from, to uint64, cur jetstream.Msg) error {
	return readGap(ctx, a.stream, from, to, cur,
		func(n, through uint64) {
			a.update(func(s *ArchiverStats) { s.Lost.Limits += n })
			a.store.archivedThrough(through)
		},
		func(raw *jetstream.RawStreamMsg) error {
			a.update(func(s *ArchiverStats) { s.GapFilled++ })
			return a.archive(ctx, raw.Subject, raw.Data, raw.Header.Get(jetstream.MsgIDHeader), raw.Sequence, cur)
		})
}

// archive writes one container of the stream into the files. It returns nil once the container
// is written or counted as lost, and an error only when ctx ended first. msgID is its message's
// id, which names its sequence fields (a zlib container is not inflated again to read them).
// cur is the delivered message being handled: a write that stalls extends its acknowledgement
// deadline.
func (a *archiver) archive(ctx context.Context, subject string, data []byte, msgID string, seq uint64, cur jetstream.Msg) error {
	sensor, ok := subjectSensor(subject)
	if ok {
		ok = auth.ValidSensorName(sensor)
	}
	if !ok {
		logTo(a.logf, "collector: archiver: stream sequence %d on subject %q, not one the collector publishes: skipped", seq, subject)
		a.update(func(s *ArchiverStats) { s.Lost.BadSubject++ })
		a.store.archivedThrough(seq)
		return nil
	}
	if a.delay > 0 {
		time.Sleep(a.delay)
	}
	var t *time.Timer
	for {
		dup, err := a.store.archive(sensor, data, seq, msgIDSeq(sensor, msgID))
		if err == nil {
			a.update(func(s *ArchiverStats) {
				if dup {
					s.Duplicates++
				} else {
					s.Archived++
				}
				s.StreamSeq, s.LastWrite, s.Stalled = seq, time.Now(), false
			})
			return nil
		}
		var ref *sielink.Refusal
		if errors.As(err, &ref) && errors.Is(err, ErrOverQuota) {
			// The sensor was confirmed when the stream took the container: over its quota the
			// archive can only count it.
			a.update(func(s *ArchiverStats) { s.Lost.Quota++; s.StreamSeq = seq })
			a.store.archivedThrough(seq)
			return nil
		}
		// Disk full or a write error: the message stays unacknowledged and is offered again,
		// nothing after it is written meanwhile (stream order is what makes Archived exact).
		a.update(func(s *ArchiverStats) { s.Stalls++; s.Stalled = true; s.LastError = err.Error() })
		cur.InProgress()
		if t == nil {
			t = time.NewTimer(time.Second)
			defer t.Stop()
		} else {
			t.Reset(time.Second)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
