package listener_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfeed/pgfeed/internal/pgtest"
	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/triggers"
)

// collector gathers emitted changes and lets a test wait for a count.
type collector struct {
	mu      sync.Mutex
	changes []listener.Change // guarded by mu
	batches []int64           // guarded by mu
	froms   []listener.Cursor // guarded by mu: each batch's From
	grew    chan struct{}     // signalled (non-blocking) on every batch
}

func newCollector() *collector { return &collector{grew: make(chan struct{}, 1)} }

func (c *collector) emit(b listener.Batch) error {
	c.mu.Lock()
	c.changes = append(c.changes, b.Changes...)
	c.batches = append(c.batches, b.Tick.ID)
	c.froms = append(c.froms, b.From)
	c.mu.Unlock()
	select {
	case c.grew <- struct{}{}:
	default:
	}
	return nil
}

// waitFor waits until at least n changes arrived, or fails after d.
func (c *collector) waitFor(t *testing.T, n int, d time.Duration) []listener.Change {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		got := len(c.changes)
		out := append([]listener.Change(nil), c.changes...)
		c.mu.Unlock()
		if got >= n {
			return out
		}
		select {
		case <-c.grew:
		case <-deadline.C:
			t.Fatalf("got %d changes after %v, want %d", got, d, n)
		}
	}
}

// startSource runs a Source on url until the test ends.
func startSource(t *testing.T, url string, cfg listener.Config) (*listener.Source, *collector) {
	t.Helper()
	connCfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	connCfg.RuntimeParams["application_name"] = "pgfeed-listener"
	cfg.Connect = func(ctx context.Context) (*pgx.Conn, error) { return pgx.ConnectConfig(ctx, connCfg) }
	src := listener.New(cfg)
	col := newCollector()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, col.emit) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-src.Ready():
	case err := <-done:
		t.Fatalf("Run ended before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("source not ready")
	}
	return src, col
}

func capturedTable(t *testing.T) (string, *pgx.Conn) {
	t.Helper()
	url := migratedDB(t)
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)`); err != nil {
		t.Fatal(err)
	}
	if _, err := triggers.Enable(context.Background(), conn, "items"); err != nil {
		t.Fatal(err)
	}
	return url, conn
}

// TestSourceWakesOnNotify: with the safety-net poll at a minute, a change
// committed while the source sleeps arrives through the NOTIFY.
func TestSourceWakesOnNotify(t *testing.T) {
	t.Parallel()
	url, conn := capturedTable(t)
	_, col := startSource(t, url, listener.Config{Poll: time.Minute})
	for i := range 3 {
		if _, err := conn.Exec(context.Background(), `INSERT INTO items (id) VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
		col.waitFor(t, i+1, 20*time.Second)
	}
}

