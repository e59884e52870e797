package sielink

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// ProtocolVersion is the only sielink protocol version there is.
const ProtocolVersion = 1

// MessageType says which of Message's fields are expected.
type MessageType uint32

const (
	TypeData      MessageType = 0
	TypeTopology  MessageType = 1
	TypeAlert     MessageType = 2
	TypeHeartbeat MessageType = 3
	TypeShutdown  MessageType = 4
	TypeFinished  MessageType = 5
)

var typeNames = [...]string{"Data", "Topology", "Alert", "Heartbeat", "Shutdown", "Finished"}

func (t MessageType) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("MessageType(%d)", uint32(t))
}

// PayloadType says what Payload.Data holds.
type PayloadType uint32

const (
	PayloadNmsgContainer    PayloadType = 1
	PayloadLogRecord        PayloadType = 2
	PayloadAccountingRecord PayloadType = 3
)

// CompressionType is the transport compression of Payload.Data. The
// sensor never sets it: NMSG containers carry their own zlib flag.
type CompressionType uint32

const (
	CompressionNone    CompressionType = 0
	CompressionGzip    CompressionType = 1
	CompressionDeflate CompressionType = 2
	CompressionLZ4     CompressionType = 3
)

// AlertLevel grades an Alert; only FatalError changes the protocol's
// course (the receiver closes the connection).
type AlertLevel uint32

const (
	AlertInformational    AlertLevel = 0
	AlertWarning          AlertLevel = 1
	AlertRecoverableError AlertLevel = 2
	AlertFatalError       AlertLevel = 3
)

var levelNames = [...]string{"Informational", "Warning", "RecoverableError", "FatalError"}

func (l AlertLevel) String() string {
	if int(l) < len(levelNames) {
		return levelNames[l]
	}
	return fmt.Sprintf("AlertLevel(%d)", uint32(l))
}

// Message is sielink.Message. Pointer fields are absent when nil;
// Heartbeat (milliseconds) is absent when zero, which is also what the
// reference implementation means by zero.
type Message struct {
	ProtocolVersion []uint32
	Type            MessageType
	Payload         *Payload
	Topology        *Topology
	Heartbeat       uint32
	Alert           *Alert
}

// Payload is sielink.Payload. Decoded, Data aliases the buffer it was
// decoded from.
type Payload struct {
	Channel           uint32
	PayloadType       PayloadType
	CompressionType   CompressionType
	Data              []byte
	LinkLoss          *LossCounter
	PathLoss          *LossCounter
	SourceSite        uint32
	SourceContributor uint32
}

// LossCounter is sielink.LossCounter: what was dropped before this
// payload, on the last link (LinkLoss) or the whole path (PathLoss).
type LossCounter struct {
	Bytes    uint64
	Payloads uint64
}

// IsZero reports whether nothing was lost.
func (l LossCounter) IsZero() bool { return l == LossCounter{} }

// Topology is sielink.Topology, the first message each side sends.
type Topology struct {
	Path         []Path
	Subscription []Subscription
}

// Path is sielink.Path.
type Path struct {
	Metric uint64
	Site   []uint32
}

// Subscription is sielink.Subscription.
type Subscription struct {
	SourceSite uint32
	Channel    []uint32
}

// Alert is sielink.Alert. It is an error so that a FatalError received
// from the peer can be returned as the reason a connection ended.
type Alert struct {
	Level   AlertLevel
	Message string
	Code    uint32
}

func (a *Alert) Error() string {
	// %q: the text comes from the peer and ends up in logs.
	return fmt.Sprintf("sielink: peer reported %s: %q (code %d)", a.Level, a.Message, a.Code)
}

// Field numbers (sielink.proto).
const (
	fMsgVersion   = 1
	fMsgType      = 2
	fMsgPayload   = 3
	fMsgTopology  = 4
	fMsgHeartbeat = 5
	fMsgAlert     = 6

	fPayChannel     = 1
	fPayType        = 2
	fPayCompression = 3
	fPayData        = 4
	fPayLinkLoss    = 5
	fPayPathLoss    = 6
	fPaySite        = 7
	fPayContributor = 8
)

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("sielink: malformed message")

func malformed(what string) error { return fmt.Errorf("%w: %s", ErrMalformed, what) }

