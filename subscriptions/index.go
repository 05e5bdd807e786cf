package subscriptions

import (
	"bytes"
	"slices"
	"sync"
)

// Index maps a change to the subscriptions it matches without looking at
// the others. A subscription with an eq condition (else an in condition) is
// filed under that condition's column and value(s); the others are kept in
// a per-table list that every change of the table scans. A change looks up,
// for each column of its table that has filed subscriptions, the bucket of
// its new value and of its old value, and evaluates each candidate's whole
// filter; its cost grows with the number of candidates, not of
// subscriptions.
//
// Index is safe for concurrent use. One RWMutex, mu, guards everything in
// it: Add and Remove take it for writing, Match for reading, and Match
// calls its fn with the read lock held, so fn must not call Add or Remove
// on the same Index (that deadlocks) and should not block.
type Index struct {
	mu     sync.RWMutex
	subs   map[*Sub]*entry        // guarded by mu
	tables map[string]*tableIndex // guarded by mu
}

// tableIndex holds the subscriptions of one table. Guarded by Index.mu.
type tableIndex struct {
	cols []*colIndex // columns with filed subscriptions
	scan []*entry    // subscriptions without eq or in: evaluated on every change
	n    int         // subscriptions on the table
}

// colIndex holds the subscriptions filed under one column. Guarded by
// Index.mu.
type colIndex struct {
	name    string
	buckets map[string][]*entry // index key of a value -> subscriptions
	n       int                 // subscriptions filed here
}

// entry is one added Sub, with what the index read from it when added.
// Guarded by Index.mu.
type entry struct {
	sub    *Sub
	table  string
	events Events
	conds  []cond
	col    *colIndex // nil: in the table's scan list
	colKey string    // column of the eq or in condition the entry is filed under
	keys   []string  // keys of col's buckets holding the entry, each once
	pos    []int     // pos[i]: the entry's place in bucket keys[i]; in scan: pos[0]
}

// NewIndex returns an empty index. The zero Index is empty and ready too.
func NewIndex() *Index {
	return &Index{subs: make(map[*Sub]*entry), tables: make(map[string]*tableIndex)}
}

// newEntry reads s and chooses how to file it: under its first eq
// condition, else under its in condition with the fewest values, else in
// the scan list.
func newEntry(s *Sub) *entry {
	e := &entry{sub: s, table: s.Table, events: s.Events, conds: s.Filter.conds}
	var in *cond
	for i := range e.conds {
		c := &e.conds[i]
		if c.op == opEq {
			e.colKey, e.keys = c.col, c.v.keys
			return e
		}
		if c.op == opIn && (in == nil || len(c.list) < len(in.list)) {
			in = c
		}
	}
	if in != nil {
		e.colKey = in.col
		for i := range in.list {
			for _, k := range in.list[i].keys {
				e.keys = appendKey(e.keys, k)
			}
		}
	}
	return e
}

// Add adds s. Adding a Sub that is already in the index replaces it, so a
// changed Filter or Events takes effect.
func (ix *Index) Add(s *Sub) {
	e := newEntry(s)
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.subs == nil {
		ix.subs = make(map[*Sub]*entry)
		ix.tables = make(map[string]*tableIndex)
	}
	if old := ix.subs[s]; old != nil {
		ix.remove(old)
	}
	t := ix.tables[e.table]
	if t == nil {
		t = &tableIndex{}
		ix.tables[e.table] = t
	}
	t.n++
	ix.subs[s] = e
	if e.keys == nil {
		e.pos = []int{len(t.scan)}
		t.scan = append(t.scan, e)
		return
	}
	var ci *colIndex
	for _, c := range t.cols {
		if c.name == e.colKey {
			ci = c
			break
		}
	}
	if ci == nil {
		ci = &colIndex{name: e.colKey, buckets: make(map[string][]*entry)}
		t.cols = append(t.cols, ci)
	}
	ci.n++
	e.col = ci
	e.pos = make([]int, len(e.keys))
	for i, k := range e.keys {
		b := ci.buckets[k]
		e.pos[i] = len(b)
		ci.buckets[k] = append(b, e)
	}
}

// Remove removes s; removing a Sub that is not in the index does nothing.
func (ix *Index) Remove(s *Sub) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if e := ix.subs[s]; e != nil {
		ix.remove(e)
	}
}

