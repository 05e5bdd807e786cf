package feed_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5"

	"github.com/pgfeed/pgfeed/feed"
	"github.com/pgfeed/pgfeed/internal/pgtemp"
)

// TestConcurrentWriters: 8 writers x 1,000 transactions, committing in an
// order unlike the one they started in, some rolled back, one held open for
// seconds. Every subscriber gets every committed change exactly once, each
// transaction's changes together, every row's changes in commit order.
func TestConcurrentWriters(t *testing.T) { bothSources(t, testConcurrentWriters) }

func testConcurrentWriters(t *testing.T, e *env) {
	n := e.startNode(feed.Config{})
	const rows = 20
	e.exec(`INSERT INTO orders (id, total, user_id) SELECT g, 0, 'seed' FROM generate_series(1, $1) g`, rows)
	subs := []*wsClient{n.dial(t, ""), n.dial(t, "")}
	for _, c := range subs {
		c.subscribe(map[string]any{"id": "s", "table": "orders", "filter": "id=lte.100000"})
	}
	sse, resp := n.sse(t, "/v1/sse/orders", nil)
	if sse == nil {
		t.Fatalf("SSE: %d", resp.StatusCode)
	}

	ctx := context.Background()
	held, err := e.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := held.Exec(ctx, `INSERT INTO orders (id, user_id) VALUES (200000, 'held')`); err != nil {
		t.Fatal(err)
	}
	var (
		mu        sync.Mutex
		committed = map[string]bool{}
		wg        sync.WaitGroup
	)
	const writers, perWriter = 8, 1000
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range perWriter {
				if w == 0 && i == perWriter/2 {
					// The held transaction commits halfway through, after
					// thousands of later ones.
					if err := held.Commit(ctx); err != nil {
						t.Error(err)
						return
					}
				}
				tag := fmt.Sprintf("w%d-%d", w, i)
				err := pgx.BeginFunc(ctx, e.pool, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, `UPDATE orders SET total = total + 1, user_id = $2 WHERE id = $1`, 1+r.IntN(rows), tag); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `INSERT INTO orders (id, user_id) VALUES ($1, $2)`, 1000+w*perWriter+i, tag); err != nil {
						return err
					}
					if d := r.IntN(2000); d > 1000 {
						time.Sleep(time.Duration(d-1000) * time.Microsecond)
					}
					if r.IntN(10) == 0 {
						return errRollback
					}
					return nil
				})
				if err == errRollback {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				committed[tag] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	// The WebSocket subscriptions' filter leaves out the held row (id
	// 200000); the SSE stream has it.
	check := func(name string, total int, next func() map[string]any) {
		seenTags := map[string]int{}
		lastTotal := map[int]float64{}
		current := ""
		for i := 0; i < total; i++ {
			m := next()
			nw, _ := m["new"].(map[string]any)
			tag, _ := nw["user_id"].(string)
			if tag == "held" {
				continue
			}
			if tag == "seed" {
				// Written before subscribing, but perhaps not yet streamed
				// then: a subscription may see such changes.
				i--
				continue
			}
			if !committed[tag] {
				t.Fatalf("%s: change %d belongs to %q, which did not commit", name, i, tag)
			}
			if tag != current {
				if seenTags[tag] > 0 {
					t.Fatalf("%s: transaction %s split", name, tag)
				}
				current = tag
			}
			seenTags[tag]++
			if m["op"] == "update" {
				id := keyID(m)
				tot := asFloat(nw["total"])
				if tot != lastTotal[id]+1 {
					t.Fatalf("%s: row %d total %v after %v: lost, duplicated or out of order", name, id, tot, lastTotal[id])
				}
				lastTotal[id] = tot
			}
		}
		for tag := range committed {
			if seenTags[tag] != 2 {
				t.Fatalf("%s: transaction %s delivered %d changes, want 2", name, tag, seenTags[tag])
			}
		}
	}
	for i, c := range subs {
		check(fmt.Sprintf("websocket %d", i), 2*len(committed), func() map[string]any { return c.changes(1, wait)[0] })
	}
	check("sse", 2*len(committed)+1, func() map[string]any {
		ev := sse.next(wait)
		var m map[string]any
		d := json.NewDecoder(strings.NewReader(ev.data))
		d.UseNumber()
		if err := d.Decode(&m); err != nil {
			t.Fatal(err)
		}
		return m
	})
}

type rollback struct{}

func (rollback) Error() string { return "rollback" }

var errRollback error = rollback{}

func asFloat(v any) float64 {
	switch v := v.(type) {
	case json.Number:
		f, _ := v.Float64()
		return f
	case float64:
		return v
	}
	return -1
}

// TestListenerBackendKilled: the listener's connection is terminated twice
// mid-stream; subscribers get everything, once, in order.
func TestListenerBackendKilled(t *testing.T) { bothSources(t, testListenerBackendKilled) }

