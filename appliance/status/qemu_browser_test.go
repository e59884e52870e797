package status

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sie-europe/dnssensor/appliance/timesync"
	"github.com/sie-europe/dnssensor/internal/testenv"
)

// The QEMU walk-through's guest side: QEMU's user network maps 10.0.2.100:collectorGuestPort in
// the guest to the host's collector (ci/qemu-run --guestfwd).
const (
	collectorGuestAddr = "10.0.2.100"
	collectorGuestPort = 8443
	// ntpGuestAddr is QEMU's address for the host's loopback (user networking, restrict=off:
	// ci/qemu-run --open-net), where the test's chronyd serves NTP inside the network namespace
	// ci/qemu-browser-test runs it in.
	ntpGuestAddr      = "10.0.2.2"
	qemuSensorName    = "qemu-browser"
	qemuResolver      = "192.168.0.48" // the resolver in images/files/sensord-selftest.pcap
	qemuWrongResolver = "192.0.2.53"
	// Small spool tiers, so that the disk tier's quota is reached within seconds of a flood while
	// the collector is down, and never while it takes the segments (a second's worth of replayed
	// traffic is a few KB).
	qemuSpoolQuota = 256 << 10
)

// TestQEMUBrowser is the proof on the real image: the sensor-amd64 image is built with a
// /perm whose uplink is a real collector on the host (TLS, API key), booted in QEMU, and the
// status page on the guest's management address is driven in headless chromium while a capture
// is replayed into the tap NIC: logged in, every link green, the clock too (timed on the box
// synchronised from a chronyd the test runs on the host's loopback); then one thing broken
// at a time, each seen red on the page with its fix as the first failure, and mended:
// the tap NIC's cable pulled (QEMU monitor set_link off, then on); a wrong resolver address
// saved on the configuration page (the page then suggests the capture's resolver among the top
// talkers; one click on "Use this resolver" brings the link and the records back); the collector
// stopped (the uplink link red), and, while it is down, the disk tier over its quota (spool
// red), then the collector started again (uplink green). Also: a wrong password gets 401 from the
// box, an action without its XSRF token 403, and statusd's CPU per page and idle, and its RSS,
// are measured from its JSON page. Screenshots of each state
// go to $ARTIFACTS_DIR/TestQEMUBrowser.
//
// NTP is UDP, which QEMU's restricted user network (only TCP through guestfwd) does not carry:
// the guest's network is open (ci/qemu-run --open-net, restrict=off), which is safe only because
// ci/qemu-browser-test runs this test, and so chromium, the collector, chronyd and QEMU, in a
// network namespace of its own with nothing but loopback: the guest reaches the namespace's
// loopback (10.0.2.2) and nothing else. The test refuses to run outside such a namespace.
//
// Run by ci/qemu-browser-test (DNSSENSOR_QEMU_BROWSER=1): it boots an image, minutes.
func TestQEMUBrowser(t *testing.T) {
	if os.Getenv("DNSSENSOR_QEMU_BROWSER") != "1" {
		t.Skip("boots the image in QEMU: run by ci/qemu-browser-test (DNSSENSOR_QEMU_BROWSER=1)")
	}
	_, err := exec.LookPath("qemu-system-x86_64")
	testenv.Need(t, err == nil, "qemu-system-x86_64 not found (bash ci/qemu-deps)")
	_, err = exec.LookPath("chromium")
	testenv.Need(t, err == nil, "chromium not found (apt-get install chromium)")
	chronyd, err := exec.LookPath("chronyd")
	if err != nil {
		chronyd, err = exec.LookPath("/usr/sbin/chronyd")
	}
	testenv.Need(t, err == nil, "chronyd not found (apt-get install chrony): the box's NTP server")
	if why := closedNetns(); why != "" {
		t.Fatalf("run by ci/qemu-browser-test, in a network namespace of its own with loopback only: %s", why)
	}
	started := time.Now()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out := os.Getenv("DNSSENSOR_QEMU_OUT")
	if out == "" {
		out = t.TempDir()
	}
	base := 18380
	if p := os.Getenv("DNSSENSOR_QEMU_PORT"); p != "" {
		if base, err = strconv.Atoi(p); err != nil {
			t.Fatalf("DNSSENSOR_QEMU_PORT: %v", err)
		}
	}
	gokrazyPort, statusPort, collectorPort, tapPort := base, base+1, base+2, base+100
	dir := artefacts(t)

	// Secrets and the collector's certificate, for 10.0.2.100 as the guest dials it.
	password, apiKey := randomHex(t), randomHex(t)
	writeFile(t, filepath.Join(out, "pw.txt"), password+"\n", 0o600)
	certPEM, keyPEM := selfSigned(t, collectorGuestAddr)
	cdir := filepath.Join(out, "collector")
	writeFile(t, filepath.Join(cdir, "cert.pem"), string(certPEM), 0o644)
	writeFile(t, filepath.Join(cdir, "key.pem"), string(keyPEM), 0o600)
	writeFile(t, filepath.Join(cdir, "keys"), qemuSensorName+" "+apiKey+"\n", 0o600)

	// /perm as an operator's box file leaves it; statusd's Reconcile at boot derives the same
	// daemon files from dnssensor.json.
	perm := filepath.Join(out, "perm")
	sensor := map[string]any{"resolver": qemuResolver, "rd": "any", "stats": "2s",
		"spool-ram-quota": qemuSpoolQuota, "spool-disk-quota": qemuSpoolQuota}
	dest := map[string]any{"type": "sielink", "name": "collector",
		"url":    fmt.Sprintf("wss://%s:%d", collectorGuestAddr, collectorGuestPort),
		"sensor": qemuSensorName, "ca_file": "/perm/uplinkd/ca.pem"}
	uplinkDest := map[string]any{"api_key_file": "/perm/uplinkd/api-key-collector"}
	for k, v := range dest {
		uplinkDest[k] = v
	}
	network := map[string]any{"static": map[string]any{"ntp": []any{ntpGuestAddr}}}
	writeJSON(t, filepath.Join(perm, "dnssensor.json"), map[string]any{"sensor": sensor,
		"uplink": map[string]any{"destinations": []any{dest}, "retry_max": "5s"}, "network": network})
	writeJSON(t, filepath.Join(perm, "sensord", "config.json"), sensor)
	writeJSON(t, filepath.Join(perm, "netconfd", "config.json"), map[string]any{"network": network})
	writeJSON(t, filepath.Join(perm, "uplinkd", "config.json"), map[string]any{
		"spool":        map[string]any{"dir": "/run/spool", "disk_dir": "/perm/spool"},
		"destinations": []any{uplinkDest}, "retry_max": "5s"})
	writeFile(t, filepath.Join(perm, "uplinkd", "ca.pem"), string(certPEM), 0o644)
	writeFile(t, filepath.Join(perm, "uplinkd", "api-key-collector"), apiKey+"\n", 0o600)

	run := func(name string, args ...string) {
		t.Helper()
		start := time.Now()
		cmd := exec.Command(name, args...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
		}
		t.Logf("%s %s: %.1f s", name, args[0], time.Since(start).Seconds())
	}
	collectorBin, img := filepath.Join(out, "collector.bin"), filepath.Join(out, "sensor-amd64.img")
	run("go", "build", "-o", collectorBin, "./uplink/cmd/collector")
	run("go", "run", "./gokr-packer", "-image", "sensor-amd64", "-o", img,
		"-password-file", filepath.Join(out, "pw.txt"), "-perm-dir", perm)

	startChronyd(t, chronyd, filepath.Join(out, "chrony"))

	col := &collectorProc{t: t, bin: collectorBin, dir: cdir, port: collectorPort}
	col.start()
	t.Cleanup(col.stop)

	monitor := filepath.Join(out, "monitor.sock")
	qemu := exec.Command("bash", "ci/qemu-run", "--port", strconv.Itoa(gokrazyPort),
		"--status-port", strconv.Itoa(statusPort), "--tap-port", strconv.Itoa(tapPort),
		"--guestfwd", fmt.Sprintf("%d:%d", collectorGuestPort, collectorPort),
		"--monitor", monitor, "--open-net", "--serial", filepath.Join(out, "serial.log"), img)
	qemu.Dir = root
	qlog, err := os.Create(filepath.Join(out, "qemu.out"))
	if err != nil {
		t.Fatal(err)
	}
	qemu.Stdout, qemu.Stderr = qlog, qlog
	// Gone with the test binary even when go test's timeout kills it before the cleanups run.
	qemu.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	bootStart := time.Now()
	qemuDone := make(chan struct{})
	go func() { qemu.Wait(); close(qemuDone) }()
	t.Cleanup(func() { // qemu-run execs QEMU: the pid is QEMU's
		qemu.Process.Kill()
		<-qemuDone
		qlog.Close()
	})

	// The capture, replayed into the tap NIC all along (sensord's ring opens some time into the
	// boot; the frames check wants frames in the last minute).
	frames := readPcapFrames(t, filepath.Join(root, "images/files/sensord-selftest.pcap"))
	var flood atomic.Bool
	ctx, stopFeed := context.WithCancel(context.Background())
	feedDone := make(chan struct{})
	t.Cleanup(func() { stopFeed(); <-feedDone })
	go func() {
		defer close(feedDone)
		feedTap(ctx, frames, tapPort, &flood)
	}()

	base0 := fmt.Sprintf("http://127.0.0.1:%d", statusPort)
	// The boot: up to minutes on a loaded machine under software emulation (40–190 s seen).
	waitUntil(t, 8*time.Minute, "statusd answering on the guest's management address", qemuDone, func() (bool, string) {
		code, err := httpStatus(base0+"/", "")
		return code == http.StatusUnauthorized, fmt.Sprint(code, err)
	})
	answered := time.Now()
	t.Logf("statusd answered %.1f s after QEMU's start", answered.Sub(bootStart).Seconds())

	// A wrong password: 401 from the box (one attempt: five would lock this address out). An
	// action without its XSRF token: 403.
	if code, err := httpStatus(base0+"/", "gokrazy:wrong"); code != http.StatusUnauthorized {
		t.Errorf("wrong password: %d %v, want 401", code, err)
	}
	if code, err := httpPost(base0+"/refresh", "gokrazy:"+password); code != http.StatusForbidden {
		t.Errorf("POST /refresh without the XSRF token: %d %v, want 403", code, err)
	}

	b := browserFor(t, "gokrazy:"+password, 20*time.Minute)
	page := &qemuPage{t: t, ctx: b, url: base0, dir: dir, dead: qemuDone}

	// 1. Everything green while the capture is replayed; the clock once timed has asked chronyd
	// (its first try at boot may precede netconfd's ntp.json: then 16 s later).
	page.wait("every link green but the clock", func(st map[string]string) bool {
		for name, class := range st {
			if name != stageClock && class != "ok" {
				return false
			}
		}
		return len(st) > 0
	})
	page.wait("the clock synchronised", func(st map[string]string) bool { return st[stageClock] == "ok" })
	t.Logf("clock link green %.1f s after QEMU's start, %.1f s after statusd's first answer",
		time.Since(bootStart).Seconds(), time.Since(answered).Seconds())
	page.wait("every link green at once", func(st map[string]string) bool {
		for _, class := range st {
			if class != "ok" {
				return false
			}
		}
		return st[stageClock] == "ok"
	})
	page.screenshot("1-all-green")

	// 2. The tap NIC's cable pulled.
	qemuMonitor(t, monitor, "set_link tap off")
	page.waitFirst("tap NIC link down", stageInput)
	page.screenshot("2-tap-link-down")
	qemuMonitor(t, monitor, "set_link tap on")
	page.wait("tap ports green again", func(st map[string]string) bool { return st[stageInput] == "ok" && st[stageFrames] == "ok" })

	// 3. A wrong resolver address, saved on the configuration page.
	page.do(chromedp.Navigate(base0+"/config"), chromedp.WaitVisible(chromedp.CSS("form#config")),
		chromedp.SetValue(chromedp.CSS(`input[name="sensor.resolver"]`), qemuWrongResolver),
		chromedp.Click(chromedp.CSS(`form#config button[type="submit"]`)), chromedp.WaitVisible(chromedp.CSS("#saved")))
	page.screenshot("3a-wrong-resolver-saved")
	page.waitFirst("wrong resolver", stageResolver)
	page.screenshot("3b-wrong-resolver-red")
	// The configuration page suggests the capture's resolver among the top talkers.
	useIt := fmt.Sprintf(`#suggestions form:has(input[name="addr"][value=%q]) button`, qemuResolver)
	waitUntil(t, 3*time.Minute, "the resolver suggested on /config", qemuDone, func() (bool, string) {
		page.do(chromedp.Navigate(base0+"/config"), chromedp.WaitVisible(chromedp.CSS("form#config")))
		n, err := chromedp.Run(page.ctx, chromedp.Evaluate[int](fmt.Sprintf(`document.querySelectorAll(%q).length`, useIt)))
		return err == nil && n == 1, page.text("body")
	})
	page.screenshot("3c-resolver-suggested")
	page.do(chromedp.Click(chromedp.CSS(useIt)), chromedp.WaitVisible(chromedp.CSS("#saved")))
	page.wait("the suggested resolver used: its link green again", func(st map[string]string) bool {
		return st[stageResolver] == "ok" && st[stagePairs] == "ok"
	})
	// Records flow again: sensord's count grows (a reload starts its counters afresh).
	first := sensordRecords(t, base0, password)
	waitUntil(t, 3*time.Minute, "records flowing again after the fix", qemuDone, func() (bool, string) {
		n := sensordRecords(t, base0, password)
		return n > first, fmt.Sprintf("%g records, %g before", n, first)
	})
	page.screenshot("3d-resolver-fixed")

	// 4. The collector unreachable.
	col.stop()
	page.waitFirst("collector stopped", stageUplink)
	page.screenshot("4-collector-down")

	// 5. While it is down, the disk tier over its quota: the replay floods until sensord drops
	// the oldest segments at the quota.
	flood.Store(true)
	page.waitFirst("disk tier over quota", stageSpool)
	flood.Store(false)
	page.screenshot("5-spool-over-quota")

	// The collector back: the uplink link turns green (the spool's stays red for its window:
	// data was lost).
	col.start()
	page.wait("collector back: uplink green", func(st map[string]string) bool { return st[stageUplink] == "ok" })
	page.screenshot("6-collector-back")

	// statusd's own cost. A page costs a compose (every daemon asked, the page rendered): two
	// back to back give it; then idle, no page asked for, only its sampler running. The CPU
	// time is read as the page is composed, so the window's second read carries one compose:
	// taken off.
	p0 := statusProcess(t, base0, password)
	p1 := statusProcess(t, base0, password)
	perPage := p1.CPUSeconds - p0.CPUSeconds
	idle := time.Now()
	<-time.After(30 * time.Second) // a measurement window, not a wait for some state
	p2 := statusProcess(t, base0, password)
	el := time.Since(idle).Seconds()
	t.Logf("statusd under QEMU (TCG, 2 vCPUs): a page costs %.2f s of CPU; idle %.2f%% of one core (%.2f s in %.0f s, less one page), RSS %.1f MB",
		perPage, 100*(p2.CPUSeconds-p1.CPUSeconds-perPage)/el, p2.CPUSeconds-p1.CPUSeconds-perPage, el, float64(p2.RSSBytes)/(1<<20))
	t.Logf("walk-through: %.0f s in all; screenshots in %s", time.Since(started).Seconds(), dir)
}