// AppendMessage appends the encoding of m to b. Fields are written in
// number order, repeated scalars unpacked, as the reference (proto2,
// golang/protobuf) does.
func AppendMessage(b []byte, m *Message) []byte {
	for _, v := range m.ProtocolVersion {
		b = protowire.AppendTag(b, fMsgVersion, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(v))
	}
	b = protowire.AppendTag(b, fMsgType, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(m.Type))
	if p := m.Payload; p != nil {
		b = protowire.AppendTag(b, fMsgPayload, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(payloadSize(p)))
		b = appendPayload(b, p)
	}
	if t := m.Topology; t != nil {
		b = protowire.AppendTag(b, fMsgTopology, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(topologySize(t)))
		b = appendTopology(b, t)
	}
	if m.Heartbeat != 0 {
		b = protowire.AppendTag(b, fMsgHeartbeat, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(m.Heartbeat))
	}
	if a := m.Alert; a != nil {
		b = protowire.AppendTag(b, fMsgAlert, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(alertSize(a)))
		b = appendAlert(b, a)
	}
	return b
}

// MessageSize returns len(AppendMessage(nil, m)).
func MessageSize(m *Message) int {
	n := 0
	for _, v := range m.ProtocolVersion {
		n += 1 + protowire.SizeVarint(uint64(v))
	}
	n += 1 + protowire.SizeVarint(uint64(m.Type))
	if m.Payload != nil {
		n += 1 + protowire.SizeBytes(payloadSize(m.Payload))
	}
	if m.Topology != nil {
		n += 1 + protowire.SizeBytes(topologySize(m.Topology))
	}
	if m.Heartbeat != 0 {
		n += 1 + protowire.SizeVarint(uint64(m.Heartbeat))
	}
	if m.Alert != nil {
		n += 1 + protowire.SizeBytes(alertSize(m.Alert))
	}
	return n
}

func lossSize(l *LossCounter) int {
	n := 0
	if l.Bytes != 0 {
		n += 1 + protowire.SizeVarint(l.Bytes)
	}
	if l.Payloads != 0 {
		n += 1 + protowire.SizeVarint(l.Payloads)
	}
	return n
}

func appendLoss(b []byte, l *LossCounter) []byte {
	if l.Bytes != 0 {
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, l.Bytes)
	}
	if l.Payloads != 0 {
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		b = protowire.AppendVarint(b, l.Payloads)
	}
	return b
}

func payloadSize(p *Payload) int {
	n := 1 + protowire.SizeVarint(uint64(p.Channel))
	if p.PayloadType != 0 {
		n += 1 + protowire.SizeVarint(uint64(p.PayloadType))
	}
	if p.CompressionType != 0 {
		n += 1 + protowire.SizeVarint(uint64(p.CompressionType))
	}
	if p.Data != nil {
		n += 1 + protowire.SizeBytes(len(p.Data))
	}
	if p.LinkLoss != nil {
		n += 1 + protowire.SizeBytes(lossSize(p.LinkLoss))
	}
	if p.PathLoss != nil {
		n += 1 + protowire.SizeBytes(lossSize(p.PathLoss))
	}
	if p.SourceSite != 0 {
		n += 1 + protowire.SizeVarint(uint64(p.SourceSite))
	}
	if p.SourceContributor != 0 {
		n += 1 + protowire.SizeVarint(uint64(p.SourceContributor))
	}
	return n
}

func appendPayload(b []byte, p *Payload) []byte {
	b = protowire.AppendTag(b, fPayChannel, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(p.Channel))
	if p.PayloadType != 0 {
		b = protowire.AppendTag(b, fPayType, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(p.PayloadType))
	}
	if p.CompressionType != 0 {
		b = protowire.AppendTag(b, fPayCompression, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(p.CompressionType))
	}
	if p.Data != nil {
		b = protowire.AppendTag(b, fPayData, protowire.BytesType)
		b = protowire.AppendBytes(b, p.Data)
	}
	if l := p.LinkLoss; l != nil {
		b = protowire.AppendTag(b, fPayLinkLoss, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(lossSize(l)))
		b = appendLoss(b, l)
	}
	if l := p.PathLoss; l != nil {
		b = protowire.AppendTag(b, fPayPathLoss, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(lossSize(l)))
		b = appendLoss(b, l)
	}
	if p.SourceSite != 0 {
		b = protowire.AppendTag(b, fPaySite, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(p.SourceSite))
	}
	if p.SourceContributor != 0 {
		b = protowire.AppendTag(b, fPayContributor, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(p.SourceContributor))
	}
	return b
}

func pathSize(p *Path) int {
	n := 1 + protowire.SizeVarint(p.Metric)
	for _, s := range p.Site {
		n += 1 + protowire.SizeVarint(uint64(s))
	}
	return n
}

func subSize(s *Subscription) int {
	n := 0
	if s.SourceSite != 0 {
		n += 1 + protowire.SizeVarint(uint64(s.SourceSite))
	}
	for _, c := range s.Channel {
		n += 1 + protowire.SizeVarint(uint64(c))
	}
	return n
}

