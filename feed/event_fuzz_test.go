package feed

import (
	"bytes"
	"encoding/json"
	"testing"
)

// referenceFields splits an object with encoding/json: what parseFields
// must agree with.
func referenceFields(raw []byte) (names []string, values []string, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, false
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, nil, false
		}
		var buf bytes.Buffer
		if err := json.Compact(&buf, v); err != nil {
			return nil, nil, false
		}
		names = append(names, tok.(string))
		values = append(values, buf.String())
	}
	return names, values, true
}

// FuzzParseFields: parseFields splits any valid JSON object exactly as
// encoding/json does (names decoded, values compacted, order kept), refuses
// what is not an object, and never panics.
func FuzzParseFields(f *testing.F) {
	for _, s := range []string{`{"a":1,"b":"x"}`, `{"a b": {"c": [1, 2]}, "\u00e9\"": null}`, `{}`, `null`, `[1]`, ` {"a" : "b\\"}`, `{"a":1,}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		fs, err := parseFields(raw)
		trimmed := bytes.TrimSpace(raw)
		if len(trimmed) == 0 || string(trimmed) == "null" {
			if err != nil || fs != nil {
				t.Fatalf("%q: %v, %v; want nil, nil", raw, fs, err)
			}
			return
		}
		names, values, ok := referenceFields(trimmed)
		if !json.Valid(trimmed) || trimmed[0] != '{' {
			ok = false
		}
		if !ok {
			if err == nil {
				t.Fatalf("%q accepted as %v", raw, fs)
			}
			return
		}
		if err != nil {
			t.Fatalf("%q refused: %v", raw, err)
		}
		if len(fs) != len(names) {
			t.Fatalf("%q: %d fields, want %d", raw, len(fs), len(names))
		}
		for i, f := range fs {
			if f.name != names[i] || string(f.raw) != values[i] {
				t.Fatalf("%q: field %d = %q %s, want %q %s", raw, i, f.name, f.raw, names[i], values[i])
			}
			var back string
			if json.Unmarshal(f.qname, &back) != nil || back != f.name {
				t.Fatalf("%q: qname %s does not spell %q", raw, f.qname, f.name)
			}
		}
		if !json.Valid(fs.appendJSON(nil, nil)) {
			t.Fatalf("%q: re-encoded row is not JSON", raw)
		}
	})
}