// qemuPage is the status page on the booted image, in the browser.
type qemuPage struct {
	t    *testing.T
	ctx  context.Context
	url  string
	dir  string
	dead <-chan struct{}
}

func (p *qemuPage) do(actions ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, actions...); err != nil {
		p.t.Fatal(err)
	}
}

func (p *qemuPage) text(sel string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		p.t.Fatal(err)
	}
	return s
}

func (p *qemuPage) screenshot(name string) { p.t.Helper(); screenshot(p.t, p.ctx, p.dir, name) }

// states loads the page afresh (it is rendered by the server) and reads each link's class.
func (p *qemuPage) states() map[string]string {
	p.t.Helper()
	p.do(chromedp.Navigate(p.url+"/"), chromedp.WaitVisible(chromedp.CSS("ol.chain")))
	st, err := chromedp.Run(p.ctx, chromedp.Evaluate[map[string]string](`Object.fromEntries([...document.querySelectorAll("ol.chain > li")].map(li =>
		[li.querySelector("strong").textContent.trim(), li.className]))`))
	if err != nil {
		p.t.Fatal(err)
	}
	return st
}

// wait reloads the page until cond holds for its links.
func (p *qemuPage) wait(what string, cond func(map[string]string) bool) {
	p.t.Helper()
	start := time.Now()
	waitUntil(p.t, 4*time.Minute, what, p.dead, func() (bool, string) {
		st := p.states()
		return cond(st), fmt.Sprint(st)
	})
	p.t.Logf("%s: %.1f s", what, time.Since(start).Seconds())
}

