// Command gokr-packer builds dnssensor device images (gokrazy layout) and pushes
// updates to running devices:
//
//	go run ./gokr-packer -image sensor-amd64 -o out/sensor-amd64.img
//	go run ./gokr-packer update -image sensor-amd64 -device http://host:port
//	go run ./gokr-packer keys -dir ~/tuf-keys -root-keys 2 -root-threshold 2
//	go run ./gokr-packer publish -image sensor-amd64 -repo /srv/tuf -keys ~/tuf-keys
//
// Progress goes to stderr; the result is one line of JSON on stdout.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sie-europe/dnssensor/gokr-packer/packer"
	"github.com/sie-europe/dnssensor/gokr-packer/update"
	"github.com/sie-europe/dnssensor/hardware"
	"github.com/sie-europe/dnssensor/images"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "gokr-packer: %v\n", err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type usageError struct{ error }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "update":
			return runUpdate(ctx, args[1:], stdout, stderr)
		case "keys":
			return runKeys(args[1:], stdout, stderr)
		case "publish":
			return runPublish(ctx, args[1:], stdout, stderr)
		}
	}
	fs := flag.NewFlagSet("gokr-packer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs)
	out := fs.String("o", "", "write the image to `FILE`.img, or to a whole disk /dev/sdX (needs -yes-erase-device)")
	confirm := fs.String("yes-erase-device", "", "confirm erasing `DEVICE` (must equal -o)")
	artefacts := fs.String("artefacts", "", "`DIR` for the update artefacts (default: beside -o)")
	permDir := fs.String("perm-dir", "", "copy `DIR` into the new /perm (the device's configuration, e.g. sensord/config.json)")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *out == "" {
		return usageError{fmt.Errorf("-o is required (image file or device)")}
	}
	res, err := c.build(ctx, *out, *confirm, *artefacts, *permDir, stderr)
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(res)
}

// common are the flags of both the build and the update.
type common struct {
	image, passwordFile, timestamp, tufRoot string
	rootFiles                               map[string][]byte
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.image, "image", "sensor-amd64", "image `NAME` (images/NAME.json) or path to a .json definition")
	fs.StringVar(&c.passwordFile, "password-file", "", "device HTTP password `FILE` (default: ~/.config/dnssensor/NAME/gokr-pw.txt, created when missing)")
	fs.StringVar(&c.timestamp, "build-timestamp", "", "build time (RFC 3339 or Unix seconds; default $SOURCE_DATE_EPOCH, else now); fix it for reproducible root images")
	fs.StringVar(&c.tufRoot, "tuf-root", "", "bake the TUF repository's root.json `FILE` into the image ("+TrustedRootPath+", the update agent's trust anchor)")
}

func (c *common) build(ctx context.Context, out, confirm, artefacts, permDir string, stderr io.Writer) (*packer.Result, error) {
	im, err := images.Load(c.image)
	if err != nil {
		return nil, usageError{err}
	}
	repo, err := repoRoot()
	if err != nil {
		return nil, err
	}
	bt, err := buildTime(c.timestamp)
	if err != nil {
		return nil, usageError{err}
	}
	pw, err := c.password(im.Name)
	if err != nil {
		return nil, err
	}
	if c.tufRoot != "" {
		b, err := os.ReadFile(c.tufRoot)
		if err != nil {
			return nil, usageError{fmt.Errorf("-tuf-root: %w", err)}
		}
		if c.rootFiles == nil {
			c.rootFiles = map[string][]byte{}
		}
		c.rootFiles[TrustedRootPath] = b
	}
	return packer.Build(ctx, packer.Options{
		RepoRoot:      repo,
		Image:         im,
		Output:        out,
		ConfirmDevice: confirm,
		ArtefactDir:   artefacts,
		BuildTime:     bt,
		PasswordFile:  pw,
		PermDir:       permDir,
		RootFiles:     c.rootFiles,
		Log:           prefixWriter{stderr},
	})
}

func (c *common) password(image string) (string, error) {
	if c.passwordFile != "" {
		return c.passwordFile, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no -password-file and no config directory: %w", err)
	}
	return filepath.Join(dir, "dnssensor", image, "gokr-pw.txt"), nil
}

func buildTime(flagValue string) (time.Time, error) {
	v := flagValue
	if v == "" {
		v = os.Getenv("SOURCE_DATE_EPOCH")
	}
	if v == "" {
		return time.Now(), nil
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		return time.Unix(n, 0), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("build timestamp %q: want RFC 3339 or Unix seconds", v)
	}
	return t, nil
}

// repoRoot finds the checkout: the packer builds the programs from it.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module "+packer.MainModule+"\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("run gokr-packer inside the %s checkout", packer.MainModule)
		}
		dir = parent
	}
}

type prefixWriter struct{ w io.Writer }

func (p prefixWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, "gokr-packer: "+string(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}

func runUpdate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("gokr-packer update", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs)
	device := fs.String("device", "", "device `URL`, e.g. http://192.0.2.10 or http://127.0.0.1:8080")
	dir := fs.String("artefacts", "", "keep the built image and artefacts in `DIR` (default: a temporary folder)")
	testboot := fs.Bool("testboot", false, "boot the new root once (gokrazy falls back to the old one unless it comes up); default: switch")
	reboot := fs.String("reboot", "", "how the device restarts after the push: kexec or firmware (default: the image's hardware profile's, kexec unless it says otherwise)")
	wait := fs.Duration("timeout", 5*time.Minute, "give up waiting for the device to come back after this long")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *device == "" {
		return usageError{fmt.Errorf("-device is required")}
	}
	im, err := images.Load(c.image)
	if err != nil {
		return usageError{err}
	}
	prof, err := hardware.Get(im.Profile)
	if err != nil {
		return err
	}
	switch *reboot {
	case "":
		*reboot = prof.RebootMethod()
	case hardware.RebootKexec, hardware.RebootFirmware:
	default:
		return usageError{fmt.Errorf("-reboot %q: want %s or %s", *reboot, hardware.RebootKexec, hardware.RebootFirmware)}
	}
	pwFile, err := c.password(c.image)
	if err != nil {
		return err
	}
	password := os.Getenv("GOKRAZY_PASSWORD")
	if password == "" {
		b, err := os.ReadFile(pwFile)
		if err != nil {
			return fmt.Errorf("device password: set GOKRAZY_PASSWORD or -password-file: %w", err)
		}
		password = strings.TrimSpace(string(b))
	}
	c.passwordFile = pwFile
	work := *dir
	if work == "" {
		tmp, err := os.MkdirTemp("", "gokr-packer-update-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		work = tmp
	}
	res, err := c.build(ctx, filepath.Join(work, c.image+".img"), "", work, "", stderr)
	if err != nil {
		return err
	}
	ur, err := update.Push(ctx, update.Options{
		Device:         *device,
		Password:       password,
		RootImg:        res.RootImg,
		BootImg:        res.BootImg,
		MBRImg:         res.MBRImg,
		BuildTimestamp: res.BuildTimestamp,
		StateFile:      filepath.Join(filepath.Dir(pwFile), "pushed-"+update.DeviceKey(*device)+".json"),
		Testboot:       *testboot,
		FirmwareReboot: *reboot == hardware.RebootFirmware,
		Timeout:        *wait,
		Log:            prefixWriter{stderr},
	})
	if err != nil {
		return err
	}
	return json.NewEncoder(stdout).Encode(struct {
		Build  *packer.Result `json:"build"`
		Update *update.Result `json:"update"`
	}{res, ur})
}
