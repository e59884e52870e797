package health

import (
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/internal/health/healthtest"
)

// TestValidatorRejects: the validator must be able to fail, or every schema test passes vacuously.
func TestValidatorRejects(t *testing.T) {
	good := `{"schema":"dnssensor.health/v1","daemon":"sensord","time":"2026-01-02T03:04:05Z","started":"2026-01-02T03:00:00Z","ok":false,
	  "first_failure_path":["input"],
	  "checks":[{"name":"input","ok":false,"since":"2026-01-02T03:00:00Z","detail":"","fix":"","first_failure":true,
	    "children":[{"name":"records","ok":true,"since":"2026-01-02T03:00:00Z","detail":"1 record","fix":""}]}]}`
	v := mustValidator(t, HealthSchemaJSON)
	doc, err := healthtest.Decode([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if errs := v.Validate(doc); len(errs) > 0 {
		t.Fatalf("good document refused: %v", errs)
	}
	for _, tc := range []struct{ name, from, to, want string }{
		{"missing since", `"detail":"1 record"`, `"detail":"1 record","since":null`, "want string"},
		{"missing fix", `,"fix":""}]}]}`, `}]}]}`, `missing required "fix"`},
		{"unknown key", `"ok":false,`, `"ok":false,"status":"bad",`, `unexpected key "status"`},
		{"wrong schema", `dnssensor.health/v1`, `dnssensor.health/v2`, "want dnssensor.health/v1"},
		{"bad time", `"time":"2026-01-02T03:04:05Z"`, `"time":"yesterday"`, "not an RFC 3339"},
		{"slash in name", `"name":"records"`, `"name":"a/b"`, "does not match"},
		{"ok not bool", `"ok":true`, `"ok":"yes"`, "want boolean"},
		{"first_failure false", `"first_failure":true`, `"first_failure":false`, "want true"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := strings.Replace(good, tc.from, tc.to, 1)
			if bad == good {
				t.Fatalf("edit %q not applied", tc.from)
			}
			// A duplicate key is replaced by the later one when decoded.
			doc, err := healthtest.Decode([]byte(bad))
			if err != nil {
				t.Fatal(err)
			}
			errs := v.Validate(doc)
			if !strings.Contains(strings.Join(errs, "\n"), tc.want) {
				t.Errorf("violations %q do not include %q", errs, tc.want)
			}
		})
	}
	// A schema keyword the validator would ignore is itself an error.
	v2 := mustValidator(t, []byte(`{"type": "object", "maxProperties": 3}`))
	if errs := v2.Validate(map[string]any{}); len(errs) != 1 || !strings.Contains(errs[0], "unsupported") {
		t.Errorf("unknown keyword: %v", errs)
	}
}

func mustValidator(t *testing.T, schema []byte) *healthtest.Validator {
	t.Helper()
	v, err := healthtest.NewValidator(schema)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func validDoc(t *testing.T, schema string, b []byte) {
	t.Helper()
	s := HealthSchemaJSON
	if schema == "metrics.schema.json" {
		s = MetricsSchemaJSON
	}
	healthtest.Check(t, s, b)
}
