package feed

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/subscriptions"
)

// event is one change on its way to clients: decoded once for matching, and
// encoded once per distinct projection (column list) that its subscribers
// ask for. Only the fan-out goroutine touches an event's encodings.
type event struct {
	cursor listener.Cursor
	table  string // schema.table
	op     string
	key    []byte // compact JSON, never projected
	new    fields // nil when absent
	old    fields
	time   time.Time
	// unchanged names the columns left out of new because their TOASTed
	// value did not change (logical source only).
	unchanged []string

	match subscriptions.Change // decoded rows for the filters

	mu      sync.Mutex
	encoded map[string][]byte // guarded by mu: projection key -> full event JSON
	encSize int               // guarded by mu: total size of encoded
	// counted, when set, is the hub's tally of encodings held by its
	// history: every new encoding is added to it.
	counted *atomic.Int64
	bare    *event // guarded by mu: the key-only version (deletes under RLS)
	keyOld  *event // guarded by mu: old cut to the key (updates under RLS)
}

// withKeyOld returns the event with its old row cut to the key columns:
// what an update looks like under row-level security, which checks only
// the row as it is now, not the version it replaced.
func (e *event) withKeyOld() *event {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.keyOld == nil {
		keys, _ := parseFields(e.key)
		var old fields
		if e.old != nil {
			old = fields{}
			for _, f := range e.old {
				for _, k := range keys {
					if k.name == f.name {
						old = append(old, f)
					}
				}
			}
		}
		e.keyOld = &event{cursor: e.cursor, table: e.table, op: e.op, key: e.key, new: e.new, old: old, time: e.time, unchanged: e.unchanged, match: e.match}
	}
	return e.keyOld
}

// keyOnly returns the event without its rows: what a delete looks like to
// subscribers under row-level security, whose visibility can no longer be
// checked once the row is gone.
func (e *event) keyOnly() *event {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.bare == nil {
		e.bare = &event{cursor: e.cursor, table: e.table, op: e.op, key: e.key, time: e.time, match: e.match}
	}
	return e.bare
}

// field is one column of a row as to_jsonb rendered it, order kept.
type field struct {
	name  string
	qname []byte // name as a JSON string
	raw   []byte // compact JSON value
}

type fields []field