func testListenerBackendKilled(t *testing.T, e *env) {
	n := e.startNode(feed.Config{})
	c := n.dial(t, "")
	c.subscribe(map[string]any{"id": "s", "table": "orders"})
	killer := newWriter(t, e.url)
	for i := range 1500 {
		e.exec(`INSERT INTO orders (id) VALUES ($1)`, i)
		if i == 500 || i == 1000 {
			var killed int
			for killed == 0 {
				if err := killer.e.db.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
					WHERE application_name = 'pgfeed-listener' AND datname = current_database()`).Scan(&killed); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	checkIDs(t, "after kills", c.changes(1500, 30*time.Second), 0)
}

// TestPostgresRestart: PostgreSQL restarts mid-stream; once it is back,
// every committed change arrives once, in order.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	for _, src := range sources {
		t.Run(src, func(t *testing.T) {
			t.Parallel()
			testPostgresRestart(t, src)
		})
	}
}

func testPostgresRestart(t *testing.T, source string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	e := newEnvAt(t, srv.URL("postgres"), source)
	n := e.startNode(feed.Config{})
	c := n.dial(t, "")
	c.subscribe(map[string]any{"id": "s", "table": "orders"})

	insert := func(i int) {
		// Retried until it is known to have committed: after a restart an
		// insert's fate may be unknown, and ON CONFLICT makes a retry of a
		// committed one change nothing.
		for {
			_, err := e.pool.Exec(ctx, `INSERT INTO orders (id) VALUES ($1) ON CONFLICT (id) DO NOTHING`, i)
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for i := range 300 {
		insert(i)
		if i == 150 {
			if err := srv.Restart(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkIDs(t, "across the restart", c.changes(300, time.Minute), 0)
}

// TestSlowConsumer: a client that never reads is cut off while 20,000
// changes are written; a normal client gets all 20,000.
func TestSlowConsumer(t *testing.T) { bothSources(t, testSlowConsumer) }

func testSlowConsumer(t *testing.T, e *env) {
	// A queue that holds one 1,000-row transaction but not 20 of them.
	n := e.startNode(feed.Config{QueueMessages: 2048})
	ctx := context.Background()
	stuck, _, err := websocket.Dial(ctx, "ws://"+n.addr+"/v1/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.CloseNow()
	if err := stuck.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"s","table":"orders"}`)); err != nil {
		t.Fatal(err)
	}
	good := n.dial(t, "")
	good.subscribe(map[string]any{"id": "s", "table": "orders"})
	// 20 transactions of 1,000 rows; the normal client reads each before
	// the next is written, so it never falls behind, while the stuck one
	// falls further behind with each.
	for i := 0; i < 20000; i += 1000 {
		e.exec(`INSERT INTO orders (id, status) SELECT g, repeat('x', 100) FROM generate_series($1::int, $2::int) g`, i, i+999)
		checkIDs(t, "normal client", good.changes(1000, wait), i)
	}

	// The stuck client, read now, finds what its socket buffers held and
	// then the close for slow consumers.
	stuck.SetReadLimit(1 << 20)
	var closeErr error
	for received := 0; ; received++ {
		rctx, cancel := context.WithTimeout(ctx, wait)
		_, _, err := stuck.Read(rctx)
		cancel()
		if err != nil {
			closeErr = err
			if received >= 20000 {
				t.Fatalf("the stuck client received everything")
			}
			break
		}
	}
	if websocket.CloseStatus(closeErr) != websocket.StatusTryAgainLater {
		t.Fatalf("stuck client ended with %v, want close 1013", closeErr)
	}
	var ce websocket.CloseError
	if !asCloseError(closeErr, &ce) || ce.Reason != "slow_consumer" {
		t.Errorf("close reason %v, want slow_consumer", closeErr)
	}
}

func asCloseError(err error, ce *websocket.CloseError) bool {
	for err != nil {
		if c, ok := err.(websocket.CloseError); ok {
			*ce = c
			return true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return false
		}
		err = u.Unwrap()
	}
	return false
}

// TestSSEHeartbeat: an idle stream carries ": ping" comments.
func TestSSEHeartbeat(t *testing.T) { bothSources(t, testSSEHeartbeat) }

func testSSEHeartbeat(t *testing.T, e *env) {
	n := e.startNode(feed.Config{Heartbeat: 50 * time.Millisecond})
	resp, err := http.Get("http://" + n.addr + "/v1/sse/orders")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	pings := 0
	for pings < 2 && sc.Scan() {
		if sc.Text() == ": ping" {
			pings++
		}
	}
	if pings < 2 {
		t.Fatalf("stream ended after %d pings: %v", pings, sc.Err())
	}
}

// TestWriteTimeout: a client that stops reading, with a queue large enough
// never to overflow, is cut off when a write blocks past WriteTimeout.
func TestWriteTimeout(t *testing.T) { bothSources(t, testWriteTimeout) }

func testWriteTimeout(t *testing.T, e *env) {
	n := e.startNode(feed.Config{WriteTimeout: 300 * time.Millisecond})
	ctx := context.Background()
	stuck, _, err := websocket.Dial(ctx, "ws://"+n.addr+"/v1/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.CloseNow()
	if err := stuck.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"s","table":"orders"}`)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(wait); n.metric(t, "pgfeed_subscriptions") < 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("not subscribed")
		}
	}
	// Rows of 10 kB: a few hundred fill the socket buffers.
	for i := 0; i < 3000; i += 500 {
		e.exec(`INSERT INTO orders (id, status) SELECT g, repeat('x', 10000) FROM generate_series($1::int, $2::int) g`, i, i+499)
	}
	for deadline := time.Now().Add(wait); n.metric(t, "pgfeed_connections") > 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a client that does not read was never cut off")
		}
	}
}