// TestSourceDrainsWritersThatSkippedNotify: a writer that skipped its NOTIFY
// because the listener was awake, and commits after the listener went back
// to sleep, is still read without waiting for the poll timer.
func TestSourceDrainsWritersThatSkippedNotify(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, conn := capturedTable(t)
	// Promising on every wake-up, as at high rates.
	_, col := startSource(t, url, listener.Config{Poll: time.Minute, NotifyBelow: -1})

	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// As a writer does when it sees every listener awake: no NOTIFY.
	if _, err := tx.Exec(ctx, `SELECT set_config('pgfeed.woken', 'on', true)`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO items (id) VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	// Wake the source while that writer is open: it reads nothing, goes
	// back to sleep, and must drain the open writer.
	other := pgtest.Connect(t, url)
	if _, err := other.Exec(ctx, `NOTIFY pgfeed`); err != nil {
		t.Fatal(err)
	}
	waitListenerAsleep(t, other)
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	col.waitFor(t, 1, 20*time.Second)
}

// TestSourceNotifiedAtLowRates: transactions that come one at a time are
// each delivered through their NOTIFY (the poll is a minute away), and the
// source never asks writers to skip it.
func TestSourceNotifiedAtLowRates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, conn := capturedTable(t)
	_, col := startSource(t, url, listener.Config{Poll: time.Minute})
	for i := range 40 {
		if _, err := conn.Exec(ctx, `INSERT INTO items (id) VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
		col.waitFor(t, i+1, 20*time.Second)
		var promised bool
		if err := conn.QueryRow(ctx, `SELECT coalesce(bool_or(awake_until > clock_timestamp()), false) FROM pgfeed.listeners`).Scan(&promised); err != nil {
			t.Fatal(err)
		}
		if promised {
			t.Fatalf("after %d transactions arriving one at a time the source promised to read (writers skip NOTIFY)", i+1)
		}
	}
}

// TestSourcePromisesAtHighRates: above NotifyBelow the source promises to
// read (writers skip NOTIFY), withdraws the promise once writes stop, and
// every change arrives exactly once, in order.
func TestSourcePromisesAtHighRates(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, conn := capturedTable(t)
	_, col := startSource(t, url, listener.Config{Poll: time.Minute, NotifyBelow: 20})
	watcher := pgtest.Connect(t, url)
	// Watch the promise while the writes go on. Writes go on until it is
	// seen (at least 3,000): the source starts asleep, and its first drain
	// waits for transactions other tests hold open on the shared server.
	var promised atomic.Bool
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for !promised.Load() {
			select {
			case <-stop:
				return
			default:
			}
			var p bool
			if err := watcher.QueryRow(ctx, `SELECT coalesce(bool_or(awake_until > clock_timestamp()), false) FROM pgfeed.listeners`).Scan(&p); err != nil {
				t.Error(err)
				return
			}
			promised.Store(p)
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	n := 0
	for ; n < 3000 || !promised.Load() && time.Now().Before(deadline); n++ {
		if _, err := conn.Exec(ctx, `INSERT INTO items (id) VALUES ($1)`, n); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	<-watched
	if !promised.Load() {
		t.Errorf("the source never promised to read while %d writes came fast", n)
	}
	got := col.waitFor(t, n, 30*time.Second)
	waitListenerAsleep(t, watcher)
	if len(got) != n {
		t.Fatalf("%d changes, want %d", len(got), n)
	}
	for i, c := range got {
		if string(c.Key) != fmt.Sprintf(`{"id":%d}`, i) {
			t.Fatalf("change %d has key %s", i, c.Key)
		}
	}
}

// waitListenerAsleep waits until the source has withdrawn its promise.
func waitListenerAsleep(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		var asleep bool
		err := conn.QueryRow(context.Background(), `SELECT coalesce(bool_and(awake_until < clock_timestamp()), false) FROM pgfeed.listeners`).Scan(&asleep)
		if err != nil {
			t.Fatal(err)
		}
		if asleep {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("listener never went to sleep")
}

// TestSourceReconnects kills the source's backend while writes go on:
// everything committed arrives exactly once, in order.
func TestSourceReconnects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, conn := capturedTable(t)
	_, col := startSource(t, url, listener.Config{Poll: 100 * time.Millisecond})
	killer := pgtest.Connect(t, url)
	const n = 300
	for i := range n {
		if _, err := conn.Exec(ctx, `INSERT INTO items (id) VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
		if i%100 == 50 {
			// Wait for the listener to be connected (it may still be
			// reconnecting from the last kill), then kill it.
			deadline := time.Now().Add(20 * time.Second)
			for killed := 0; killed != 1; time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("no listener backend to terminate")
				}
				if err := killer.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
					WHERE application_name = 'pgfeed-listener' AND datname = current_database()`).Scan(&killed); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	got := col.waitFor(t, n, 60*time.Second)
	if len(got) != n {
		t.Fatalf("got %d changes, want exactly %d", len(got), n)
	}
	for i, c := range got {
		var row struct{ ID int }
		if err := json.Unmarshal(c.New, &row); err != nil {
			t.Fatal(err)
		}
		if row.ID != i {
			t.Fatalf("change %d is row %d: lost, duplicated or out of order", i, row.ID)
		}
	}
}

// TestPruneWhileRunning: a running source prunes on its own (on its own
// connection) and keeps emitting.
func TestPruneWhileRunning(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, conn := capturedTable(t)
	for i := range 3 {
		if _, err := conn.Exec(ctx, `INSERT INTO items (id) VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
		if _, _, err := listener.CreateTick(ctx, conn); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `UPDATE pgfeed.ticks SET created_at = now() - interval '2 days'; UPDATE pgfeed.changes SET captured_at = now() - interval '2 days'`); err != nil {
		t.Fatal(err)
	}
	_, col := startSource(t, url, listener.Config{Retention: time.Hour, PruneEvery: 10 * time.Millisecond})
	deadline := time.Now().Add(10 * time.Second)
	for {
		oldest, err := listener.Oldest(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if oldest.Tick >= 4 { // the newest old tick is the base now
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("oldest resumable cursor still %v", oldest)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO items (id) VALUES (10)`); err != nil {
		t.Fatal(err)
	}
	if got := col.waitFor(t, 1, 10*time.Second); string(got[0].Key) != `{"id":10}` {
		t.Errorf("after pruning, emitted %s", got[0].Key)
	}
}

// TestPrune removes ticks past retention and the changes only they held.
func TestPrune(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, conn := capturedTable(t)
	for i := range 3 {
		if _, err := conn.Exec(ctx, `INSERT INTO items (id) VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
		if _, _, err := listener.CreateTick(ctx, conn); err != nil {
			t.Fatal(err)
		}
	}
	// Ticks 1-3 hold rows 0-2 in batches 2 and 3 (tick 1 is the first).
	if _, err := conn.Exec(ctx, `UPDATE pgfeed.ticks SET created_at = now() - interval '2 days' WHERE id <= 2; UPDATE pgfeed.changes SET captured_at = now() - interval '2 days'`); err != nil {
		t.Fatal(err)
	}
	src := listener.New(listener.Config{Retention: 24 * time.Hour})
	if err := src.Prune(ctx, conn); err != nil {
		t.Fatal(err)
	}
	oldest, err := listener.Oldest(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if oldest != (listener.Cursor{Tick: 3}) {
		t.Errorf("oldest resumable cursor %v, want t3-0", oldest)
	}
	// Row 2 (batch 3) must stay readable; every change older than the
	// retained base tick's snapshot must be gone. (Rows of batch 2 may stay:
	// the snapshot's xmin is held back by any transaction of the cluster.)
	b, err := listener.ReadBatch(ctx, conn, 3)
	if err != nil || len(b.Changes) != 1 {
		t.Errorf("batch 3 after prune: %v, %v", b.Changes, err)
	}
	if _, err := listener.ReadBatch(ctx, conn, 2); !errors.Is(err, listener.ErrTickGone) {
		t.Errorf("batch 2 after prune: %v, want ErrTickGone", err)
	}
	var stale int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM pgfeed.changes
		WHERE txid < (SELECT pg_snapshot_xmin(snapshot) FROM pgfeed.ticks WHERE id = 2)`).Scan(&stale); err != nil {
		t.Fatal(err)
	}
	if stale != 0 {
		t.Errorf("%d changes older than the retained base tick survived", stale)
	}
}

// TestSourceLive: Live is true while connected and false while the
// source reconnects.
func TestSourceLive(t *testing.T) {
	t.Parallel()
	url, _ := capturedTable(t)
	src, _ := startSource(t, url, listener.Config{Poll: 50 * time.Millisecond})
	if !src.Live() {
		t.Fatal("not live after Ready")
	}
	killer := pgtest.Connect(t, url)
	if _, err := killer.Exec(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name = 'pgfeed-listener' AND datname = current_database()`); err != nil {
		t.Fatal(err)
	}
	sawDown, deadline := false, time.Now().Add(20*time.Second)
	for time.Now().Before(deadline) {
		live := src.Live()
		if !live {
			sawDown = true
		}
		if sawDown && live {
			return // down, then back
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("live never went down and back up (saw down: %v)", sawDown)
}

// TestSourceRepeatableReadWriter: a REPEATABLE READ writer whose snapshot
// saw the source's promise, and which writes only after the source
// withdrew it, still wakes the source (its transaction id is newer than
// what the drain waits for, so without a NOTIFY its change would wait for
// the poll, a minute here).
func TestSourceRepeatableReadWriter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, conn := capturedTable(t)
	_, col := startSource(t, url, listener.Config{Poll: time.Minute, NotifyBelow: -1})
	watcher := pgtest.Connect(t, url)

	// Keep the source reading (awake) with a stream of writes until the
	// REPEATABLE READ transaction has its snapshot.
	rr := pgtest.Connect(t, url)
	tx, err := rr.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	n := 0
	for promised := false; !promised; n++ {
		if n > 5000 {
			t.Fatal("the source never promised to read")
		}
		if _, err := conn.Exec(ctx, `INSERT INTO items (id) VALUES ($1)`, n); err != nil {
			t.Fatal(err)
		}
		if err := watcher.QueryRow(ctx, `SELECT coalesce(bool_and(awake_until > clock_timestamp()), false) FROM pgfeed.listeners`).Scan(&promised); err != nil {
			t.Fatal(err)
		}
	}
	// The snapshot, taken while the promise holds.
	if _, err := tx.Exec(ctx, `SELECT count(*) FROM pgfeed.listeners`); err != nil {
		t.Fatal(err)
	}
	waitListenerAsleep(t, watcher)
	if _, err := tx.Exec(ctx, `INSERT INTO items (id) VALUES (-1)`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got := col.waitFor(t, n+1, 20*time.Second)
	if last := got[len(got)-1]; string(last.Key) != `{"id":-1}` {
		t.Fatalf("last change %s, want the REPEATABLE READ writer's", last.Key)
	}
}

// TestSourceStopsWhenTicksGoBack: ticks emptied under a running source
// (the schema rolled back and migrated again) would restart at 1, and the
// cursors handed out before would name other changes: Run ends with
// ErrTicksWentBack rather than stall, or serve the new ticks silently.
func TestSourceStopsWhenTicksGoBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, conn := capturedTable(t)
	connCfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	src := listener.New(listener.Config{
		Poll:    50 * time.Millisecond,
		Connect: func(ctx context.Context) (*pgx.Conn, error) { return pgx.ConnectConfig(ctx, connCfg) },
	})
	col := newCollector()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- src.Run(runCtx, col.emit) }()
	select {
	case <-src.Ready():
	case err := <-done:
		t.Fatalf("Run ended before ready: %v", err)
	}
	for i := range 3 {
		if _, err := conn.Exec(ctx, `INSERT INTO items (id) VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
		col.waitFor(t, i+1, 30*time.Second)
	}
	if _, err := conn.Exec(ctx, `DELETE FROM pgfeed.ticks`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO items (id) VALUES (3)`); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, listener.ErrTicksWentBack) {
			t.Fatalf("Run: %v, want ErrTicksWentBack", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run went on after the ticks went back")
	}
}
