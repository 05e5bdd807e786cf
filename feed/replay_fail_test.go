package feed_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/pgfeed/pgfeed/feed"
	"github.com/pgfeed/pgfeed/listener"
)

// flakyStore fails its next Batch reads while fail is positive.
type flakyStore struct {
	listener.Log
	fail atomic.Int32
}

func (f *flakyStore) Batch(ctx context.Context, tick int64) (listener.Batch, error) {
	if f.fail.Add(-1) >= 0 {
		return listener.Batch{}, errors.New("store unavailable")
	}
	return f.Log.Batch(ctx, tick)
}

// TestReplayFailureEndsSubscription: a replay that fails part-way ends
// the subscription with an error and nothing after it, so that a client
// resuming from the last change it got misses nothing. Trigger source only:
// the failing part is the read from the change log, which the logical
// source does not have.
func TestReplayFailureEndsSubscription(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	store := &flakyStore{Log: listener.Log{DB: e.pool}}
	n := e.startNode(feed.Config{History: 3, Store: store})
	c := n.dial(t, "")
	c.subscribe(map[string]any{"id": "s", "table": "orders"})
	e.insertRows(0, 20)
	got := c.changes(20, wait)
	from := got[1]["cursor"].(string) // after row 1; rows 2.. are replayed from the store

	store.fail.Store(1)
	d := n.dial(t, "")
	d.send(map[string]any{"type": "subscribe", "id": "r", "table": "orders", "since": from})
	if m := d.next(wait); m["type"] != "subscribed" {
		t.Fatalf("got %v", m)
	}
	if m := d.next(wait); m["type"] != "error" || m["id"] != "r" || m["code"] != "internal" {
		t.Fatalf("after a failed replay: %v, want an internal error for r", m)
	}
	e.insertRows(20, 21)
	d.send(map[string]any{"type": "ping"})
	if m := d.next(wait); m["type"] != "pong" {
		t.Fatalf("the failed subscription still delivers: %v", m)
	}
	// Resuming from the same cursor, with the store back, gives everything.
	d.subscribe(map[string]any{"id": "r2", "table": "orders", "since": from})
	checkIDs(t, "resumed", d.changes(19, wait), 2)
}

// TestFramesAreJSON: a subscription id with control characters and quotes
// still gives valid JSON frames that carry it exactly.
func TestFramesAreJSON(t *testing.T) { bothSources(t, testFramesAreJSON) }

func testFramesAreJSON(t *testing.T, e *env) {
	n := e.startNode(feed.Config{})
	c := n.dial(t, "")
	id := "a\u0007\u007f\"\\é"
	c.subscribe(map[string]any{"id": id, "table": "orders"})
	e.exec(`INSERT INTO orders (id) VALUES (1)`)
	raw := c.nextRaw(wait)
	var m struct{ Type, Sub string }
	if err := json.Unmarshal(raw, &m); err != nil || m.Type != "change" || m.Sub != id {
		t.Fatalf("frame %q: %+v %v", raw, m, err)
	}
}