// waitFirst waits until stage is the first red link, and checks that its fix is shown.
func (p *qemuPage) waitFirst(what, stage string) {
	p.t.Helper()
	p.wait(what+": "+stage+" red first", func(st map[string]string) bool {
		if !strings.Contains(st[stage], "fail") {
			return false
		}
		// The first failure is marked on the deepest failing node: name the link holding it.
		n, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`(document.querySelector("ol.chain li.first")?.closest("ol.chain > li")?.querySelector("strong")?.textContent) || ""`))
		return err == nil && strings.TrimSpace(n) == stage
	})
	fix := p.text("ol.chain li.first > .fix")
	if !strings.Contains(fix, "Fix first:") || len(fix) < len("Fix first: ")+10 {
		p.t.Errorf("%s: the first red link %q shows no fix: %q", what, stage, fix)
	}
	p.t.Logf("%s: %s", what, fix)
}

// waitUntil polls cond (each poll takes the guest seconds to answer under emulation) until it
// holds, failing after d with cond's last word, or at once when QEMU has died.
func waitUntil(t *testing.T, d time.Duration, what string, dead <-chan struct{}, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, last := cond()
		if ok {
			return
		}
		select {
		case <-dead:
			t.Fatalf("QEMU exited while waiting for %s (last: %s)", what, last)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s; last: %s", d, what, last)
		}
		time.Sleep(500 * time.Millisecond) // a poll interval
	}
}

