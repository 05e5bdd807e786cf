package feed_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/pgfeed/pgfeed/feed"
)

// TestFlushBesidePings: a stream of changes, which the fan-out writes to
// the sockets itself, and the writer's pings, every few changes, share the
// connection: a client that answers pings (coder/websocket does) stays
// connected and gets every change, in order.
func TestFlushBesidePings(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(feed.Config{Heartbeat: 100 * time.Millisecond})
	c := n.dial(t, "")
	c.subscribe(map[string]any{"id": "s", "table": "public.orders"})
	const rows = 200
	done := make(chan error, 1)
	go func() {
		for i := 1; i <= rows; i++ {
			if _, err := e.pool.Exec(context.Background(), `INSERT INTO orders (id, user_id) VALUES ($1, 'ann')`, i); err != nil {
				done <- fmt.Errorf("insert %d: %w", i, err)
				return
			}
			time.Sleep(time.Millisecond) // spread the changes over several heartbeats
		}
		done <- nil
	}()
	got := c.changes(rows, 30*time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, m := range got {
		if keyID(m) != i+1 {
			t.Fatalf("change %d is of row %d, want %d", i, keyID(m), i+1)
		}
	}
}
