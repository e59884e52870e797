package collector

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/nmsg/dnsqr"
	"github.com/sie-europe/dnssensor/uplink/internal/nmsgudp"
	"github.com/sie-europe/dnssensor/uplink/sielink"
)

// FanOut is a feed of the stream for the SOC's own analysis, a durable consumer of its own:
// NMSG/UDP datagrams (as nmsgtool -l reads them), or nmsgtool -J compatible JSON lines of the
// base:dnsqr records appended to a file. Exactly one of UDP and JSONFile is set.
type FanOut struct {
	Durable  string // the consumer's name; default "fanout-<n>"
	UDP      string // host:port
	MTU      int    // of UDP; 0: 1280
	JSONFile string
}

// ConsumerStats is the progress of a durable consumer that hands the stream on (/status.json,
// /metrics).
type ConsumerStats struct {
	Durable     string `json:"durable"`
	Kind        string `json:"kind"`        // forward, udp, json
	Handled     uint64 `json:"handled"`     // containers handed on
	Redelivered uint64 `json:"redelivered"` // of them, deliveries after the first (handed on again: at least once)
	StreamSeq   uint64 `json:"stream_seq"`  // stream sequence of the last one handed on
	Pending     uint64 `json:"pending"`     // messages in the stream not yet delivered to the consumer
	Errors      uint64 `json:"errors"`      // hand-overs that failed and were retried
	Skipped     uint64 `json:"skipped"`     // payloads the feed cannot render (not base:dnsqr, undecodable), or messages on a foreign subject
	GapFilled   uint64 `json:"gap_filled"`  // containers read from the stream because their delivery came out of order
	Lost        uint64 `json:"lost"`        // containers the stream's limits discarded before the consumer handed them on
	LastError   string `json:"last_error,omitempty"`
	Running     bool   `json:"running"`
}

// streamMsg is one container of the stream with what its subject says.
type streamMsg struct {
	Seq     uint64
	Sensor  string
	Channel uint32
	Data    []byte
}

// subjectChannel returns the channel and sensor of a subject the collector publishes.
func subjectChannel(subj string) (uint32, string, bool) {
	rest, ok := strings.CutPrefix(subj, subjectPrefix)
	if !ok {
		return 0, "", false
	}
	ch, sensor, ok := strings.Cut(rest, ".")
	c, err := strconv.ParseUint(ch, 10, 32)
	return uint32(c), sensor, ok && err == nil && sensor != ""
}

// streamConsumer hands every container of the stream to a feed, at least once and in stream
// order. It acknowledges the stream through a message (AckAll) once the feed has taken it and
// everything before it, in batches (ackBatcher). A feed that fails is offered
// the same message again every second (its acknowledgement deadline extended, nothing after it
// handed on meanwhile). A restart resumes at the consumer's acknowledged floor, handing on again
// what was handed on but not acknowledged.
type streamConsumer struct {
	stream  jetstream.Stream
	durable string
	desc    string
	// feed hands m on; skipped counts its payloads the feed cannot render.
	feed func(ctx context.Context, m *streamMsg) (skipped uint64, err error)
	// flush, if set, makes what feed took safe from a crash of the collector (the forward's
	// spool seals its segment); it runs before every acknowledgement, since one covers all the
	// messages before it.
	flush func() error
	close func() error
	logf  sielink.Logf

	// Consume's goroutine: the consumer being read, the stream sequence through which every
	// message has been handed on (by this collector, or acknowledged by any), and the messages
	// handled since the last acknowledgement.
	cons   jetstream.Consumer
	handed uint64
	acks   *ackBatcher

	mu sync.Mutex
	st ConsumerStats
}

func (c *streamConsumer) stats() ConsumerStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

func (c *streamConsumer) update(f func(*ConsumerStats)) {
	c.mu.Lock()
	f(&c.st)
	c.mu.Unlock()
}

// consumerAckWait is how long the server waits for an acknowledgement before redelivering; the
// consumer extends it (InProgress) while a feed fails.
const consumerAckWait = time.Minute

// consumerAckEvery is how many messages a consumer hands on per acknowledgement (ackBatcher).
const consumerAckEvery = 64

// feedRetry is how often a failing feed is offered its message again.
const feedRetry = time.Second

// streamConsumerConfig is the durable pull consumer of a feed.
func streamConsumerConfig(durable, desc string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable: durable, AckPolicy: jetstream.AckAllPolicy, AckWait: consumerAckWait,
		DeliverPolicy: jetstream.DeliverAllPolicy, MaxAckPending: 1024,
		FilterSubject: subjectPrefix + ">", Description: desc,
	}
}