func httpStatus(url, auth string) (int, error) { return httpDo("GET", url, auth) }

// httpPost posts an empty form.
func httpPost(url, auth string) (int, error) { return httpDo("POST", url, auth) }

func httpDo(method, url, auth string) (int, error) {
	var body io.Reader
	if method == "POST" {
		body = strings.NewReader("")
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		return 0, err
	}
	if user, pw, ok := strings.Cut(auth, ":"); ok {
		req.SetBasicAuth(user, pw)
	}
	if method == "POST" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// statusJSON reads the JSON page from the box.
func statusJSON(t *testing.T, base, password string) map[string]any {
	t.Helper()
	req, _ := http.NewRequest("GET", base+"/status.json", nil)
	req.SetBasicAuth("gokrazy", password)
	c := &http.Client{Timeout: 60 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatalf("status.json: %v", err)
	}
	return doc
}

func statusProcess(t *testing.T, base, password string) Process {
	t.Helper()
	b, _ := json.Marshal(statusJSON(t, base, password)["process"])
	var p Process
	if err := json.Unmarshal(b, &p); err != nil || p.RSSBytes == 0 {
		t.Fatalf("statusd's page has no process section: %s", b)
	}
	return p
}

// sensordRecords sums sensord's records counter as statusd relays it.
func sensordRecords(t *testing.T, base, password string) float64 {
	t.Helper()
	daemons, _ := statusJSON(t, base, password)["daemons"].([]any)
	for _, d := range daemons {
		d, _ := d.(map[string]any)
		if d["name"] != "sensord" {
			continue
		}
		m, _ := d["metrics"].(map[string]any)
		ms, _ := m["metrics"].(map[string]any)
		rec, _ := ms["dnssensor_sensord_records_total"].(map[string]any)
		samples, _ := rec["samples"].([]any)
		var n float64
		for _, s := range samples {
			s, _ := s.(map[string]any)
			v, _ := s["value"].(float64)
			n += v
		}
		return n
	}
	return 0
}

// qemuMonitor runs one command on QEMU's human monitor and fails on an error reply.
func qemuMonitor(t *testing.T, sock, command string) {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	prompt := func() string {
		var got strings.Builder
		for !strings.HasSuffix(got.String(), "(qemu) ") {
			b, err := r.ReadByte()
			if err != nil {
				t.Fatalf("QEMU monitor (%s): %v after %q", command, err, got.String())
			}
			got.WriteByte(b)
		}
		return got.String()
	}
	prompt() // the greeting
	if _, err := fmt.Fprintf(c, "%s\n", command); err != nil {
		t.Fatal(err)
	}
	// The reply: the command echoed, then any error, then the prompt.
	reply := prompt()
	if i := strings.Index(reply, command); i >= 0 {
		reply = reply[i+len(command):]
	}
	reply = strings.TrimSpace(strings.TrimSuffix(reply, "(qemu) "))
	// The monitor echoes with terminal escapes; anything left that is not one is a message.
	if strings.Contains(reply, "not found") || strings.Contains(reply, "rror") {
		t.Fatalf("QEMU monitor %q: %q", command, reply)
	}
	t.Logf("QEMU monitor: %s", command)
}

// collectorProc is the collector the guest's uplinkd ships to, on the host.
// closedNetns says why this process's network is not a namespace of its own with nothing but
// loopback ("" when it is): QEMU's open user network (--open-net) reaches whatever this
// namespace can, and chronyd takes port 123.
func closedNetns() string {
	self, _ := os.Readlink("/proc/self/ns/net")
	if init, err := os.Readlink("/proc/1/ns/net"); err == nil {
		if self == init {
			return "this is PID 1's network namespace"
		}
	} else if name, _ := exec.Command("ip", "netns", "identify", strconv.Itoa(os.Getpid())).Output(); len(bytes.TrimSpace(name)) == 0 {
		// PID 1's cannot be read (a container): the namespace must be one ip netns made.
		return "not a namespace made by ip netns (and PID 1's cannot be read to compare)"
	}
	ifs, err := net.Interfaces()
	if err != nil {
		return err.Error()
	}
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback == 0 {
			return "the namespace has interface " + i.Name
		}
	}
	return ""
}

