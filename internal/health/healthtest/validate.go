// Package healthtest validates the health contract's documents against its JSON schemas, for the
// tests of every daemon that serves the contract.
package healthtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// Validator checks a document against the subset of JSON Schema (2020-12) that the contract's
// schemas use. A keyword it does not know is an error, so a schema cannot rely on a rule that
// nothing here enforces.
type Validator struct {
	root map[string]any
}

var annotations = map[string]bool{"$schema": true, "$id": true, "title": true, "description": true, "$defs": true}

// NewValidator reads a schema.
func NewValidator(schema []byte) (*Validator, error) {
	var root map[string]any
	if err := json.Unmarshal(schema, &root); err != nil {
		return nil, fmt.Errorf("schema: %v", err)
	}
	return &Validator{root: root}, nil
}

// Decode reads a JSON document as Validate wants it (numbers kept as json.Number).
func Decode(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

// Validate returns every violation of doc, each with its JSON path.
func (v *Validator) Validate(doc any) []string {
	var errs []string
	v.check(v.root, doc, "$", &errs)
	return errs
}

func (v *Validator) check(s map[string]any, x any, path string, errs *[]string) {
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

// Check fails t with every violation of the JSON document doc against schema.
func Check(t testing.TB, schema, doc []byte) {
	t.Helper()
	v, err := NewValidator(schema)
	if err != nil {
		t.Fatal(err)
	}
	d, err := Decode(doc)
	if err != nil {
		t.Fatalf("not JSON: %v\n%s", err, doc)
	}
	if errs := v.Validate(d); len(errs) > 0 {
		t.Errorf("%d schema violations:\n%s\ndocument:\n%s", len(errs), strings.Join(errs, "\n"), doc)
	}
}