func (c *streamConsumer) run(ctx context.Context) {
	cfg := streamConsumerConfig(c.durable, c.desc)
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cons, err := openDurable(cctx, c.stream, cfg, true, c.logf)
		cancel()
		if err == nil {
			err = c.consume(ctx, cons)
		}
		if ctx.Err() != nil {
			break
		}
		c.update(func(s *ConsumerStats) { s.Running, s.LastError = false, err.Error() })
		logTo(c.logf, "collector: consumer %s: %v (retrying)", c.durable, err)
		select {
		case <-ctx.Done():
		case <-time.After(feedRetry):
		}
	}
	c.update(func(s *ConsumerStats) { s.Running = false })
}

// openDurable creates or updates a durable consumer. One left by an earlier version with another
// acknowledgement policy (AckExplicit), which cannot be updated, is deleted and created anew:
// with resume from the message after the old one's acknowledged floor (what it had delivered
// but not acknowledged is handed on again), else from the stream's start.
func openDurable(ctx context.Context, stream jetstream.Stream, cfg jetstream.ConsumerConfig, resume bool, logf sielink.Logf) (jetstream.Consumer, error) {
	cons, err := stream.CreateOrUpdateConsumer(ctx, cfg)
	if err == nil {
		return cons, nil
	}
	old, lerr := stream.Consumer(ctx, cfg.Durable)
	if lerr != nil {
		return nil, err
	}
	oi := old.CachedInfo()
	if oi.Config.AckPolicy == cfg.AckPolicy {
		if oi.Config.DeliverPolicy == cfg.DeliverPolicy {
			return nil, err
		}
		// Created anew by an earlier start (below): it keeps the start it was given.
		cfg.DeliverPolicy, cfg.OptStartSeq = oi.Config.DeliverPolicy, oi.Config.OptStartSeq
		return stream.CreateOrUpdateConsumer(ctx, cfg)
	}
	from := "the stream is read again from its start, what the archive holds is skipped"
	if resume {
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, oi.AckFloor.Stream+1
		from = fmt.Sprintf("resuming at stream sequence %d", cfg.OptStartSeq)
	}
	logTo(logf, "collector: consumer %s acknowledges %s, not %s: created anew (%s)",
		cfg.Durable, oi.Config.AckPolicy, cfg.AckPolicy, from)
	if err := stream.DeleteConsumer(ctx, cfg.Durable); err != nil {
		return nil, fmt.Errorf("deleting consumer %s to change its acknowledgement policy: %w", cfg.Durable, err)
	}
	return stream.CreateOrUpdateConsumer(ctx, cfg)
}

func (c *streamConsumer) consume(ctx context.Context, cons jetstream.Consumer) error {
	// Everything through the acknowledged floor was handed on (by this collector or another
	// sharing the durable); what was delivered above it and not acknowledged comes again.
	c.cons, c.handed = cons, cons.CachedInfo().AckFloor.Stream
	c.acks = &ackBatcher{every: consumerAckEvery, flush: c.flush, failed: func(err error) {
		c.update(func(s *ConsumerStats) { s.Errors++; s.LastError = err.Error() })
	}}
	defer c.acks.stop()
	c.update(func(s *ConsumerStats) { s.StreamSeq = max(s.StreamSeq, c.handed) })
	return pullEach(ctx, cons, func() { c.update(func(s *ConsumerStats) { s.Running, s.LastError = true, "" }) }, c.handle)
}

// pullEach hands every message of cons to handle, in order, until ctx ends (nil) or the
// iterator or handle fails (that error); running is called once the pull is under way. The
// archiver and every other durable consumer read the stream so.
func pullEach(ctx context.Context, cons jetstream.Consumer, running func(), handle func(context.Context, jetstream.Msg) error) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(256))
	if err != nil {
		return err
	}
	defer it.Stop()
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	running()
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) && ctx.Err() != nil {
				return nil
			}
			return err
		}
		if err := handle(ctx, msg); err != nil {
			return err
		}
	}
}

