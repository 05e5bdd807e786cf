package feed_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/pgfeed/pgfeed/feed"
	"github.com/pgfeed/pgfeed/internal/pgtest"
	"github.com/pgfeed/pgfeed/listener"
)

// insertRows inserts rows [from, to) into orders, one transaction each.
func (e *env) insertRows(from, to int) {
	e.t.Helper()
	for i := from; i < to; i++ {
		e.exec(`INSERT INTO orders (id, status) VALUES ($1, 'open')`, i)
	}
}

// checkIDs checks changes are inserts of rows [from, from+len).
func checkIDs(t *testing.T, what string, changes []map[string]any, from int) {
	t.Helper()
	for i, m := range changes {
		if m["op"] != "insert" || keyID(m) != from+i {
			t.Fatalf("%s: change %d is %v %d, want insert %d", what, i, m["op"], keyID(m), from+i)
		}
	}
}

// TestResumeWS: disconnect, 1,000 changes, reconnect with the last cursor:
// exactly the missed changes, then live ones. From memory, with both
// sources, and (with a tiny history) from the trigger source's change log.
func TestResumeWS(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		source  string
		history int
	}{{"memory", "trigger", 0}, {"log", "trigger", 10}, {"memory-logical", "logical", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnvSource(t, tc.source)
			n := e.startNode(feed.Config{History: tc.history})
			c := n.dial(t, "")
			c.subscribe(map[string]any{"id": "s", "table": "orders"})
			e.insertRows(0, 5)
			got := c.changes(5, wait)
			checkIDs(t, "before", got, 0)
			last := got[4]["cursor"].(string)
			c.conn.CloseNow()

			e.insertRows(5, 1005)
			d := n.dial(t, "")
			start := d.subscribe(map[string]any{"id": "s", "table": "orders", "since": last})
			if start != last {
				t.Errorf("subscribed from %q, want the given cursor %q", start, last)
			}
			checkIDs(t, "replay", d.changes(1000, wait), 5)
			e.insertRows(1005, 1010)
			checkIDs(t, "live", d.changes(5, wait), 1005)
			d.send(map[string]any{"type": "ping"})
			if m := d.next(wait); m["type"] != "pong" {
				t.Fatalf("after the live changes: %v (a duplicate?)", m)
			}
		})
	}
}

// TestResumeWhileWriting: a resume whose replay overlaps live writes still
// yields every change once, in order.
func TestResumeWhileWriting(t *testing.T) { bothSources(t, testResumeWhileWriting) }

func testResumeWhileWriting(t *testing.T, e *env) {
	n := e.startNode(feed.Config{History: e.history(50)})
	c := n.dial(t, "")
	start := c.subscribe(map[string]any{"id": "s", "table": "orders"})
	c.conn.CloseNow()
	e.insertRows(0, 300)
	done := make(chan struct{})
	go func() {
		defer close(done)
		w := newWriter(t, e.url)
		for i := 300; i < 600; i++ {
			w.exec(`INSERT INTO orders (id) VALUES ($1)`, i)
		}
	}()
	d := n.dial(t, "")
	d.subscribe(map[string]any{"id": "s", "table": "orders", "since": start})
	checkIDs(t, "resume during writes", d.changes(600, wait), 0)
	<-done
}

// TestExpiredCursor: a cursor older than the retained log (or invented)
// gets a reset, then live changes.
func TestExpiredCursor(t *testing.T) { bothSources(t, testExpiredCursor) }