func topologySize(t *Topology) int {
	n := 0
	for i := range t.Path {
		n += 1 + protowire.SizeBytes(pathSize(&t.Path[i]))
	}
	for i := range t.Subscription {
		n += 1 + protowire.SizeBytes(subSize(&t.Subscription[i]))
	}
	return n
}

func appendTopology(b []byte, t *Topology) []byte {
	for i := range t.Path {
		p := &t.Path[i]
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(pathSize(p)))
		b = protowire.AppendTag(b, 1, protowire.VarintType)
		b = protowire.AppendVarint(b, p.Metric)
		for _, s := range p.Site {
			b = protowire.AppendTag(b, 2, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(s))
		}
	}
	for i := range t.Subscription {
		s := &t.Subscription[i]
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(subSize(s)))
		if s.SourceSite != 0 {
			b = protowire.AppendTag(b, 1, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(s.SourceSite))
		}
		for _, c := range s.Channel {
			b = protowire.AppendTag(b, 2, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(c))
		}
	}
	return b
}

func alertSize(a *Alert) int {
	n := 1 + protowire.SizeVarint(uint64(a.Level))
	if a.Message != "" {
		n += 1 + protowire.SizeBytes(len(a.Message))
	}
	if a.Code != 0 {
		n += 1 + protowire.SizeVarint(uint64(a.Code))
	}
	return n
}

func appendAlert(b []byte, a *Alert) []byte {
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(a.Level))
	if a.Message != "" {
		b = protowire.AppendTag(b, 2, protowire.BytesType)
		b = protowire.AppendString(b, a.Message)
	}
	if a.Code != 0 {
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(a.Code))
	}
	return b
}

// Decoding limits. A Topology from a hostile peer could otherwise make
// us allocate one slice element per two octets of a 2 MiB message.
const (
	maxVersions   = 16
	maxPaths      = 1024
	maxSites      = 1024
	maxChannels   = 1024
	maxAlertBytes = 4096
)

// field is one decoded protobuf field: val for varints, data for
// length-delimited fields (aliasing the input).
type field struct {
	num  protowire.Number
	typ  protowire.Type
	val  uint64
	data []byte
}

// next consumes one field. Groups and 32-bit fields are skipped over
// as values the schema does not use (a 64-bit one's value is in val:
// HealthReport's doubles); the caller rejects them where
// a known field has the wrong wire type.
func next(b []byte) (f field, rest []byte, err error) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return f, nil, malformed("bad tag")
	}
	b = b[n:]
	f.num, f.typ = num, typ
	switch typ {
	case protowire.VarintType:
		f.val, n = protowire.ConsumeVarint(b)
	case protowire.BytesType:
		f.data, n = protowire.ConsumeBytes(b)
	case protowire.Fixed64Type:
		f.val, n = protowire.ConsumeFixed64(b)
	default:
		n = protowire.ConsumeFieldValue(num, typ, b)
	}
	if n < 0 {
		return f, nil, malformed(fmt.Sprintf("field %d", num))
	}
	return f, b[n:], nil
}

// want checks a known field's wire type.
func (f *field) want(t protowire.Type) error {
	if f.typ != t {
		return malformed(fmt.Sprintf("field %d has wire type %d", f.num, f.typ))
	}
	return nil
}

// appendU32s appends a repeated uint32 in either the unpacked or the
// packed form (proto2 parsers must accept both), up to max elements.
func appendU32s(dst []uint32, f *field, max int, what string) ([]uint32, error) {
	switch f.typ {
	case protowire.VarintType:
		if len(dst) >= max {
			return dst, malformed("too many " + what)
		}
		return append(dst, uint32(f.val)), nil
	case protowire.BytesType:
		d := f.data
		for len(d) > 0 {
			v, n := protowire.ConsumeVarint(d)
			if n < 0 {
				return dst, malformed("packed " + what)
			}
			if len(dst) >= max {
				return dst, malformed("too many " + what)
			}
			dst = append(dst, uint32(v))
			d = d[n:]
		}
		return dst, nil
	}
	return dst, malformed(what + " wire type")
}

