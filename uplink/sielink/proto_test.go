package sielink

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// sampleMessages covers every field with non-zero values (the encoder
// omits zero optional fields, as a Go proto2 sender with unset fields
// does).
func sampleMessages() map[string]*Message {
	v := []uint32{ProtocolVersion}
	return map[string]*Message{
		"data": {ProtocolVersion: v, Type: TypeData, Payload: &Payload{
			Channel: 202, PayloadType: PayloadNmsgContainer, CompressionType: CompressionDeflate,
			Data:     []byte("NMSG\x00\x02\x00\x00\x00\x00"),
			LinkLoss: &LossCounter{Bytes: 1 << 40, Payloads: 3}, PathLoss: &LossCounter{Bytes: 7, Payloads: 1},
			SourceSite: 42, SourceContributor: 0x19721976,
		}},
		"topology": {ProtocolVersion: v, Type: TypeTopology, Heartbeat: 30000, Topology: &Topology{
			Path:         []Path{{Metric: 10, Site: []uint32{1, 2, 3}}, {Metric: 1 << 33}},
			Subscription: []Subscription{{SourceSite: 5, Channel: []uint32{202, 203}}, {Channel: []uint32{1}}},
		}},
		"alert":     {ProtocolVersion: v, Type: TypeAlert, Alert: &Alert{Level: AlertFatalError, Message: "go away", Code: 17}},
		"heartbeat": {ProtocolVersion: v, Type: TypeHeartbeat, Heartbeat: 1500},
		"shutdown":  {ProtocolVersion: v, Type: TypeShutdown},
		"finished":  {ProtocolVersion: []uint32{1, 2}, Type: TypeFinished},
	}
}

func TestRoundTrip(t *testing.T) {
	for name, m := range sampleMessages() {
		b := AppendMessage(nil, m)
		if len(b) != MessageSize(m) {
			t.Errorf("%s: MessageSize %d, encoded %d octets", name, MessageSize(m), len(b))
		}
		var got Message
		if err := DecodeMessage(b, &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(m, &got); diff != "" {
			t.Errorf("%s: round trip (-want +got):\n%s", name, diff)
		}
	}
}

// TestGolden pins the encoding of the messages a sensor sends most.
func TestGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		m    *Message
		want string
	}{
		// version 1, type Heartbeat, heartbeat 30000 ms
		{"heartbeat", &Message{ProtocolVersion: []uint32{1}, Type: TypeHeartbeat, Heartbeat: 30000},
			"0801" + "1003" + "28b0ea01"},
		// version 1, type Data, payload{channel 202, NmsgContainer, data "NMSG…", linkLoss{bytes 5, payloads 1}}
		{"data", &Message{ProtocolVersion: []uint32{1}, Type: TypeData, Payload: &Payload{
			Channel: 202, PayloadType: PayloadNmsgContainer, Data: []byte("NMSG\x00\x02\x00\x00\x00\x00"),
			LinkLoss: &LossCounter{Bytes: 5, Payloads: 1}}},
			"0801" + "1000" + "1a17" + "08ca01" + "1001" + "220a" + hex.EncodeToString([]byte("NMSG\x00\x02\x00\x00\x00\x00")) + "2a04" + "0805" + "1001"},
		// the client's first message: version 1, Topology{}, heartbeat 30000
		{"topology", &Message{ProtocolVersion: []uint32{1}, Type: TypeTopology, Topology: &Topology{}, Heartbeat: 30000},
			"0801" + "1001" + "2200" + "28b0ea01"},
		{"fatal", fatalAlert("x"), "0801" + "1002" + "3205" + "0803" + "1201" + "78"},
	} {
		got := hex.EncodeToString(AppendMessage(nil, tc.m))
		if got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

// TestAgainstProtobufRuntime encodes the samples with the official
// runtime (from a descriptor transcribed from sielink.proto) and
// compares bytes, then decodes the runtime's output with ours.
func TestAgainstProtobufRuntime(t *testing.T) {
	desc := loadDescriptor(t)
	md := desc.Messages().ByName("Message")
	for name, m := range sampleMessages() {
		ours := AppendMessage(nil, m)
		dm := dynamicpb.NewMessage(md)
		if err := proto.Unmarshal(ours, dm); err != nil {
			t.Fatalf("%s: runtime cannot decode our encoding: %v", name, err)
		}
		theirs, err := proto.MarshalOptions{Deterministic: true}.Marshal(dm)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ours, theirs) {
			t.Errorf("%s: encodings differ\nours   %x\ntheirs %x\n%v", name, ours, theirs, prototext.Format(dm))
		}
		var got Message
		if err := DecodeMessage(theirs, &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(m, &got); diff != "" {
			t.Errorf("%s: (-want +got):\n%s", name, diff)
		}
	}
	// Packed repeated fields are valid proto2 input too.
	packed := []byte{0x0a, 0x02, 0x01, 0x02, 0x10, 0x03}
	var got Message
	if err := DecodeMessage(packed, &got); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uint32{1, 2}, got.ProtocolVersion); diff != "" {
		t.Errorf("packed versions: %s", diff)
	}
}

func loadDescriptor(t testing.TB) protoreflect.FileDescriptor {
	b, err := os.ReadFile("testdata/sielink.desc.textproto")
	if err != nil {
		t.Fatal(err)
	}
	var fdp descriptorpb.FileDescriptorProto
	if err := prototext.Unmarshal(b, &fdp); err != nil {
		t.Fatal(err)
	}
	fd, err := protodesc.NewFile(&fdp, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

func TestDecodeMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string // hex
	}{
		{"empty (no messageType)", ""},
		{"truncated tag", "08"},
		{"truncated varint", "1080"},
		{"type as bytes", "1200"},
		{"payload length past end", "10001a05"},
		{"payload without channel", "10001a00"},
		{"channel as bytes", "10001a02" + "0a00"},
		{"alert without level", "10023200"},
		{"path without metric", "1001" + "2202" + "0a00"},
		{"loss counter garbage", "10001a05" + "0801" + "2a01" + "08"},
		{"too many versions", "0a11" + "0101010101010101010101010101010101" + "1003"},
		{"group tag", "1003" + "0b"},
	} {
		b, err := hex.DecodeString(tc.in)
		if err != nil {
			t.Fatal(err)
		}
		var m Message
		if err := DecodeMessage(b, &m); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", tc.name, err)
		}
	}
	// Unknown fields are skipped (forward compatibility).
	var m Message
	if err := DecodeMessage([]byte{0x10, 0x03, 0x78, 0x05, 0x82, 0x01, 0x01, 0xff, 0x85, 0x01, 1, 2, 3, 4}, &m); err != nil || m.Type != TypeHeartbeat {
		t.Errorf("unknown fields: %v %+v", err, m)
	}
}

func FuzzDecode(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(AppendMessage(nil, m))
	}
	f.Add([]byte{0x0a, 0x02, 0x01, 0x02, 0x10, 0x03})
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Message
		if err := DecodeMessage(b, &m); err != nil {
			return
		}
		// What decodes must survive a round trip unchanged, except that
		// empty loss counters and empty Data stay present.
		again := AppendMessage(nil, &m)
		var m2 Message
		if err := DecodeMessage(again, &m2); err != nil {
			t.Fatalf("re-encoding of a decoded message does not decode: %v", err)
		}
		if diff := cmp.Diff(&m, &m2, cmp.Comparer(func(a, b []byte) bool { return bytes.Equal(a, b) })); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}
