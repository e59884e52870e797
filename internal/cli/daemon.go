// Package cli holds the exit-code contract of the box's daemons, so that each one's Main is its
// flags and its run, not the same dozen lines again: 0 after -help, 2 for a bad flag (the message
// names it), 1 when the run fails, and health.ExitNotConfigured (125, gokrazy then leaves the
// program stopped) is the daemon's own to return before it parses anything.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
)

// Exit codes of Main.
const (
	ExitOK     = 0
	ExitFailed = 1
	ExitUsage  = 2
)

// Main parses args with parse and runs the result with a logger that prefixes name, returning the
// process exit code. Errors go to stderr prefixed with name, as every daemon's log lines are.
func Main[O any](ctx context.Context, name string, args []string, stderr io.Writer,
	parse func(args []string, stderr io.Writer) (O, error),
	run func(ctx context.Context, o O, logf func(string, ...any)) error) int {
	o, err := parse(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitUsage
	}
	lg := log.New(stderr, name+": ", 0)
	if err := run(ctx, o, lg.Printf); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitFailed
	}
	return ExitOK
}
