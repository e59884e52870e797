package packer

import (
	"os/exec"
	"testing"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// requireTool returns the path of a host tool the test checks our bytes with.
// Locally a missing tool skips the test (with the apt line); in CI (CI=true) it
// fails, so a missing install step cannot hide behind a green run.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := needTool(name, pkg)
	if err != nil {
		testenv.Missing(t, err)
	}
	return p
}

func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}
