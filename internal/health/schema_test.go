package health

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// validator checks a document against the subset of JSON Schema (2020-12) that the contract's
// schemas use. A keyword it does not know is an error, so a schema cannot rely on a rule that
// nothing here enforces.
type validator struct {
	root map[string]any
}

var annotations = map[string]bool{"$schema": true, "$id": true, "title": true, "description": true, "$defs": true}

func loadSchema(t *testing.T, file string) *validator {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var root map[string]any
	if err := json.Unmarshal(b, &root); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return &validator{root: root}
}

func decodeDoc(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

// validate returns every violation of doc, each with its JSON path.
func (v *validator) validate(doc any) []string {
	var errs []string
	v.check(v.root, doc, "$", &errs)
	return errs
}

func (v *validator) check(s map[string]any, x any, path string, errs *[]string) {
	fail := func(format string, args ...any) { *errs = append(*errs, path+": "+fmt.Sprintf(format, args...)) }
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		arg := s[k]
		switch k {
		case "$ref":
			ref, _ := arg.(string)
			name, ok := strings.CutPrefix(ref, "#/$defs/")
			defs, _ := v.root["$defs"].(map[string]any)
			sub, _ := defs[name].(map[string]any)
			if !ok || sub == nil {
				fail("schema: unresolvable $ref %q", ref)
				continue
			}
			v.check(sub, x, path, errs)
		case "type":
			if !hasType(x, arg.(string)) {
				fail("want %s, got %s", arg, typeOf(x))
			}
		case "const":
			if !equalJSON(x, arg) {
				fail("want %v, got %v", arg, x)
			}
		case "enum":
			found := false
			for _, e := range arg.([]any) {
				found = found || equalJSON(x, e)
			}
			if !found {
				fail("%v is not one of %v", x, arg)
			}
		case "properties":
			if o, ok := x.(map[string]any); ok {
				for name, sub := range arg.(map[string]any) {
					if val, ok := o[name]; ok {
						v.check(sub.(map[string]any), val, path+"."+name, errs)
					}
				}
			}
		case "required":
			if o, ok := x.(map[string]any); ok {
				for _, name := range arg.([]any) {
					if _, ok := o[name.(string)]; !ok {
						fail("missing required %q", name)
					}
				}
			}
		case "additionalProperties":
			o, ok := x.(map[string]any)
			if !ok {
				continue
			}
			props, _ := s["properties"].(map[string]any)
			for name, val := range o {
				if _, known := props[name]; known {
					continue
				}
				switch a := arg.(type) {
				case bool:
					if !a {
						fail("unexpected key %q", name)
					}
				case map[string]any:
					v.check(a, val, path+"."+name, errs)
				}
			}
		case "propertyNames":
			if o, ok := x.(map[string]any); ok {
				for name := range o {
					v.check(arg.(map[string]any), name, path+"{"+name+"}", errs)
				}
			}
		case "items":
			if a, ok := x.([]any); ok {
				for i, e := range a {
					v.check(arg.(map[string]any), e, fmt.Sprintf("%s[%d]", path, i), errs)
				}
			}
		case "minItems":
			if a, ok := x.([]any); ok && float64(len(a)) < arg.(float64) {
				fail("%d items, want at least %v", len(a), arg)
			}
		case "minLength":
			if str, ok := x.(string); ok && float64(len([]rune(str))) < arg.(float64) {
				fail("%q is shorter than %v", str, arg)
			}
		case "pattern":
			if str, ok := x.(string); ok && !regexp.MustCompile(arg.(string)).MatchString(str) {
				fail("%q does not match %s", str, arg)
			}
		case "minimum":
			if n, ok := x.(json.Number); ok {
				if f, _ := n.Float64(); f < arg.(float64) {
					fail("%v is below %v", n, arg)
				}
			}
		case "format":
			if arg != "date-time" {
				fail("schema: format %q unsupported", arg)
			} else if str, ok := x.(string); ok {
				if _, err := time.Parse(time.RFC3339Nano, str); err != nil {
					fail("%q is not an RFC 3339 date-time", str)
				}
			}
		default:
			if !annotations[k] {
				fail("schema: keyword %q unsupported by this validator", k)
			}
		}
	}
}

func hasType(x any, t string) bool {
	switch t {
	case "object":
		_, ok := x.(map[string]any)
		return ok
	case "array":
		_, ok := x.([]any)
		return ok
	case "string":
		_, ok := x.(string)
		return ok
	case "boolean":
		_, ok := x.(bool)
		return ok
	case "number":
		_, ok := x.(json.Number)
		return ok
	case "integer":
		n, ok := x.(json.Number)
		if !ok {
			return false
		}
		_, err := n.Int64()
		return err == nil
	}
	return false
}

func typeOf(x any) string {
	switch x.(type) {
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case string:
		return "string"
	case bool:
		return "boolean"
	case json.Number:
		return "number"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", x)
}

func equalJSON(a, b any) bool {
	if n, ok := a.(json.Number); ok {
		f, _ := n.Float64()
		return f == b
	}
	return a == b
}

// validDoc fails t with every violation of the document b against the schema file.
func validDoc(t *testing.T, schemaFile string, b []byte) {
	t.Helper()
	doc, err := decodeDoc(b)
	if err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	if errs := loadSchema(t, schemaFile).validate(doc); len(errs) > 0 {
		t.Errorf("%s: %d violations:\n%s\ndocument:\n%s", schemaFile, len(errs), strings.Join(errs, "\n"), b)
	}
}

// TestValidatorRejects: the validator must be able to fail, or every schema test passes vacuously.
func TestValidatorRejects(t *testing.T) {
	good := `{"schema":"dnssensor.health/v1","daemon":"sensord","time":"2026-01-02T03:04:05Z","started":"2026-01-02T03:00:00Z","ok":false,
	  "first_failure_path":["input"],
	  "checks":[{"name":"input","ok":false,"since":"2026-01-02T03:00:00Z","detail":"","fix":"","first_failure":true,
	    "children":[{"name":"records","ok":true,"since":"2026-01-02T03:00:00Z","detail":"1 record","fix":""}]}]}`
	v := loadSchema(t, "health.schema.json")
	doc, err := decodeDoc([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if errs := v.validate(doc); len(errs) > 0 {
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
			doc, err := decodeDoc([]byte(bad))
			if err != nil {
				t.Fatal(err)
			}
			errs := v.validate(doc)
			if !strings.Contains(strings.Join(errs, "\n"), tc.want) {
				t.Errorf("violations %q do not include %q", errs, tc.want)
			}
		})
	}
	// A schema keyword the validator would ignore is itself an error.
	v2 := &validator{root: map[string]any{"type": "object", "maxProperties": 3.0}}
	if errs := v2.validate(map[string]any{}); len(errs) != 1 || !strings.Contains(errs[0], "unsupported") {
		t.Errorf("unknown keyword: %v", errs)
	}
}
