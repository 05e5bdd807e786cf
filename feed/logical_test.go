package feed_test

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pgfeed/pgfeed/feed"
	"github.com/pgfeed/pgfeed/internal/pgtest"
	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/subscriptions"
	"github.com/pgfeed/pgfeed/triggers"
)

// TestLogicalRestart: pgfeed stops while writes go on and a new pgfeed
// streams from the same slot; clients resume on it with their cursors and
// get every change exactly once, in order: the slot was confirmed no
// further than the first node's history, which the new node decodes again.
func TestLogicalRestart(t *testing.T) {
	t.Parallel()
	e := newEnvSource(t, "logical")
	slot := pgtest.Slot(t, e.url)
	a := e.startNodeOn(feed.Config{}, slot)

	// reader got everything up to its cursor; idle subscribed and read
	// nothing.
	reader := a.dial(t, "")
	reader.subscribe(map[string]any{"id": "s", "table": "orders"})
	idle := a.dial(t, "")
	idleFrom := idle.subscribe(map[string]any{"id": "s", "table": "orders"})
	e.insertRows(0, 100)
	got := reader.changes(100, wait)
	checkIDs(t, "before the restart", got, 0)
	last := got[99]["cursor"].(string)

	const total = 1500
	done := make(chan struct{})
	go func() {
		defer close(done)
		w := newWriter(t, e.url)
		for i := 100; i < total; i++ {
			w.exec(`INSERT INTO orders (id, status) VALUES ($1, 'open')`, i)
		}
	}()
	// Stop the first node in the middle of the writes, start the second
	// on its slot while they go on.
	poll := time.NewTicker(time.Millisecond)
	defer poll.Stop()
	for deadline := time.Now().Add(wait); ; <-poll.C {
		var n int
		if err := e.db.QueryRow(context.Background(), `SELECT count(*) FROM orders`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n >= 500 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer is stuck")
		}
	}
	a.stop()
	b := e.startNodeOn(feed.Config{}, slot)

	r := b.dial(t, "")
	if start := r.subscribe(map[string]any{"id": "s", "table": "orders", "since": last}); start != last {
		t.Errorf("resumed from %q, want %q", start, last)
	}
	i := b.dial(t, "")
	i.subscribe(map[string]any{"id": "s", "table": "orders", "since": idleFrom})
	checkIDs(t, "reader after the restart", r.changes(total-100, wait), 100)
	checkIDs(t, "idle client after the restart", i.changes(total, wait), 0)
	<-done
	// Nothing more: no duplicate trails the stream.
	e.insertRows(total, total+1)
	r.expectNext("s", "insert", total)
	i.expectNext("s", "insert", total)
}

// TestLogicalUnchangedTOAST: with the default replica identity, an update
// that leaves a TOASTed column unchanged carries the key as old, leaves the
// column out of new and names it in unchanged_toast (cut by select like
// the rows); a 1 MB value arrives whole.
func TestLogicalUnchangedTOAST(t *testing.T) {
	t.Parallel()
	e := newEnvSource(t, "logical")
	e.exec(`CREATE TABLE docs (id int PRIMARY KEY, body text, n int)`)
	if _, err := triggers.EnableLogical(context.Background(), e.db, triggers.Publication{}, "docs"); err != nil {
		t.Fatal(err)
	}
	p, err := subscriptions.CompilePolicies([]subscriptions.Policy{{Table: "public.docs", Roles: []string{"anon"}}})
	if err != nil {
		t.Fatal(err)
	}
	n := e.startNode(feed.Config{Policies: p})
	c := n.dial(t, "")
	c.subscribe(map[string]any{"id": "all", "table": "docs"})
	c.subscribe(map[string]any{"id": "slim", "table": "docs", "select": "n"})
	var big string
	if err := e.db.QueryRow(context.Background(), `SELECT string_agg(md5(i::text), '') FROM generate_series(1, 32768) i`).Scan(&big); err != nil {
		t.Fatal(err)
	}
	e.exec(`INSERT INTO docs VALUES (1, $1, 0)`, big)
	e.exec(`UPDATE docs SET n = 1`)
	type ev struct {
		Sub, Op        string
		New, Old       map[string]any
		UnchangedTOAST []string `json:"unchanged_toast"`
	}
	var evs []ev
	for range 4 {
		var x ev
		raw := c.nextRaw(wait)
		if err := json.Unmarshal(raw, &x); err != nil {
			t.Fatal(err)
		}
		if x.Op == "insert" && x.Sub == "slim" && strings.Contains(string(raw), "unchanged_toast") {
			t.Errorf("insert names unchanged columns: %.200s", raw)
		}
		evs = append(evs, x)
	}
	// Per change, the order between the two subscriptions is not fixed.
	slices.SortStableFunc(evs, func(a, b ev) int { return strings.Compare(a.Op+a.Sub, b.Op+b.Sub) })
	if evs[0].Sub != "all" || evs[0].New["body"] != big {
		t.Fatalf("insert: the 1 MiB body did not arrive whole")
	}
	upd := evs[2] // the update for "all"
	if _, ok := upd.New["body"]; ok || !reflect.DeepEqual(upd.UnchangedTOAST, []string{"body"}) ||
		fmt.Sprint(upd.Old) != "map[id:1]" || fmt.Sprint(upd.New["n"]) != "1" {
		t.Errorf("update: new %v old %v unchanged_toast %v", upd.New, upd.Old, upd.UnchangedTOAST)
	}
	if slim := evs[3]; slim.Sub != "slim" || slim.UnchangedTOAST != nil {
		t.Errorf("projected update: %+v, want no unchanged_toast (body is not selected)", slim)
	}
}