// DecodeMessage decodes b into m, overwriting it. Payload.Data aliases
// b. Unknown fields are skipped (proto2 forward compatibility); a
// missing required field (messageType, Payload.channel, Alert.level,
// Path.metric) or a known field with the wrong wire type is an error
// wrapping ErrMalformed. An embedded message that occurs twice replaces
// the first rather than merging into it, which no conforming sender
// produces.
func DecodeMessage(b []byte, m *Message) error {
	versions := m.ProtocolVersion[:0]
	*m = Message{}
	var haveType bool
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case fMsgVersion:
			if versions, err = appendU32s(versions, &f, maxVersions, "protocol versions"); err != nil {
				return err
			}
		case fMsgType:
			if err := f.want(protowire.VarintType); err != nil {
				return err
			}
			m.Type, haveType = MessageType(uint32(f.val)), true
		case fMsgPayload:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			m.Payload = new(Payload)
			if err := decodePayload(f.data, m.Payload); err != nil {
				return err
			}
		case fMsgTopology:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			m.Topology = new(Topology)
			if err := decodeTopology(f.data, m.Topology); err != nil {
				return err
			}
		case fMsgHeartbeat:
			if err := f.want(protowire.VarintType); err != nil {
				return err
			}
			m.Heartbeat = uint32(f.val)
		case fMsgAlert:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			m.Alert = new(Alert)
			if err := decodeAlert(f.data, m.Alert); err != nil {
				return err
			}
		}
	}
	m.ProtocolVersion = versions
	if !haveType {
		return malformed("no messageType")
	}
	return nil
}

func decodeLoss(b []byte) (*LossCounter, error) {
	l := new(LossCounter)
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return nil, err
		}
		b = rest
		switch f.num {
		case 1, 2:
			if err := f.want(protowire.VarintType); err != nil {
				return nil, err
			}
			if f.num == 1 {
				l.Bytes = f.val
			} else {
				l.Payloads = f.val
			}
		}
	}
	return l, nil
}

func decodePayload(b []byte, p *Payload) error {
	var haveChannel bool
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case fPayChannel, fPayType, fPayCompression, fPaySite, fPayContributor:
			if err := f.want(protowire.VarintType); err != nil {
				return err
			}
		case fPayData, fPayLinkLoss, fPayPathLoss:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
		}
		switch f.num {
		case fPayChannel:
			p.Channel, haveChannel = uint32(f.val), true
		case fPayType:
			p.PayloadType = PayloadType(uint32(f.val))
		case fPayCompression:
			p.CompressionType = CompressionType(uint32(f.val))
		case fPayData:
			p.Data = f.data
		case fPayLinkLoss:
			if p.LinkLoss, err = decodeLoss(f.data); err != nil {
				return err
			}
		case fPayPathLoss:
			if p.PathLoss, err = decodeLoss(f.data); err != nil {
				return err
			}
		case fPaySite:
			p.SourceSite = uint32(f.val)
		case fPayContributor:
			p.SourceContributor = uint32(f.val)
		}
	}
	if !haveChannel {
		return malformed("payload without channel")
	}
	return nil
}

func decodeTopology(b []byte, t *Topology) error {
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case 1:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			if len(t.Path) >= maxPaths {
				return malformed("too many paths")
			}
			var p Path
			if err := decodePath(f.data, &p); err != nil {
				return err
			}
			t.Path = append(t.Path, p)
		case 2:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			if len(t.Subscription) >= maxPaths {
				return malformed("too many subscriptions")
			}
			var s Subscription
			if err := decodeSub(f.data, &s); err != nil {
				return err
			}
			t.Subscription = append(t.Subscription, s)
		}
	}
	return nil
}

func decodePath(b []byte, p *Path) error {
	var haveMetric bool
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case 1:
			if err := f.want(protowire.VarintType); err != nil {
				return err
			}
			p.Metric, haveMetric = f.val, true
		case 2:
			if p.Site, err = appendU32s(p.Site, &f, maxSites, "sites"); err != nil {
				return err
			}
		}
	}
	if !haveMetric {
		return malformed("path without metric")
	}
	return nil
}

func decodeSub(b []byte, s *Subscription) error {
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case 1:
			if err := f.want(protowire.VarintType); err != nil {
				return err
			}
			s.SourceSite = uint32(f.val)
		case 2:
			if s.Channel, err = appendU32s(s.Channel, &f, maxChannels, "channels"); err != nil {
				return err
			}
		}
	}
	return nil
}

func decodeAlert(b []byte, a *Alert) error {
	var haveLevel bool
	for len(b) > 0 {
		f, rest, err := next(b)
		if err != nil {
			return err
		}
		b = rest
		switch f.num {
		case 1:
			if err := f.want(protowire.VarintType); err != nil {
				return err
			}
			a.Level, haveLevel = AlertLevel(uint32(f.val)), true
		case 2:
			if err := f.want(protowire.BytesType); err != nil {
				return err
			}
			msg := f.data
			if len(msg) > maxAlertBytes {
				msg = msg[:maxAlertBytes]
			}
			a.Message = string(msg)
		case 3:
			if err := f.want(protowire.VarintType); err != nil {
				return err
			}
			a.Code = uint32(f.val)
		}
	}
	if !haveLevel {
		return malformed("alert without level")
	}
	return nil
}