func testExpiredCursor(t *testing.T, e *env) {
	n := e.startNode(feed.Config{History: 1})
	c := n.dial(t, "")
	c.subscribe(map[string]any{"id": "s", "table": "orders"})
	e.insertRows(0, 3)
	old := c.changes(3, wait)[0]["cursor"].(string)
	if e.source == "trigger" {
		// Prune everything up to now, as retention would. (The logical
		// source has no log: a cursor older than its history is expired.)
		e.exec(`DELETE FROM pgfeed.ticks WHERE id < (SELECT max(id) FROM pgfeed.ticks)`)
	}

	for _, since := range []string{old, "t999999-0"} {
		d := n.dial(t, "")
		d.send(map[string]any{"type": "subscribe", "id": "r", "table": "orders", "since": since})
		m := d.next(wait)
		if m["type"] != "subscribed" {
			t.Fatalf("got %v", m)
		}
		if m := d.next(wait); m["type"] != "reset" || m["sub"] != "r" || m["reason"] != "cursor_expired" {
			t.Fatalf("since %s: got %v, want reset", since, m)
		}
		e.insertRows(100+len(since), 101+len(since))
		d.expectNext("r", "insert", 100+len(since))
	}

	// Long polling: 409.
	resp, err := http.Get("http://" + n.addr + "/v1/changes/orders?since=" + old)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != 409 || body["error"] != "cursor_expired" {
		t.Errorf("long poll with an expired cursor: %d %v", resp.StatusCode, body)
	}

	// SSE: event: reset.
	s, resp := n.sse(t, "/v1/sse/orders?since="+old, nil)
	if s == nil {
		t.Fatalf("SSE status %d", resp.StatusCode)
	}
	if ev := s.next(wait); ev.event != "reset" {
		t.Errorf("SSE with an expired cursor: %+v", ev)
	}
	// A Last-Event-ID that is no cursor is an unknown one: a reset, not a
	// 400 that would stop an EventSource from reconnecting.
	s, resp = n.sse(t, "/v1/sse/orders", http.Header{"Last-Event-ID": {"garbage"}})
	if s == nil {
		t.Fatalf("SSE with Last-Event-ID garbage: status %d", resp.StatusCode)
	}
	if ev := s.next(wait); ev.event != "reset" {
		t.Errorf("SSE with Last-Event-ID garbage: %+v", ev)
	}
}

// TestResumeSSE: ids are cursors; a reconnect with Last-Event-ID gets
// exactly what it missed.
func TestResumeSSE(t *testing.T) { bothSources(t, testResumeSSE) }