// TestLogicalRestartWindow: a node whose history holds only its last 200
// changes confirms the slot up to there; after a restart, a cursor inside
// that window resumes exactly, and an older one gets a reset.
func TestLogicalRestartWindow(t *testing.T) {
	t.Parallel()
	e := newEnvSource(t, "logical")
	slot := pgtest.Slot(t, e.url)
	a := e.startNodeOn(feed.Config{History: 200}, slot)
	c := a.dial(t, "")
	c.subscribe(map[string]any{"id": "s", "table": "orders"})
	e.insertRows(0, 1000)
	got := c.changes(1000, wait)
	checkIDs(t, "first node", got, 0)
	recent, old := got[899]["cursor"].(string), got[99]["cursor"].(string)
	a.stop()

	b := e.startNodeOn(feed.Config{}, slot)
	r := b.dial(t, "")
	r.subscribe(map[string]any{"id": "s", "table": "orders", "since": recent})
	checkIDs(t, "resumed inside the window", r.changes(100, wait), 900)
	x := b.dial(t, "")
	x.send(map[string]any{"type": "subscribe", "id": "s", "table": "orders", "since": old})
	if m := x.next(wait); m["type"] != "subscribed" {
		t.Fatalf("got %v", m)
	}
	if m := x.next(wait); m["type"] != "reset" {
		t.Fatalf("a cursor older than the first node's history: %v, want reset", m)
	}
	e.insertRows(1000, 1001)
	r.expectNext("s", "insert", 1000)
	x.expectNext("s", "insert", 1000)
}

// earlySource emits one batch before it reports ready, as a logical source
// streaming a backlog may do before the server's Start: the batch's commit
// is far past the position the source started from.
type earlySource struct {
	batch listener.Batch
	ready chan struct{}
}

func (s *earlySource) Run(ctx context.Context, emit func(listener.Batch) error) error {
	if err := emit(s.batch); err != nil {
		return err
	}
	close(s.ready)
	<-ctx.Done()
	return nil
}

func (s *earlySource) Ready() <-chan struct{} { return s.ready }

func (s *earlySource) Position() listener.Cursor {
	return listener.Cursor{Tick: s.batch.Tick.ID + 1}
}

// TestFirstBatchBeforeStart: a cursor from where the source started stays
// resumable when the source's first batch reaches the server before Start
// does. (A restarted logical node answered reset to a client that had read
// nothing since the slot's position, now and then under load.)
func TestFirstBatchBeforeStart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p, err := subscriptions.CompilePolicies(defaultPolicies)
	if err != nil {
		t.Fatal(err)
	}
	cfg := feed.Config{Policies: p, Anonymous: true, Catalog: triggers.NewCatalog(e.pool, time.Millisecond)}
	srv, err := feed.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	from := listener.Cursor{Tick: 1000}
	src := &earlySource{ready: make(chan struct{}), batch: listener.Batch{
		Tick: listener.Tick{ID: 5000, Time: time.Now()},
		From: from,
		Changes: []listener.Change{{
			Cursor: listener.Cursor{Tick: 5000, Pos: 1}, Schema: "public", Table: "orders", Op: "insert",
			Key: []byte(`{"id": 7}`), New: []byte(`{"id": 7, "status": "open", "total": 1, "user_id": "u1", "deleted_at": null}`),
		}},
	}}
	n := e.runNode(cfg, srv, src)
	c := n.dial(t, "")
	if start := c.subscribe(map[string]any{"id": "s", "table": "orders", "since": from.String()}); start != from.String() {
		t.Errorf("resumed from %q, want %q", start, from)
	}
	c.expectNext("s", "insert", 7)
}
