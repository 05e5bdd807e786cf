package feed_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pgfeed/pgfeed/feed"
)

// TestFlushBesidePings: a stream of changes, which the fan-out writes to
// the sockets itself (or, from a source that is behind, its flusher
// goroutine does, several batches at a time), and the writer's pings,
// every few changes, share the connections: clients that answer pings
// (coder/websocket does) stay connected and get every change once, in
// order.
func TestFlushBesidePings(t *testing.T) {
	bothFlushes(t, func(t *testing.T, e *env) {
		n := e.startNode(feed.Config{Heartbeat: 100 * time.Millisecond})
		const clients = 5
		var cs []*wsClient
		for range clients {
			c := n.dial(t, "")
			c.subscribe(map[string]any{"id": "s", "table": "public.orders"})
			cs = append(cs, c)
		}
		const rows, chunk = 400, 4
		done := make(chan error, 1)
		go func() {
			// One row per transaction, then a few rows in one, so that
			// batches both hold one change and several.
			for i := 1; i <= rows; {
				k := 1 + i%chunk
				if i+k > rows+1 {
					k = rows + 1 - i
				}
				if _, err := e.pool.Exec(context.Background(), `INSERT INTO orders (id, user_id) SELECT g, 'ann' FROM generate_series($1::int, $2::int) g`, i, i+k-1); err != nil {
					done <- fmt.Errorf("insert %d: %w", i, err)
					return
				}
				i += k
				if i%16 == 0 {
					time.Sleep(time.Millisecond) // spread the changes over several heartbeats
				}
			}
			done <- nil
		}()
		for ci, c := range cs {
			got := c.changes(rows, 30*time.Second)
			for i, m := range got {
				if keyID(m) != i+1 {
					t.Fatalf("client %d: change %d is of row %d, want %d", ci, i, keyID(m), i+1)
				}
			}
		}
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	})
}

// bothFlushes runs test on a source that keeps up (the fan-out flushes
// itself) and on one that is behind (the flusher goroutine flushes).
func bothFlushes(t *testing.T, test func(*testing.T, *env)) {
	t.Parallel()
	for _, behind := range []bool{false, true} {
		t.Run(fmt.Sprintf("behind=%v", behind), func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			e.behind = behind
			test(t, e)
		})
	}
}

// TestFlushOneAtATime: changes written one at a time, each awaited, all
// arrive, long before a heartbeat (whose writer would send what a flush
// left behind): every batch's flush takes its queue again.
func TestFlushOneAtATime(t *testing.T) {
	bothFlushes(t, func(t *testing.T, e *env) {
		n := e.startNode(feed.Config{Heartbeat: time.Minute})
		c := n.dial(t, "")
		c.subscribe(map[string]any{"id": "s", "table": "public.orders"})
		for i := 1; i <= 20; i++ {
			e.exec(`INSERT INTO orders (id) VALUES ($1)`, i)
			if m := c.changes(1, 10*time.Second)[0]; keyID(m) != i {
				t.Fatalf("change of row %d, want %d", keyID(m), i)
			}
		}
	})
}
