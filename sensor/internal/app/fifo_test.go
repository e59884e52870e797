//go:build linux

package app

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sie-europe/dnssensor/sensor/internal/conformance"
)

// TestFIFOInputStopsOnSIGTERM: sensord -r on a FIFO whose writer stays open stops when its
// context ends (SIGTERM), flushes every pending query and returns without error; it used to
// wait for the end of the input.
func TestFIFOInputStopsOnSIGTERM(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(conformance.Dir(t), "nmsg/nmsg-dnsqr-tests/test1-dnsqr.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	fifo := filepath.Join(dir, "in.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out.json")
	o, err := ParseFlags([]string{"-r", fifo, "-resolver", "203.0.113.195", "-rd", "any", "-J", out}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() { done <- Run(ctx, o, io.Discard, &stderr) }()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	// Wait until sensord has taken every byte out of the pipe (TIOCINQ is FIONREAD); its reader then handles them
	// all before it reads again.
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, err := unix.IoctlGetInt(int(w.Fd()), unix.TIOCINQ)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d octets still in the pipe after 30 s", n)
		}
		time.Sleep(time.Millisecond)
	}
	cancel() // SIGTERM; the writer stays open
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("sensord still reading the FIFO 30 s after SIGTERM")
	}
	got, _ := os.ReadFile(out)
	// 10 packets: 5 pairs.
	if n := strings.Count(string(got), "\n"); n != 5 {
		t.Errorf("%d records written, want 5; stderr: %s", n, stderr.String())
	}
}
