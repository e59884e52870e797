package sielink

import (
	"bytes"
	"encoding/hex"
	"errors"
	"math"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

func f64(v float64) *float64 { return &v }

func sampleReports() map[string]*HealthReport {
	return map[string]*HealthReport{
		"empty": {},
		"green": {TimeUnixMs: 1767323400123, Sensor: "site1-sensor1", Version: "b1946ac92492d2347c6235b4d2611184",
			UptimeSeconds: 86400, OK: true, RecordsPerSecond: f64(20123.5), DeliveredPerSecond: f64(0),
			Loss: &ReportLoss{}},
		"red": {TimeUnixMs: 1, Sensor: "s", Version: "devel", UptimeSeconds: 5,
			FirstFailure: &FailedCheck{Daemon: "sensord", Path: []string{"capture", "port eth1", "frames on eth1"},
				Detail: "1520 frames, none in the last 5m0s", Fix: "check the tap's cable", SinceUnixMs: 1767323000000},
			RecordsPerSecond: f64(0.25), Loss: &ReportLoss{Records: 2731, Segments: 11, Bytes: 1 << 33}, FailingChecks: 3},
	}
}

func TestReportRoundTrip(t *testing.T) {
	for name, r := range sampleReports() {
		var got HealthReport
		if err := DecodeHealthReport(AppendHealthReport(nil, r), &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(r, &got); diff != "" {
			t.Errorf("%s: round trip (-want +got):\n%s", name, diff)
		}
	}
}

// TestReportAgainstProtobufRuntime: the official runtime, given the schema in report.go's
// comment, decodes our encoding and encodes the same octets; we decode its output.
func TestReportAgainstProtobufRuntime(t *testing.T) {
	b, err := os.ReadFile("testdata/healthreport.desc.textproto")
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
	md := fd.Messages().ByName("HealthReport")
	for name, r := range sampleReports() {
		ours := AppendHealthReport(nil, r)
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
		var got HealthReport
		if err := DecodeHealthReport(theirs, &got); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(r, &got); diff != "" {
			t.Errorf("%s: (-want +got):\n%s", name, diff)
		}
	}
}

func TestReportDecodeHostile(t *testing.T) {
	nan := AppendHealthReport(nil, &HealthReport{RecordsPerSecond: f64(math.NaN())})
	neg := AppendHealthReport(nil, &HealthReport{DeliveredPerSecond: f64(-1)})
	inf := AppendHealthReport(nil, &HealthReport{RecordsPerSecond: f64(math.Inf(1))})
	long := &HealthReport{FirstFailure: &FailedCheck{Path: make([]string, maxReportPath+1)}}
	for i := range long.FirstFailure.Path {
		long.FirstFailure.Path[i] = "x"
	}
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"truncated varint", []byte{0x08, 0x80}},
		{"sensor as varint", []byte{0x10, 0x01}},
		{"ok as bytes", []byte{0x2a, 0x00}},
		{"rate as varint", []byte{0x38, 0x01}},
		{"failure past end", []byte{0x32, 0x05, 0x0a}},
		{"loss records as bytes", []byte{0x4a, 0x02, 0x0a, 0x00}},
		{"NaN rate", nan},
		{"negative rate", neg},
		{"infinite rate", inf},
		{"path of 17 checks", AppendHealthReport(nil, long)},
	} {
		var r HealthReport
		if err := DecodeHealthReport(tc.in, &r); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: got %v, want ErrMalformed", tc.name, err)
		}
	}
	// Strings are cut and made valid UTF-8; unknown fields are skipped.
	in := AppendHealthReport(nil, &HealthReport{Sensor: strings.Repeat("é", 2000), Version: "a\xffb"})
	in = append(in, 0x78, 0x05, 0x82, 0x01, 0x01, 0xff)
	var r HealthReport
	if err := DecodeHealthReport(in, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Sensor) > maxReportString || !strings.HasPrefix(r.Sensor, "éé") || r.Version != "a\uFFFDb" {
		t.Errorf("sensor %d octets, version %q", len(r.Sensor), r.Version)
	}
}

// TestReportGolden pins the encoding of a small report.
func TestReportGolden(t *testing.T) {
	r := &HealthReport{Sensor: "s", OK: true, Loss: &ReportLoss{Records: 5}}
	if got, want := hex.EncodeToString(AppendHealthReport(nil, r)), "1201"+"73"+"2801"+"4a02"+"0805"; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

func FuzzDecodeHealthReport(f *testing.F) {
	for _, r := range sampleReports() {
		f.Add(AppendHealthReport(nil, r))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r HealthReport
		if err := DecodeHealthReport(b, &r); err != nil {
			return
		}
		var r2 HealthReport
		if err := DecodeHealthReport(AppendHealthReport(nil, &r), &r2); err != nil {
			t.Fatalf("re-encoding of a decoded report does not decode: %v", err)
		}
		if diff := cmp.Diff(&r, &r2); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}

type reportSink struct {
	mu  sync.Mutex
	got map[string][]HealthReport
}

func (s *reportSink) Report(sensor string, r *HealthReport) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got[sensor] = append(s.got[sensor], *r)
}

func (s *reportSink) reports(sensor string) []HealthReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]HealthReport(nil), s.got[sensor]...)
}

// TestReportDelivered: a report reaches the server's Reports under the session's authenticated
// name (not the name inside the report), never the Handler, and is not data: the client's
// payload accounting and the server's payload counters do not see it; a report that does not
// decode is counted as invalid and the session goes on.
func TestReportDelivered(t *testing.T) {
	testenv.CheckLeaks(t)
	sink := &reportSink{got: map[string][]HealthReport{}}
	e := newEnv(t, func(s *Server) { s.Reports = sink })
	ctx := ctxT(t, 30*time.Second)
	conn, err := Dial(ctx, e.config("s1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	want := sampleReports()["red"]
	want.Sensor = "s2" // what the sensor claims; the session says s1
	if err := conn.SendReport(ctx, want); err != nil {
		t.Fatal(err)
	}
	// A log record that is no report.
	bad := Message{ProtocolVersion: versionList, Type: TypeData, Payload: &Payload{Channel: 202, PayloadType: PayloadLogRecord, Data: []byte{0x10, 0x01}}}
	conn.sendMu.Lock()
	err = writeMessage(ctx, conn.ws, &conn.sendBuf, &bad)
	conn.sendMu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got := sink.reports("s1")
	if len(got) != 1 {
		t.Fatalf("got %d reports for s1, want 1 (%v)", len(got), sink.got)
	}
	if diff := cmp.Diff(want, &got[0]); diff != "" {
		t.Errorf("report (-sent +received):\n%s", diff)
	}
	if n := len(e.received("s1")); n != 0 {
		t.Errorf("the Handler received %d payloads, want none", n)
	}
	st := e.srv.Sensors()
	if len(st) != 1 || st[0].Reports != 1 || st[0].Payloads != 0 || st[0].Invalid != 1 {
		t.Errorf("sensor stats %+v, want 1 report, 0 payloads, 1 invalid", st)
	}
	if cs := conn.Stats(); cs.ReportsSent != 1 || cs.PayloadsSent != 0 {
		t.Errorf("client stats %+v, want 1 report and no payload sent", cs)
	}
	if u := conn.Unconfirmed(); !u.IsZero() {
		t.Errorf("unconfirmed %+v", u)
	}
}