// startChronyd serves NTP on the namespace's loopback, port 123 (the box asks 10.0.2.2, QEMU's
// address for the host's loopback, on NTP's port): Debian's chronyd serving its own clock at
// stratum 8, never setting it (-x).
func startChronyd(t *testing.T, bin, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "chrony.conf")
	writeFile(t, conf, fmt.Sprintf("port 123\nbindaddress 127.0.0.1\ncmdport 0\nlocal stratum 8\nallow\npidfile %s\ndriftfile %s\n",
		filepath.Join(dir, "chronyd.pid"), filepath.Join(dir, "drift")), 0o644)
	logf, err := os.Create(filepath.Join(dir, "chronyd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", conf, "-d", "-x", "-U")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-done })
	waitUntil(t, time.Minute, "chronyd answering on 127.0.0.1:123", done, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s, err := timesync.Query(ctx, "127.0.0.1:123", time.Now)
		return err == nil, fmt.Sprint(s, err)
	})
}

type collectorProc struct {
	t    *testing.T
	bin  string
	dir  string
	port int
	cmd  *exec.Cmd
	done chan struct{}
}

func (c *collectorProc) start() {
	c.t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", c.port)
	c.cmd = exec.Command(c.bin, "-listen", addr, "-cert", filepath.Join(c.dir, "cert.pem"),
		"-key", filepath.Join(c.dir, "key.pem"), "-keys", filepath.Join(c.dir, "keys"),
		"-dir", filepath.Join(c.dir, "data"), "-direct", "-metrics", "")
	logf, err := os.OpenFile(filepath.Join(c.dir, "collector.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); logf.Close(); close(done) }(c.cmd, c.done)
	waitUntil(c.t, time.Minute, "the collector listening", c.done, func() (bool, string) {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
		}
		return err == nil, fmt.Sprint(err)
	})
}

func (c *collectorProc) stop() {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Kill()
	<-c.done
	c.cmd = nil
}

// feedTap replays frames into the tap NIC (QEMU's socket netdev on 127.0.0.1:port) about once a
// second, or back to back while flood is set, until ctx ends.
func feedTap(ctx context.Context, frames [][]byte, port int, flood *atomic.Bool) {
	c, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return
	}
	defer c.Close()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		for _, f := range frames {
			c.Write(f)
			// Query before response: the guest reads one ring, and QEMU's socket netdev keeps
			// the order; a short gap keeps the emulated NIC from dropping under TCG.
			time.Sleep(time.Millisecond)
		}
		if flood.Load() {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// readPcapFrames reads a classic little-endian pcap file of Ethernet frames.
func readPcapFrames(t *testing.T, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) < 24 || binary.LittleEndian.Uint32(data) != 0xa1b2c3d4 || binary.LittleEndian.Uint32(data[20:]) != 1 {
		t.Fatalf("%s: want a little-endian pcap file of Ethernet frames", path)
	}
	var frames [][]byte
	for off := 24; off+16 <= len(data); {
		n := int(binary.LittleEndian.Uint32(data[off+8:]))
		if off+16+n > len(data) {
			t.Fatalf("%s: frame at %d cut short", path, off)
		}
		frames = append(frames, data[off+16:off+16+n])
		off += 16 + n
	}
	return frames
}

func randomHex(t *testing.T) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask: the packer copies modes
		t.Fatal(err)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, string(b)+"\n", 0o644)
}

// selfSigned makes a certificate for ip that is its own CA: uplinkd's ca_file holds it.
func selfSigned(t *testing.T, ip string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "dnssensor QEMU test collector"},
		NotBefore:             time.Now().Add(-24 * time.Hour), // the guest's clock is unsynchronised
		NotAfter:              time.Now().Add(7 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:           []net.IP{net.ParseIP(ip)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}