func (c *streamConsumer) handle(ctx context.Context, msg jetstream.Msg) error {
	meta, err := msg.Metadata()
	if err != nil {
		return fmt.Errorf("message metadata: %w", err)
	}
	seq := meta.Sequence.Stream
	c.update(func(s *ConsumerStats) { s.Pending = meta.NumPending })
	if seq > c.handed+1 {
		// A consumer delivers in stream order except what it redelivers: messages delivered
		// before a restart (or to another collector sharing the durable) and not acknowledged
		// come again only after AckWait, behind later ones. Acknowledging this one would cover
		// them unseen, so they are read from the stream first (archiver.fillGap's reasoning),
		// unless the acknowledged floor shows they were handed on meanwhile.
		if info, err := c.cons.Info(ctx); err == nil {
			c.handed = max(c.handed, info.AckFloor.Stream)
		}
		if seq > c.handed+1 {
			if err := c.fillGap(ctx, c.handed+1, seq, msg); err != nil {
				return err
			}
		}
	}
	if seq <= c.handed {
		// Handed on already (a redelivery behind the gap it filled): the acknowledgement
		// waiting for a later message covers it, or its own does.
		if c.acks.waiting() {
			return nil
		}
	} else if err := c.handOn(ctx, msg.Subject(), msg.Data(), seq, meta.NumDelivered > 1, msg); err != nil {
		return err
	}
	return c.ack(ctx, msg)
}

// ack acknowledges the stream through msg, whose container and every one before it were handed
// on, in batches (ackBatcher); the feed's flush runs first.
func (c *streamConsumer) ack(ctx context.Context, msg jetstream.Msg) error {
	if c.acks.add(msg) {
		return c.retry(ctx, msg, c.acks.ackNow)
	}
	return nil
}

// fillGap hands on the stream's messages from through to-1, read from the stream, and counts
// those it no longer holds as lost to its limits. cur is the message that revealed the gap.
func (c *streamConsumer) fillGap(ctx context.Context, from, to uint64, cur jetstream.Msg) error {
	return readGap(ctx, c.stream, from, to, cur,
		func(n, through uint64) {
			c.update(func(s *ConsumerStats) { s.Lost += n })
			c.handed = through
		},
		func(raw *jetstream.RawStreamMsg) error {
			c.update(func(s *ConsumerStats) { s.GapFilled++ })
			return c.handOn(ctx, raw.Subject, raw.Data, raw.Sequence, false, cur)
		})
}

// readGap reads the stream's messages from through to-1, which a consumer reading the stream in
// order found skipped (a restart's redeliveries come back late, behind later messages): lost(n,
// through) for those the stream's limits no longer hold, handle for each of the others, in
// order. cur, the message that revealed the gap, has its acknowledgement deadline extended
// meanwhile.
func readGap(ctx context.Context, stream jetstream.Stream, from, to uint64, cur jetstream.Msg,
	lost func(n, through uint64), handle func(*jetstream.RawStreamMsg) error) error {
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream info for the sequences %d-%d not delivered in order: %w", from, to-1, err)
	}
	if first := info.State.FirstSeq; from < first {
		gone := min(first, to) - from
		from += gone
		lost(gone, from-1)
	}
	for seq := from; seq < to; seq++ {
		cur.InProgress()
		raw, err := stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			lost(1, seq)
			continue
		}
		if err != nil {
			return fmt.Errorf("reading stream sequence %d (not delivered in order): %w", seq, err)
		}
		if err := handle(raw); err != nil {
			return err
		}
	}
	return nil
}

// handOn feeds one container of the stream, offering it again every second while the feed
// fails; it returns an error only when ctx ended first. cur is the delivered message being
// handled: its acknowledgement deadline is extended meanwhile.
func (c *streamConsumer) handOn(ctx context.Context, subject string, data []byte, seq uint64, redelivered bool, cur jetstream.Msg) error {
	ch, sensor, ok := subjectChannel(subject)
	if !ok {
		c.update(func(s *ConsumerStats) { s.Skipped++ })
		c.handed = seq
		return nil
	}
	m := &streamMsg{Seq: seq, Sensor: sensor, Channel: ch, Data: data}
	var skipped uint64
	err := c.retry(ctx, cur, func() (err error) {
		skipped, err = c.feed(ctx, m)
		return err
	})
	if err != nil {
		return err
	}
	c.handed = seq
	c.update(func(s *ConsumerStats) {
		s.Handled++
		s.Skipped += skipped
		s.StreamSeq = seq
		if redelivered {
			s.Redelivered++
		}
	})
	return nil
}

