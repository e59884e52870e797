// Package conformance finds the shared conformance corpus for the sensor's tests; the finder and
// the CI rule (a missing corpus fails under CI=true, skips elsewhere) live in internal/testenv.
package conformance

import (
	"testing"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// Dir returns the corpus folder, or skips t (fails it under CI=true) when it is absent.
func Dir(t testing.TB) string {
	t.Helper()
	return testenv.Conformance(t)
}
