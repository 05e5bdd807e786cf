package listener_test

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/pgfeed/pgfeed/internal/pgtest"
	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/triggers"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func migratedDB(t *testing.T) string { return pgtest.NewMigratedDB(t) }

func TestCursorRoundTrip(t *testing.T) {
	for _, c := range []listener.Cursor{{Tick: 1}, {Tick: 42, Pos: 7}, {Tick: 1 << 40, Pos: 1 << 20}} {
		got, err := listener.ParseCursor(c.String())
		if err != nil || got != c {
			t.Errorf("ParseCursor(%q) = %v, %v", c.String(), got, err)
		}
	}
	for _, s := range []string{"", "t", "t1", "t-1-0", "t0-0", "t1--1", "t01-0", "t1-01", "x1-0", "t1-0-0", "t99999999999999999999-0"} {
		if _, err := listener.ParseCursor(s); !errors.Is(err, listener.ErrBadCursor) {
			t.Errorf("ParseCursor(%q) error = %v, want ErrBadCursor", s, err)
		}
	}
}

// TestBatchesFollowCommitOrder runs concurrent writers whose transactions
// take sequence values in one order and commit in another, some rolled back,
// one held open for seconds, while a reader cuts ticks and reads batches. The
// stream must hold every committed change exactly once, each transaction's
// changes together, and every row's changes in commit order.
func TestBatchesFollowCommitOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := migratedDB(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	const rows = 20
	if _, err := pool.Exec(ctx, `CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	if _, err := triggers.Enable(ctx, pool, "acct"); err != nil {
		t.Fatal(err)
	}
	// The baseline tick: the stream starts after it.
	first, _, err := listener.CreateTick(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO acct SELECT g, 0 FROM generate_series(1, $1) g`, rows); err != nil {
		t.Fatal(err)
	}

	var (
		mu        sync.Mutex
		committed = map[uint64]int{} // txid -> number of changes
		rolled    = map[uint64]bool{}
	)
	// One transaction stays open for seconds while everything else commits.
	held, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var heldTx uint64
	if err := held.QueryRow(ctx, `INSERT INTO acct VALUES (100000, 0) RETURNING pg_current_xact_id()::text::bigint`).Scan(&heldTx); err != nil {
		t.Fatal(err)
	}

	const writers, perWriter = 8, 120
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range perWriter {
				err := func() error {
					tx, err := pool.Begin(ctx)
					if err != nil {
						return err
					}
					defer tx.Rollback(ctx)
					var txid uint64
					n := 0
					// Increment 1-3 rows, locked in id order first: an UPDATE
					// locks in physical order, which deadlocks concurrent ones.
					a := 1 + r.IntN(rows)
					b := min(rows, a+r.IntN(3))
					if _, err := tx.Exec(ctx, `SELECT id FROM acct WHERE id BETWEEN $1 AND $2 ORDER BY id FOR UPDATE`, a, b); err != nil {
						return err
					}
					if err := tx.QueryRow(ctx, `WITH u AS (UPDATE acct SET v = v + 1 WHERE id BETWEEN $1 AND $2 RETURNING 1)
						SELECT pg_current_xact_id()::text::bigint, count(*) FROM u`, a, b).Scan(&txid, &n); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `INSERT INTO acct VALUES ($1, 0)`, 1000+w*perWriter+i); err != nil {
						return err
					}
					n++
					time.Sleep(time.Duration(r.IntN(3000)) * time.Microsecond)
					if r.IntN(10) == 0 {
						mu.Lock()
						rolled[txid] = true
						mu.Unlock()
						return tx.Rollback(ctx)
					}
					if err := tx.Commit(ctx); err != nil {
						return err
					}
					mu.Lock()
					committed[txid] = n
					mu.Unlock()
					return nil
				}()
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}

	// The reader: tick and read until the writers are done and the held
	// transaction has committed and been read.
	var stream []listener.Change
	last := first.ID
	read := func() {
		tick, _, err := listener.CreateTick(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		for id := last + 1; id <= tick.ID; id++ {
			b, err := listener.ReadBatch(ctx, pool, id)
			if err != nil {
				t.Fatal(err)
			}
			stream = append(stream, b.Changes...)
		}
		last = tick.ID
	}
	writersDone := make(chan struct{})
	go func() { wg.Wait(); close(writersDone) }()
	heldCommitted := false
	deadline := time.After(2 * time.Minute)
	for loop := true; loop; {
		read()
		select {
		case <-writersDone:
			if heldCommitted {
				read()
				loop = false
				break
			}
			if err := held.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			committed[heldTx] = 1
			heldCommitted = true
		case <-deadline:
			t.Fatal("timed out")
		case <-time.After(2 * time.Millisecond):
		}
	}

	// The initial insert of rows 1..20 counts too.
	seen := map[uint64]int{}
	var order []uint64
	lastV := map[float64]float64{}
	for i, c := range stream {
		if i > 0 && !stream[i-1].Cursor.Less(c.Cursor) {
			t.Fatalf("cursors not increasing at %d: %v then %v", i, stream[i-1].Cursor, c.Cursor)
		}
		if rolled[c.TxID] {
			t.Fatalf("rolled-back transaction %d in the stream", c.TxID)
		}
		if len(order) == 0 || order[len(order)-1] != c.TxID {
			if seen[c.TxID] > 0 {
				t.Fatalf("transaction %d split in the stream", c.TxID)
			}
			order = append(order, c.TxID)
		}
		seen[c.TxID]++
		var row struct{ ID, V float64 }
		if err := json.Unmarshal(c.New, &row); err != nil {
			t.Fatal(err)
		}
		if c.Op == "update" {
			if row.V != lastV[row.ID]+1 {
				t.Fatalf("row %v: value %v after %v: per-row order broken or a change lost", row.ID, row.V, lastV[row.ID])
			}
		}
		lastV[row.ID] = row.V
	}
	for txid, n := range committed {
		if seen[txid] != n {
			t.Errorf("transaction %d: %d changes in the stream, want %d", txid, seen[txid], n)
		}
	}
	if want := len(committed) + 1; len(seen) != want {
		t.Errorf("stream holds %d transactions, want %d", len(seen), want)
	}
	var final []struct{ ID, V int }
	rowsQ, _ := pool.Query(ctx, `SELECT id, v FROM acct WHERE id <= $1`, rows)
	final, err = pgx.CollectRows(rowsQ, pgx.RowToStructByPos[struct{ ID, V int }])
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range final {
		if lastV[float64(r.ID)] != float64(r.V) {
			t.Errorf("row %d: stream ends at %v, table holds %d", r.ID, lastV[float64(r.ID)], r.V)
		}
	}
	t.Logf("%d changes in %d transactions over %d ticks", len(stream), len(seen), last-first.ID)
}

