package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
)

func parse(args []string, stderr io.Writer) (*string, error) {
	fs := flag.NewFlagSet("d", flag.ContinueOnError)
	fs.SetOutput(stderr)
	v := fs.String("v", "", "a value")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	return v, nil
}

func TestExitCodes(t *testing.T) {
	cases := []struct {
		args   []string
		runErr error
		code   int
		stderr string // a substring; "" for none at all
	}{
		{args: []string{"-v", "x"}, code: ExitOK},
		{args: []string{"-help"}, code: ExitOK, stderr: "Usage"},
		{args: []string{"-nope"}, code: ExitUsage, stderr: "d: flag provided but not defined: -nope"},
		{args: []string{"-v", "x"}, runErr: errors.New("disk on fire"), code: ExitFailed, stderr: "d: disk on fire"},
	}
	for _, c := range cases {
		var stderr bytes.Buffer
		var got string
		code := Main(context.Background(), "d", c.args, &stderr, parse,
			func(ctx context.Context, v *string, logf func(string, ...any)) error {
				got = *v
				logf("running with %s", *v)
				return c.runErr
			})
		if code != c.code {
			t.Errorf("%q: exit %d, want %d (stderr %q)", c.args, code, c.code, stderr.String())
		}
		if c.stderr != "" && !strings.Contains(stderr.String(), c.stderr) {
			t.Errorf("%q: stderr %q, want it to contain %q", c.args, stderr.String(), c.stderr)
		}
		if c.code != ExitUsage && c.args[0] == "-v" {
			if got != "x" || !strings.Contains(stderr.String(), "d: running with x") {
				t.Errorf("%q: run saw %q, log %q", c.args, got, stderr.String())
			}
		}
	}
}