// retry runs f until it succeeds, every feedRetry, extending cur's acknowledgement deadline
// while it fails; it returns an error only when ctx ended first.
func (c *streamConsumer) retry(ctx context.Context, cur jetstream.Msg, f func() error) error {
	var t *time.Timer
	for {
		err := f()
		if err == nil {
			c.update(func(s *ConsumerStats) { s.LastError = "" })
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.update(func(s *ConsumerStats) { s.Errors++; s.LastError = err.Error() })
		cur.InProgress()
		if t == nil {
			t = time.NewTimer(feedRetry)
			defer t.Stop()
		} else {
			t.Reset(feedRetry)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// newForward is the consumer that feeds h, the forward to SIE Europe.
func newForward(stream jetstream.Stream, durable string, h sielink.Handler, logf sielink.Logf) *streamConsumer {
	c := &streamConsumer{stream: stream, durable: durable, desc: "the collector's forward to SIE Europe",
		feed: forwardFeed(h), logf: logf, st: ConsumerStats{Durable: durable, Kind: "forward"}}
	if f, ok := h.(flusher); ok {
		c.flush = f.Flush
	}
	return c
}

// forwardFeed hands each container to the forward handler (the spool that an uplinkd ships to
// SIE Europe), as a session would have.
func forwardFeed(h sielink.Handler) func(context.Context, *streamMsg) (uint64, error) {
	return func(_ context.Context, m *streamMsg) (uint64, error) {
		return 0, h.Deliver(&sielink.Delivery{Sensor: m.Sensor, Remote: "stream",
			Payload: &sielink.Payload{Channel: m.Channel, PayloadType: sielink.PayloadNmsgContainer, Data: m.Data}})
	}
}

// udpFeed sends each container's payloads as NMSG/UDP datagrams. UDP loses what it loses (the
// sender counts refused and failed datagrams); only a cancelled ctx fails it.
func udpFeed(s *nmsgudp.Sender) func(context.Context, *streamMsg) (uint64, error) {
	return func(ctx context.Context, m *streamMsg) (uint64, error) {
		bad := s.Stats.BadInput.Load()
		err := s.SendContainers(ctx, m.Data)
		return s.Stats.BadInput.Load() - bad, err
	}
}

// jsonFeed appends one nmsgtool -J line per base:dnsqr record to w, a container's lines in one
// write (a failed write is retried whole; a crash in between may repeat a container's lines).
func jsonFeed(w io.Writer) func(context.Context, *streamMsg) (uint64, error) {
	var line []byte
	return func(_ context.Context, m *streamMsg) (uint64, error) {
		line = line[:0]
		var skipped uint64
		rd := nmsg.NewReader(bytes.NewReader(m.Data), nmsg.ReaderOptions{})
		for {
			p, err := rd.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				skipped++
				break
			}
			if p.Vid != dnsqr.VendorBase || p.Msgtype != dnsqr.MsgtypeDnsQR {
				skipped++
				continue
			}
			r, err := dnsqr.Parse(p.Data)
			if err != nil {
				skipped++
				continue
			}
			line = dnsqr.AppendJSON(line, dnsqr.PayloadInfo{Time: p.TimeSec*1e9 + int64(p.TimeNsec),
				Source: p.Source, HasSource: p.HasSource}, r)
			line = append(line, '\n')
		}
		if len(line) == 0 {
			return skipped, nil
		}
		_, err := w.Write(line)
		return skipped, err
	}
}

// newFanOut opens fan-out n's feed.
func newFanOut(n int, f FanOut, stream jetstream.Stream, logf sielink.Logf) (*streamConsumer, error) {
	c := &streamConsumer{stream: stream, durable: f.Durable, logf: logf}
	if c.durable == "" {
		c.durable = "fanout-" + strconv.Itoa(n)
	}
	switch {
	case f.UDP != "" && f.JSONFile == "":
		s, err := nmsgudp.New(nmsgudp.Config{Addr: f.UDP, MTU: f.MTU})
		if err != nil {
			return nil, fmt.Errorf("fan-out %s: NMSG/UDP to %s: %w", c.durable, f.UDP, err)
		}
		c.st.Kind, c.feed, c.close, c.desc = "udp", udpFeed(s), s.Close, "NMSG/UDP to "+f.UDP
	case f.JSONFile != "" && f.UDP == "":
		// The records name resolvers and servers, not end users (scrubbed on the sensor), but
		// they are the SOC's data: not world-readable.
		fh, err := os.OpenFile(f.JSONFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("fan-out %s: %w", c.durable, err)
		}
		c.st.Kind, c.feed, c.close, c.desc = "json", jsonFeed(fh), fh.Close, "JSON lines to "+f.JSONFile
	default:
		return nil, fmt.Errorf("fan-out %s: set exactly one of a UDP address and a JSON file", c.durable)
	}
	c.st.Durable = c.durable
	return c, nil
}
