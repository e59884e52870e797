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
	Handled     uint64 `json:"handled"`     // containers handed on and acknowledged
	Redelivered uint64 `json:"redelivered"` // of them, deliveries after the first (handed on again: at least once)
	StreamSeq   uint64 `json:"stream_seq"`  // stream sequence of the last one handed on
	Pending     uint64 `json:"pending"`     // messages in the stream not yet delivered to the consumer
	Errors      uint64 `json:"errors"`      // hand-overs that failed and were retried
	Skipped     uint64 `json:"skipped"`     // payloads the feed cannot render (not base:dnsqr, undecodable), or messages on a foreign subject
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

// streamConsumer hands every container of the stream to a feed, at least once: a message is
// acknowledged after the feed took it, a feed that fails is offered the same message again every
// second (its acknowledgement deadline extended, nothing after it handed on meanwhile), and a
// restart resumes at the consumer's acknowledged floor, handing on again what was handed on but
// not acknowledged.
type streamConsumer struct {
	stream  jetstream.Stream
	durable string
	desc    string
	// feed hands m on; skipped counts its payloads the feed cannot render.
	feed  func(ctx context.Context, m *streamMsg) (skipped uint64, err error)
	close func() error
	logf  sielink.Logf

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

// feedRetry is how often a failing feed is offered its message again.
const feedRetry = time.Second

func (c *streamConsumer) run(ctx context.Context) {
	cfg := jetstream.ConsumerConfig{
		Durable: c.durable, AckPolicy: jetstream.AckExplicitPolicy, AckWait: consumerAckWait,
		DeliverPolicy: jetstream.DeliverAllPolicy, MaxAckPending: 1024,
		FilterSubject: subjectPrefix + ">", Description: c.desc,
	}
	for ctx.Err() == nil {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cons, err := c.stream.CreateOrUpdateConsumer(cctx, cfg)
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

func (c *streamConsumer) consume(ctx context.Context, cons jetstream.Consumer) error {
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
	c.update(func(s *ConsumerStats) { s.Pending = meta.NumPending })
	ch, sensor, ok := subjectChannel(msg.Subject())
	if !ok {
		c.update(func(s *ConsumerStats) { s.Skipped++ })
		return msg.Ack()
	}
	m := &streamMsg{Seq: meta.Sequence.Stream, Sensor: sensor, Channel: ch, Data: msg.Data()}
	var t *time.Timer
	for {
		skipped, err := c.feed(ctx, m)
		if err == nil {
			c.update(func(s *ConsumerStats) {
				s.Handled++
				s.Skipped += skipped
				s.StreamSeq, s.LastError = m.Seq, ""
				if meta.NumDelivered > 1 {
					s.Redelivered++
				}
			})
			return msg.Ack()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		c.update(func(s *ConsumerStats) { s.Errors++; s.LastError = err.Error() })
		msg.InProgress()
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
