package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
	"github.com/sie-europe/dnssensor/sensor/internal/candidates"
	"github.com/sie-europe/dnssensor/sensor/internal/decode"
	"github.com/sie-europe/dnssensor/sensor/internal/output"
	"github.com/sie-europe/dnssensor/sensor/internal/pipeline"
	"github.com/sie-europe/dnssensor/sensor/internal/source"
	"github.com/sie-europe/dnssensor/uplink/spool"
)

// frameSink is one pipeline, or several sharded over cores (-workers).
type frameSink interface {
	Frame(link decode.LinkType, ts int64, frame []byte, wireLen int)
	Idle(ts int64)
	Flush()
	Stats() pipeline.Stats
}

// Main runs sensord with args and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if why := notConfigured(args); why != "" {
		fmt.Fprintf(stderr, "sensord: not configured: %s\n", why)
		return health.ExitNotConfigured
	}
	o, err := ParseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "sensord: %v\n", err)
		return 2
	}
	run := func() error { return Run(ctx, o, stdout, stderr) }
	if config, _ := scanArgs(args); config != "" && watchable(o) {
		// A long-running sensord follows its config file: a change is applied within seconds
		// (reload.go).
		run = func() error { return runReloading(ctx, o, config, args, stdout, stderr) }
	}
	if err := run(); err != nil {
		fmt.Fprintf(stderr, "sensord: %v\n", err)
		return 1
	}
	return 0
}

// Run reads every input through one pipeline. Whatever was processed before an error is still
// flushed and written, so a damaged file loses nothing that precedes the damage.
func Run(ctx context.Context, o *Options, stdout, stderr io.Writer) (err error) {
	stderr = o.Health.keepLog(stderr)
	if len(o.Live.Ifaces) > 0 {
		o.Health.cands.Store(candidates.New())
	}
	if o.Discovery {
		return runDiscovery(ctx, o, stderr)
	}
	// The privacy self-test runs before any output is opened, with the pipeline's own
	// configuration; a failure withholds every record (counted) rather than stopping sensord, so
	// its health says why nothing is shipped.
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, "sensord: "+format+"\n", args...) }
	o.selfTest.check(o.Pipeline, logf)
	defer func() {
		if err == nil {
			err = o.selfTest.err()
		}
	}()
	env := output.Envelope{Source: o.Source, HasSource: o.HasSource}
	var outs output.Multi
	var files []*os.File
	open := func(name string) (io.Writer, error) {
		if name == "-" {
			return stdout, nil
		}
		flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		if o.reloaded {
			// A run after a reload continues the files of the runs before it: NMSG containers
			// and JSON lines both concatenate.
			flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
		}
		f, err := os.OpenFile(name, flags, 0o666)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
		return f, nil
	}
	if o.Write != "" {
		w, err := open(o.Write)
		if err != nil {
			return fmt.Errorf("-w: %v", err)
		}
		nw, err := output.NewNMSG(w, env, o.Zlib)
		if err != nil {
			return fmt.Errorf("-w: %v", err)
		}
		outs = append(outs, nw)
	}
	if o.JSON != "" {
		w, err := open(o.JSON)
		if err != nil {
			return fmt.Errorf("-J: %v", err)
		}
		outs = append(outs, output.NewJSON(w, env))
	}
	var sp *spool.Producer
	if o.Spool.Dir != "" {
		if sp, err = o.Spool.open(o.Zlib, stderr); err != nil {
			outs.Close()
			return fmt.Errorf("-spool: %v", err)
		}
		outs = append(outs, output.NewPayloads(sp, env))
	}
	if o.MemoryLimit > 0 {
		debug.SetMemoryLimit(o.MemoryLimit)
	}
	var p frameSink
	var single *pipeline.Pipeline
	emit := o.selfTest.gate(outs.Write)
	if o.Workers > 1 {
		if p, err = pipeline.NewSharded(o.Workers, o.Pipeline, emit); err != nil {
			return err
		}
	} else {
		if single, err = pipeline.New(o.Pipeline, emit); err != nil {
			return err
		}
		p = single
	}
	stctx, stopSelfTest := context.WithCancel(ctx)
	defer stopSelfTest()
	go o.selfTest.loop(stctx, o.Pipeline, logf)
	if p, err = o.Health.start(ctx, o, p, sp, stderr); err != nil {
		outs.Close()
		return err
	}
	defer o.Health.stop()
	if o.CPUProfile != "" {
		f, err := os.Create(o.CPUProfile)
		if err != nil {
			return fmt.Errorf("-cpuprofile: %v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("-cpuprofile: %v", err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	defer func() {
		p.Flush()
		if cerr := outs.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("writing output: %v", cerr)
		}
		for _, f := range files {
			// Durable on return; devices and pipes (-w /dev/null) cannot be synced.
			if fi, serr := f.Stat(); serr == nil && fi.Mode().IsRegular() {
				if serr := f.Sync(); serr != nil && err == nil {
					err = serr
				}
			}
			if cerr := f.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
		s := p.Stats()
		extra := ""
		if o.Live.extra != nil {
			extra = o.Live.extra()
		}
		fmt.Fprintf(stderr, "sensord: %s%s%s%s\n", s.String(), extra, spoolStats(sp), o.selfTest.statsPart())
	}()
	if o.Live.any() {
		// Runs until SIGTERM (ctx) or the end of a dnstap file; the deferred flush then emits
		// every pending query and closes the outputs, and sensord exits 0.
		return runLive(ctx, o, p, single, stderr)
	}

	var lastStats time.Time
	for _, name := range o.Read {
		n, err := source.ReadFileContext(ctx, name, func(link decode.LinkType, ts int64, frame []byte, wireLen int) {
			p.Frame(link, ts, frame, wireLen)
			if o.StatsEvery > 0 && time.Since(lastStats) >= o.StatsEvery {
				lastStats = time.Now()
				s := p.Stats()
				fmt.Fprintf(stderr, "sensord: %s\n", s.String())
			}
		})
		if ctx.Err() != nil {
			// SIGTERM, also in the middle of a pipe or FIFO: the deferred flush emits what
			// was read, and sensord exits 0.
			return nil
		}
		if err != nil {
			return fmt.Errorf("-r %s: %v (%d frames read before the error were processed)", name, err, n)
		}
	}
	return nil
}