// remove removes e. ix.mu must be held for writing.
func (ix *Index) remove(e *entry) {
	delete(ix.subs, e.sub)
	t := ix.tables[e.table]
	if t.n--; t.n == 0 {
		delete(ix.tables, e.table)
		return
	}
	if e.col == nil {
		last := t.scan[len(t.scan)-1]
		t.scan[e.pos[0]] = last
		last.pos[0] = e.pos[0]
		t.scan[len(t.scan)-1] = nil
		t.scan = t.scan[:len(t.scan)-1]
		return
	}
	ci := e.col
	for i, k := range e.keys {
		b := ci.buckets[k]
		p := e.pos[i]
		last := b[len(b)-1]
		b[p] = last
		if last != e {
			last.pos[slices.Index(last.keys, k)] = p
		}
		b[len(b)-1] = nil
		if b = b[:len(b)-1]; len(b) == 0 {
			delete(ci.buckets, k)
		} else {
			ci.buckets[k] = b
		}
	}
	if ci.n--; ci.n == 0 {
		t.cols = slices.DeleteFunc(t.cols, func(c *colIndex) bool { return c == ci })
	}
}

// Len returns the number of subscriptions in the index.
func (ix *Index) Len() int {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return len(ix.subs)
}

// Match calls fn once for each subscription that gets change c, following
// the rules of Sub.Matches, in no particular order. It never calls fn twice
// for one subscription and one change, and costs no allocation when the
// values looked up are text or integers. fn runs with the index's read lock
// held: it must not call Add or Remove, and should not block.
func (ix *Index) Match(c *Change, fn func(*Sub)) {
	bit := eventOf(c.Op)
	if bit == 0 {
		return
	}
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	t := ix.tables[c.Table]
	if t == nil {
		return
	}
	if bit == Truncate {
		t.each(func(e *entry) {
			if e.events&Truncate != 0 {
				fn(e.sub)
			}
		})
		return
	}
	for _, e := range t.scan {
		if e.events&bit != 0 && matchChange(e.conds, bit, c) {
			fn(e.sub)
		}
	}
	if len(t.cols) == 0 {
		return
	}
	// The rows whose values are looked up: the ones the rules read.
	newRow, oldRow := c.New, c.Old
	switch bit {
	case Insert:
		oldRow = nil
	case Delete:
		newRow = nil
	}
	var nbuf, obuf [keyBuf]byte
	for _, ci := range t.cols {
		var nk, ok key
		if newRow != nil {
			nk = lookupKey(newRow, ci.name, nbuf[:])
		}
		if oldRow != nil {
			ok = lookupKey(oldRow, ci.name, obuf[:])
		}
		if nk.ok {
			for _, e := range ci.bucket(nk) {
				if e.events&bit != 0 && matchChange(e.conds, bit, c) {
					fn(e.sub)
				}
			}
		}
		if !ok.ok || nk.ok && nk.equal(ok) {
			continue
		}
		for _, e := range ci.bucket(ok) {
			if nk.ok && e.hasKey(nk) {
				continue // in the new value's bucket too: already done
			}
			if e.events&bit != 0 && matchChange(e.conds, bit, c) {
				fn(e.sub)
			}
		}
	}
}

// key is the index key of a row value: s, or b when it had to be built.
type key struct {
	s  string
	b  []byte
	ok bool // false: no value, or null (no bucket)
}

func lookupKey(row Row, col string, buf []byte) key {
	x, present := row[col]
	if !present {
		return key{}
	}
	s, b, ok := rowKey(x, buf)
	return key{s: s, b: b, ok: ok}
}

func (k key) is(s string) bool {
	if k.b != nil {
		return s == string(k.b)
	}
	return s == k.s
}

func (k key) equal(l key) bool {
	switch {
	case k.b != nil && l.b != nil:
		return bytes.Equal(k.b, l.b)
	case k.b != nil:
		return string(k.b) == l.s
	case l.b != nil:
		return string(l.b) == k.s
	}
	return k.s == l.s
}

func (ci *colIndex) bucket(k key) []*entry {
	if k.b != nil {
		return ci.buckets[string(k.b)]
	}
	return ci.buckets[k.s]
}

func (e *entry) hasKey(k key) bool {
	for _, s := range e.keys {
		if k.is(s) {
			return true
		}
	}
	return false
}

// each calls fn once for every subscription of t.
func (t *tableIndex) each(fn func(*entry)) {
	for _, e := range t.scan {
		fn(e)
	}
	for _, ci := range t.cols {
		for k, b := range ci.buckets {
			for _, e := range b {
				if e.keys[0] == k { // an entry is in several buckets: once
					fn(e)
				}
			}
		}
	}
}