// parseFields splits a JSON object into its members, keeping their order and
// compacting each value. JSON null (or nothing) gives nil. Names and values
// point into raw: the listener hands over compact JSON, so nothing is
// copied unless a nested value holds whitespace.
func parseFields(raw []byte) (fields, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	if raw[0] != '{' || !json.Valid(raw) {
		return nil, fmt.Errorf("row is not a JSON object")
	}
	fs := fields{}
	err := listener.EachMember(raw, func(q, v []byte) error {
		name, err := listener.MemberName(q)
		if err != nil {
			return err
		}
		if (v[0] == '{' || v[0] == '[') && bytes.ContainsAny(v, " \t\r\n") {
			var buf bytes.Buffer
			if err := json.Compact(&buf, v); err != nil {
				return err
			}
			v = buf.Bytes()
		}
		qname := q[:len(q):len(q)]
		if !utf8.Valid(q) {
			qname = appendJSONString(nil, name)
		}
		fs = append(fs, field{name: name, qname: qname, raw: v[:len(v):len(v)]})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return fs, nil
}

func (fs fields) appendJSON(b []byte, keep func(string) bool) []byte {
	if fs == nil {
		return append(b, "null"...)
	}
	b = append(b, '{')
	first := true
	for _, f := range fs {
		if keep != nil && !keep(f.name) {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, f.qname...)
		b = append(b, ':')
		b = append(b, f.raw...)
	}
	return append(b, '}')
}

// newEvent prepares a change from the listener for matching and encoding.
func newEvent(c listener.Change) (*event, error) {
	e := &event{cursor: c.Cursor, table: c.Schema + "." + c.Table, op: c.Op, time: c.CommitTime, unchanged: c.Unchanged}
	var err error
	if e.new, err = parseFields(c.New); err != nil {
		return nil, fmt.Errorf("change %s: new row: %w", c.Cursor, err)
	}
	if e.old, err = parseFields(c.Old); err != nil {
		return nil, fmt.Errorf("change %s: old row: %w", c.Cursor, err)
	}
	if k := bytes.TrimSpace(c.Key); len(k) > 0 && string(k) != "null" {
		var buf bytes.Buffer
		if err := json.Compact(&buf, k); err != nil {
			return nil, fmt.Errorf("change %s: key: %w", c.Cursor, err)
		}
		e.key = buf.Bytes()
	}
	e.match = subscriptions.Change{Table: e.table, Op: e.op}
	if e.new != nil {
		if e.match.New, err = subscriptions.DecodeRow(c.New); err != nil {
			return nil, fmt.Errorf("change %s: new row: %w", c.Cursor, err)
		}
	}
	if e.old != nil {
		if e.match.Old, err = subscriptions.DecodeRow(c.Old); err != nil {
			return nil, fmt.Errorf("change %s: old row: %w", c.Cursor, err)
		}
	}
	return e, nil
}

// projection is a sorted column list; its key is the list joined by commas
// ("" for every column).
type projection struct {
	key  string
	cols map[string]bool // nil: every column
}

func newProjection(cols []string) projection {
	if len(cols) == 0 {
		return projection{}
	}
	p := projection{cols: make(map[string]bool, len(cols))}
	names := make([]string, 0, len(cols))
	for _, c := range cols {
		if !p.cols[c] {
			p.cols[c] = true
			names = append(names, c)
		}
	}
	slices.Sort(names)
	p.key = strings.Join(names, ",")
	return p
}

// json returns the change event for projection p, encoding it the first
// time p is asked for; every subscriber with that projection shares the
// bytes, which must not be modified.
func (e *event) json(p projection) []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	if b, ok := e.encoded[p.key]; ok {
		return b
	}
	var keep func(string) bool
	if p.cols != nil {
		keep = func(name string) bool { return p.cols[name] }
	}
	b := make([]byte, 0, 128+len(e.key)+rowSize(e.new)+rowSize(e.old))
	b = append(b, `{"cursor":`...)
	b = appendJSONString(b, e.cursor.String())
	b = append(b, `,"table":`...)
	b = appendJSONString(b, e.table)
	b = append(b, `,"op":`...)
	b = appendJSONString(b, e.op)
	b = append(b, `,"key":`...)
	if e.key == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, e.key...)
	}
	b = append(b, `,"new":`...)
	b = e.new.appendJSON(b, keep)
	b = append(b, `,"old":`...)
	b = e.old.appendJSON(b, keep)
	b = append(b, `,"commit_time":"`...)
	b = e.time.UTC().AppendFormat(b, "2006-01-02T15:04:05.000000Z")
	b = append(b, '"')
	// Only on updates from the logical source: the columns new leaves out,
	// as far as the projection keeps them; absent when there are none.
	n := 0
	for _, c := range e.unchanged {
		if keep == nil || keep(c) {
			if n == 0 {
				b = append(b, `,"unchanged_toast":[`...)
			} else {
				b = append(b, ',')
			}
			b = appendJSONString(b, c)
			n++
		}
	}
	if n > 0 {
		b = append(b, ']')
	}
	b = append(b, '}')
	if e.encoded == nil {
		e.encoded = make(map[string][]byte, 1)
	}
	e.encoded[p.key] = b
	e.encSize += len(b)
	if e.counted != nil {
		e.counted.Add(int64(len(b)))
	}
	return b
}

// appendJSONString appends s as a JSON string (strconv.Quote writes Go
// escapes, which JSON does not have).
func appendJSONString(b []byte, s string) []byte {
	q, err := json.Marshal(s)
	if err != nil { // not for a string
		return append(b, `""`...)
	}
	return append(b, q...)
}

// size approximates the memory an event holds besides its encodings (which
// the hub counts as they are made): the parsed rows and the decoded rows
// used for matching, about as much again.
func (e *event) size() int {
	n := 2*(len(e.key)+rowSize(e.new)+rowSize(e.old)) + 256
	for _, c := range e.unchanged {
		n += len(c) + 16
	}
	return n
}

func rowSize(fs fields) int {
	n := 4
	for _, f := range fs {
		n += len(f.name) + len(f.raw) + 4
	}
	return n
}