// TestReadBatchDeterministic checks a batch reads the same, in the same
// order with the same cursors, every time: what lets a client resume on
// another node.
func TestReadBatchDeterministic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn := pgtest.Connect(t, migratedDB(t))
	if _, err := conn.Exec(ctx, `CREATE TABLE k (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	if _, err := triggers.Enable(ctx, conn, "k"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := listener.CreateTick(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO k SELECT generate_series(1, 50)`); err != nil {
		t.Fatal(err)
	}
	tick, created, err := listener.CreateTick(ctx, conn)
	if err != nil || !created {
		t.Fatalf("tick after a write: created=%v err=%v", created, err)
	}
	again, created, err := listener.CreateTick(ctx, conn)
	if err != nil || created || again.ID != tick.ID {
		t.Fatalf("tick with nothing new: %v created=%v err=%v", again, created, err)
	}
	a, err := listener.ReadBatch(ctx, conn, tick.ID)
	if err != nil {
		t.Fatal(err)
	}
	other := pgtest.Connect(t, conn.Config().ConnString())
	b, err := listener.ReadBatch(ctx, other, tick.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Changes) != 50 || len(b.Changes) != 50 {
		t.Fatalf("batch sizes %d and %d, want 50", len(a.Changes), len(b.Changes))
	}
	for i := range a.Changes {
		if a.Changes[i].Cursor != b.Changes[i].Cursor || a.Changes[i].Seq != b.Changes[i].Seq {
			t.Fatalf("change %d differs between reads", i)
		}
	}
	if _, err := listener.ReadBatch(ctx, conn, 1); !errors.Is(err, listener.ErrTickGone) {
		t.Errorf("batch of the first tick: %v, want ErrTickGone", err)
	}
}

