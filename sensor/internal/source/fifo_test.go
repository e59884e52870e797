//go:build unix

package source

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/sensor/internal/decode"
)

// TestFIFOStopsOnCancel: reading a FIFO whose writer stays open returns promptly when the
// context ends (sensord -r from a pipe ignored SIGTERM until its input ended).
func TestFIFOStopsOnCancel(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "in.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("../../testdata/real/caps.pcap")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		n   int
		err error
	}
	frames := make(chan struct{}, 1)
	done := make(chan result, 1)
	go func() {
		n, err := ReadFileContext(ctx, fifo, func(decode.LinkType, int64, []byte, int) {
			select {
			case frames <- struct{}{}:
			default:
			}
		})
		done <- result{n, err}
	}()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	select {
	case <-frames:
	case <-time.After(30 * time.Second):
		t.Fatal("no frame read from the FIFO")
	}
	cancel() // the writer stays open: only the cancellation can end the read
	select {
	case r := <-done:
		if !errors.Is(r.err, context.Canceled) || r.n == 0 {
			t.Fatalf("%d frames, %v; want the frames written and context.Canceled", r.n, r.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("still reading the FIFO 30 s after cancellation")
	}
}

// TestFIFOWithoutWriterStopsOnCancel: opening a FIFO blocks until a writer comes; the
// cancellation ends that wait too (sensord -r FIFO ignored SIGTERM while nobody wrote).
func TestFIFOWithoutWriterStopsOnCancel(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "in.fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := ReadFileContext(ctx, fifo, func(decode.LinkType, int64, []byte, int) {})
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("%v; want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		// Unblock the reader so the test binary can end.
		if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
		t.Fatal("still waiting for a writer 30 s after cancellation")
	}
}
