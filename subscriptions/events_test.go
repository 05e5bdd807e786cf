package subscriptions

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseEvents(t *testing.T) {
	tests := []struct {
		names []string
		want  Events
		err   string
	}{
		{names: nil, want: AllEvents},
		{names: []string{}, want: AllEvents},
		{names: []string{""}, want: AllEvents},
		{names: []string{"insert"}, want: Insert},
		{names: []string{"update", "delete"}, want: Update | Delete},
		{names: []string{"insert,truncate"}, want: Insert | Truncate},
		{names: []string{" insert , update,", "update"}, want: Insert | Update},
		{names: []string{"insert", "upsert"}, err: `unknown event "upsert"`},
		{names: []string{"INSERT"}, err: `unknown event "INSERT"`},
	}
	for _, tt := range tests {
		got, err := ParseEvents(tt.names)
		if tt.err != "" {
			if err == nil || !errors.Is(err, ErrBadEvents) || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseEvents(%q) error = %v, want %q", tt.names, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseEvents(%q) = %v, %v; want %v", tt.names, got, err, tt.want)
		}
	}
	e := Insert | Delete
	for op, want := range map[string]bool{"insert": true, "delete": true, "update": false, "truncate": false, "": false, "x": false} {
		if e.Has(op) != want {
			t.Errorf("Has(%q) = %v", op, !want)
		}
	}
	if got := AllEvents.String(); got != "insert,update,delete,truncate" {
		t.Errorf("String = %q", got)
	}
}

func TestParseSelect(t *testing.T) {
	tbl := &Table{
		Name:    "public.items",
		Columns: []Column{{"org", "text"}, {"id", "int4"}, {"status", "text"}, {"total", "numeric"}},
		Key:     []string{"org", "id"},
	}
	tests := []struct {
		in   string
		want []string
		err  string
	}{
		{in: "", want: nil},
		{in: " ", want: nil},
		{in: "*", want: nil},
		{in: "status", want: []string{"org", "id", "status"}},
		{in: "total, status,total", want: []string{"org", "id", "status", "total"}},
		{in: "id", want: []string{"org", "id"}},
		{in: "status,", want: []string{"org", "id", "status"}},
		{in: "status,nope", err: "table public.items has no column nope"},
		{in: "Status", err: "no column Status"},
	}
	for _, tt := range tests {
		got, err := ParseSelect(tt.in, tbl)
		if tt.err != "" {
			if err == nil || !errors.Is(err, ErrUnknownColumn) || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseSelect(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseSelect(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestProject(t *testing.T) {
	r := Row{"id": json.Number("1"), "status": "open", "secret": "x"}
	p := Project(r, []string{"id", "status", "missing"})
	if !reflect.DeepEqual(p, Row{"id": json.Number("1"), "status": "open"}) {
		t.Errorf("Project = %v", p)
	}
	if len(r) != 3 || r["secret"] != "x" {
		t.Errorf("Project modified its row: %v", r)
	}
	p["id"] = "changed"
	if r["id"] != json.Number("1") {
		t.Errorf("Project's result shares the row")
	}
	if got := Project(r, nil); !reflect.DeepEqual(got, r) {
		t.Errorf("Project(nil cols) = %v", got)
	}
	if got := Project(nil, []string{"id"}); got != nil {
		t.Errorf("Project(nil row) = %v", got)
	}
	if got := Project(r, []string{}); len(got) != 0 || got == nil {
		t.Errorf("Project(no cols) = %#v", got)
	}
}

func TestDecodeRow(t *testing.T) {
	r, err := DecodeRow([]byte(`{"id":9007199254740993,"t":"x","n":null,"a":[1],"o":{"k":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Row{"id": json.Number("9007199254740993"), "t": "x", "n": nil, "a": []any{json.Number("1")}, "o": map[string]any{"k": true}}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("DecodeRow = %#v", r)
	}
	for _, in := range []string{"", "null", " null "} {
		if r, err := DecodeRow([]byte(in)); r != nil || err != nil {
			t.Errorf("DecodeRow(%q) = %v, %v", in, r, err)
		}
	}
	for _, in := range []string{"[1]", "1", `"x"`, "{", `{"a":1} {}`, `{"a":1}]`, "nul"} {
		if _, err := DecodeRow([]byte(in)); err == nil {
			t.Errorf("DecodeRow(%q) succeeded", in)
		}
	}
}