func testResumeSSE(t *testing.T, e *env) {
	n := e.startNode(feed.Config{History: e.history(10)})
	s, resp := n.sse(t, "/v1/sse/public.orders?status=eq.open", nil)
	if s == nil {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for _, h := range []string{"Content-Type", "Cache-Control", "X-Accel-Buffering"} {
		if resp.Header.Get(h) == "" {
			t.Errorf("SSE response lacks %s", h)
		}
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type %q", ct)
	}
	e.insertRows(0, 3)
	e.exec(`INSERT INTO orders (id, status) VALUES (3, 'closed')`) // filtered out
	var last string
	for i := range 3 {
		ev := s.next(wait)
		var m map[string]any
		if err := json.Unmarshal([]byte(ev.data), &m); err != nil {
			t.Fatal(err)
		}
		if ev.event != "change" || ev.id != m["cursor"] || int(m["key"].(map[string]any)["id"].(float64)) != i {
			t.Fatalf("event %d: %+v", i, ev)
		}
		last = ev.id
	}
	s.cancel()

	e.insertRows(10, 1010)
	s2, resp := n.sse(t, "/v1/sse/public.orders?status=eq.open", http.Header{"Last-Event-ID": {last}})
	if s2 == nil {
		t.Fatalf("status %d", resp.StatusCode)
	}
	for i := 10; i < 1010; i++ {
		ev := s2.next(wait)
		var m map[string]any
		if err := json.Unmarshal([]byte(ev.data), &m); err != nil {
			t.Fatal(err)
		}
		if id := int(m["key"].(map[string]any)["id"].(float64)); id != i {
			t.Fatalf("resumed event is row %d, want %d", id, i)
		}
	}
}

// TestLongPoll: since and wait; the returned cursor continues exactly.
func TestLongPoll(t *testing.T) { bothSources(t, testLongPoll) }

func testLongPoll(t *testing.T, e *env) {
	n := e.startNode(feed.Config{History: e.history(10)})
	status, body := n.poll(t, "/v1/changes/orders?wait=50ms")
	if status != 200 || len(body["changes"].([]any)) != 0 || body["cursor"] == "" {
		t.Fatalf("empty poll: %d %v", status, body)
	}
	cursor := body["cursor"].(string)
	// wait=0 answers at once, still with a cursor to poll again from.
	status, body = n.poll(t, "/v1/changes/orders?wait=0s")
	if c, err := listener.ParseCursor(fmt.Sprint(body["cursor"])); status != 200 || err != nil || c.Tick < 1 {
		t.Fatalf("wait=0s: %d %v", status, body)
	}
	e.insertRows(0, 1000)
	// Once the node has the last row, every poll from an earlier cursor is
	// a replay (from the trigger log, past the history of 10): wait=0s
	// answers it, never with an empty list.
	if _, body := n.poll(t, "/v1/changes/orders?wait=30s&id=eq.999&since="+cursor); len(body["changes"].([]any)) != 1 {
		t.Fatalf("poll for the last row: %v", body)
	}
	seen := 0
	for seen < 1000 {
		status, body := n.poll(t, "/v1/changes/orders?wait=0s&since="+cursor)
		if status != 200 {
			t.Fatalf("poll: %d %v", status, body)
		}
		changes := body["changes"].([]any)
		if len(changes) == 0 {
			t.Fatalf("empty answer after %d changes", seen)
		}
		for _, c := range changes {
			m := c.(map[string]any)
			if keyID(m) != seen {
				t.Fatalf("poll gave row %d, want %d", keyID(m), seen)
			}
			seen++
		}
		cursor = body["cursor"].(string)
	}
	// A poll that waits gets a change made while it waits (with since, a
	// change made before the poll has subscribed counts too).
	got := make(chan map[string]any, 1)
	go func() {
		_, body := n.poll(t, "/v1/changes/orders?wait=30s&id=eq.5000&since="+cursor)
		got <- body
	}()
	e.exec(`INSERT INTO orders (id) VALUES (4999), (5000)`)
	body = <-got
	changes := body["changes"].([]any)
	if len(changes) != 1 || keyID(changes[0].(map[string]any)) != 5000 {
		t.Fatalf("waiting poll: %v", body)
	}
}

// TestResumeOnAnotherNode: two nodes on one database; a client that read
// from one resumes on the other with its cursor.
func TestResumeOnAnotherNode(t *testing.T) { bothSources(t, testResumeOnAnotherNode) }

func testResumeOnAnotherNode(t *testing.T, e *env) {
	a := e.startNode(feed.Config{})
	b := e.startNode(feed.Config{})
	c := a.dial(t, "")
	c.subscribe(map[string]any{"id": "s", "table": "orders"})
	e.insertRows(0, 10)
	last := c.changes(10, wait)[9]["cursor"].(string)
	c.conn.CloseNow()
	e.insertRows(10, 510)
	d := b.dial(t, "")
	d.subscribe(map[string]any{"id": "s", "table": "orders", "since": last})
	checkIDs(t, "on the other node", d.changes(500, wait), 10)
	e.insertRows(510, 511)
	d.expectNext("s", "insert", 510)
	// And the same cursor on the first node gives the same changes.
	f := a.dial(t, "")
	f.subscribe(map[string]any{"id": "s", "table": "orders", "since": last})
	checkIDs(t, "on the first node", f.changes(501, wait), 10)
}

// history is the History a test that wants part of its replay read from
// the trigger log asks for: the logical source has no log (a cursor older
// than its history gets a reset), so it keeps the default.
func (e *env) history(n int) int {
	if e.source == "logical" {
		return 0
	}
	return n
}

// writer is a separate connection for concurrent writes.
type writer struct {
	t *testing.T
	e *env
}

func newWriter(t *testing.T, url string) *writer {
	e := &env{t: t, url: url}
	e.db = pgtest.Connect(t, url)
	return &writer{t: t, e: e}
}

func (w *writer) exec(sql string, args ...any) { w.e.exec(sql, args...) }
