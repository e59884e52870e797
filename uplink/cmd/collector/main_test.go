package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sie-europe/dnssensor/nmsg"
	"github.com/sie-europe/dnssensor/uplink/internal/collector"
	"github.com/sie-europe/dnssensor/uplink/sielink"
	"github.com/sie-europe/dnssensor/uplink/sielink/sielinktest"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

// TestSelftestServer builds the command, runs it with -selftest-server
// as a separate process, delivers through the sielink client with the
// printed details, stops it with SIGTERM and reads the files back.
func TestSelftestServer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := filepath.Join(t.TempDir(), "collector")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	cmd := exec.Command(bin, "-selftest-server", "-dir", dir, "-heartbeat", "1s")
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		t.Fatalf("reading connection details: %v\n%s", err, stderr.Bytes())
	}
	var info struct{ URL, Name, APIKeyFile, CAFile, Dir string }
	var raw map[string]string
	json.Unmarshal(line, &raw)
	info.URL, info.Name, info.APIKeyFile, info.CAFile, info.Dir = raw["url"], raw["name"], raw["api_key_file"], raw["ca_file"], raw["dir"]
	defer os.RemoveAll(filepath.Dir(info.APIKeyFile))
	caPEM, err := os.ReadFile(info.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := sielink.Dial(ctx, sielink.Config{URL: info.URL, Name: info.Name, APIKeyFile: info.APIKeyFile,
		TLS: &tls.Config{RootCAs: pool}, Heartbeat: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var want [][]byte
	for i := 0; i < 10; i++ {
		var buf bytes.Buffer
		w, _ := nmsg.NewFileWriter(&buf, nmsg.FileOptions{})
		for j := 0; j < 5; j++ {
			d := []byte{byte(i), byte(j), 'd', 'n', 's'}
			want = append(want, d)
			w.Write(&nmsg.Payload{Vid: 1, Msgtype: 9, Data: d})
		}
		w.Close()
		if err := conn.Send(ctx, buf.Bytes(), sielink.LossCounter{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// SIGTERM while the sensor is connected: the collector sends
	// Shutdown, the client answers Finished, the files are sealed.
	cmd.Process.Signal(syscall.SIGTERM)
	<-conn.Done()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("collector exited with %v\n%s", err, stderr.Bytes())
	}
	if err := conn.Err(); err != sielink.ErrShutdown {
		t.Errorf("client connection ended with %v, want ErrShutdown", err)
	}
	files, _ := filepath.Glob(filepath.Join(info.Dir, "selftest", "*.nmsg"))
	var got [][]byte
	for _, f := range files {
		fh, _ := os.Open(f)
		r := nmsg.NewReader(fh, nmsg.ReaderOptions{})
		for {
			p, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, bytes.Clone(p.Data))
		}
		fh.Close()
	}
	if len(got) != len(want) {
		t.Fatalf("files hold %d records, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("record %d differs", i)
		}
	}
}

// TestFailedStartSealsForwardSpool: when the collector fails after opening its forward spool
// (here: the listen address is taken), the spool is still closed, which moves its RAM tier to
// disk. Before, log.Fatal skipped the deferred close and left the RAM tier behind.
func TestFailedStartSealsForwardSpool(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := filepath.Join(t.TempDir(), "collector")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir := t.TempDir()
	ram, disk := filepath.Join(dir, "ram"), filepath.Join(dir, "disk")
	p, err := spool.OpenProducer(spool.Options{Dir: ram, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	p.WritePayload(&nmsg.Payload{Vid: 1, Msgtype: 9, Data: []byte("received before the failure")})
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	keysFile, _, err := sielinktest.WriteKeys(dir, "s1")
	if err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	out, err := exec.Command(bin, "-plain-http", "-listen", taken.Addr().String(), "-keys", keysFile, "-dir", filepath.Join(dir, "nmsg"),
		"-metrics", "", "-forward-spool", ram, "-forward-spool-disk", disk).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("collector with its address taken: %v\n%s", err, out)
	}
	onDisk, _ := filepath.Glob(filepath.Join(disk, "*.seg"))
	inRAM, _ := filepath.Glob(filepath.Join(ram, "*.seg"))
	if len(onDisk) == 0 || len(inRAM) != 0 {
		t.Errorf("after the failed start: %d segments on disk, %d in RAM; want the RAM tier moved to disk\n%s", len(onDisk), len(inRAM), out)
	}
}

// TestFleetFlags: a -fleet-silent that would flicker healthy sensors red, or a fleet page on a
// non-loopback address, is refused naming the flag.
func TestFleetFlags(t *testing.T) {
	for _, tc := range []struct {
		f    collector.FleetOptions
		want string // "" accepted
	}{
		{collector.FleetOptions{Silent: 5 * time.Minute}, ""},
		{collector.FleetOptions{Silent: 5 * time.Minute, Listen: "127.0.0.1:9126"}, ""},
		{collector.FleetOptions{Silent: 5 * time.Minute, Listen: "[::1]:9126"}, ""},
		{collector.FleetOptions{Silent: 5 * time.Second}, "-fleet-silent 5s: must be at least 10s"},
		{collector.FleetOptions{Silent: 0}, "-fleet-silent 0s"},
		{collector.FleetOptions{Silent: 5 * time.Minute, Listen: "0.0.0.0:9126"}, "-fleet 0.0.0.0:9126: not a loopback address"},
		{collector.FleetOptions{Silent: 5 * time.Minute, Listen: "9126"}, "-fleet 9126: want host:port"},
	} {
		err := checkFleetFlags(tc.f)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.f, err)
		case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)):
			t.Errorf("%+v: %v, want %q…", tc.f, err, tc.want)
		}
	}
}