// TestTickProbesTheIndex: cutting a tick looks up the change log through
// its txid index whatever the log holds, never by scanning it (a scan made
// every read of a busy node cost milliseconds per 50,000 retained rows).
func TestTickProbesTheIndex(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := migratedDB(t)
	conn := pgtest.Connect(t, url)
	if _, _, err := listener.CreateTick(ctx, conn); err != nil {
		t.Fatal(err)
	}
	// A big log of old changes (one transaction each would be slow to
	// make; the planner only sees the rows), and a writer whose change
	// commits after the next tick listed it as running (its txid is below
	// the big insert's, so below the tick's xmax).
	const insert = `INSERT INTO pgfeed.changes (schema_name, table_name, op, new) VALUES ('public', 't', 'insert', '{}')`
	writer := pgtest.Connect(t, url)
	for _, q := range []struct {
		conn *pgx.Conn
		sql  string
	}{
		{writer, `BEGIN`},
		{writer, insert},
		{conn, `INSERT INTO pgfeed.changes (schema_name, table_name, op, new) SELECT 'public', 't', 'insert', '{}' FROM generate_series(1, 50000)`},
		{conn, `ANALYZE pgfeed.changes`},
		{conn, `SELECT id FROM pgfeed.tick()`}, // sees the writer running
		{writer, `COMMIT`},
	} {
		if _, err := q.conn.Exec(ctx, q.sql); err != nil {
			t.Fatalf("%s: %v", q.sql, err)
		}
	}
	// The first tick finds the late commit, the second nothing.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for i := range 2 {
		_, created, err := listener.CreateTick(ctx, tx)
		if err != nil {
			t.Fatal(err)
		}
		if created != (i == 0) {
			t.Errorf("tick %d: created %v", i, created)
		}
	}
	var seq, idx int64
	if err := tx.QueryRow(ctx, `SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relid = 'pgfeed.changes'::regclass`).Scan(&seq, &idx); err != nil {
		t.Fatal(err)
	}
	if seq != 0 || idx == 0 {
		t.Errorf("cutting ticks scanned the change log %d times, probed its index %d times", seq, idx)
	}
}

// TestReadsStayIndexedAsTheLogGrows: the plans a listener's connection
// caches while the log is nearly empty (its first reads after an install)
// must not scan the log once it has grown. (Generic plans made then were
// sequential scans, and reads slowed down in proportion to the log.)
func TestReadsStayIndexedAsTheLogGrows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := migratedDB(t)
	conn := pgtest.Connect(t, url)
	writer := pgtest.Connect(t, url)
	const insert = `INSERT INTO pgfeed.changes (schema_name, table_name, op, new) VALUES ('public', 't', 'insert', '{}')`
	// Tiny log, with a transaction running at each tick, so that every
	// probe runs (and is planned) often enough for a generic plan.
	if _, _, err := listener.CreateTick(ctx, conn); err != nil {
		t.Fatal(err)
	}
	var last int64
	for range 8 {
		for _, q := range []string{`BEGIN`, insert} {
			if _, err := writer.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := conn.Exec(ctx, insert); err != nil {
			t.Fatal(err)
		}
		tk, _, err := listener.CreateTick(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := writer.Exec(ctx, `COMMIT`); err != nil {
			t.Fatal(err)
		}
		if _, _, err := listener.CreateTick(ctx, conn); err != nil {
			t.Fatal(err)
		}
		if _, err := listener.ReadBatch(ctx, conn, tk.ID); err != nil {
			t.Fatal(err)
		}
		last = tk.ID
	}
	// The log grows, with no ANALYZE to make anyone replan.
	if _, err := writer.Exec(ctx, `INSERT INTO pgfeed.changes (schema_name, table_name, op, new) SELECT 'public', 't', 'insert', '{}' FROM generate_series(1, 20000)`); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`BEGIN`, insert} {
		if _, err := writer.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	tk, _, err := listener.CreateTick(ctx, tx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listener.ReadBatch(ctx, tx, tk.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := listener.CreateTick(ctx, tx); err != nil { // finds nothing: probes the running one
		t.Fatal(err)
	}
	var seq int64
	if err := tx.QueryRow(ctx, `SELECT seq_scan FROM pg_stat_xact_user_tables WHERE relid = 'pgfeed.changes'::regclass`).Scan(&seq); err != nil {
		t.Fatal(err)
	}
	if seq != 0 {
		t.Errorf("reading after tick %d scanned the change log %d times", last, seq)
	}
	if _, err := writer.Exec(ctx, `ROLLBACK`); err != nil {
		t.Fatal(err)
	}
}
