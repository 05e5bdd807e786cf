package feed_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgfeed/pgfeed/feed"
)

// BenchmarkThroughput measures sustained changes per second decoded and
// delivered, per source, with the writer at full speed: 4 writer
// connections commit INSERT transactions of 1 row (single-row) or 100 rows
// (rows-100) as fast as the server takes them, and one WebSocket client,
// subscribed to the whole table, reads every change. Reported per run:
// delivered/s (changes received by the client per second, from the first
// commit to the last receipt), written/s (changes committed per second)
// and lag-ms (how long after the last commit the last change arrived). The
// test server runs with fsync off, so that the writer is as fast as it can
// be and the listener is what is measured; commits do not wait for their
// WAL to be flushed (synchronous_commit off), so the logical source sees
// the last ones up to two WAL writer rounds (400 ms) later.
//
//	go test -run '^$' -bench Throughput -benchtime 20000x ./feed/
func BenchmarkThroughput(b *testing.B) {
	for _, src := range sources {
		for _, rows := range []int{1, 100} {
			name := "single-row"
			if rows > 1 {
				name = fmt.Sprintf("rows-%d", rows)
			}
			b.Run(src+"/"+name, func(b *testing.B) { benchThroughput(b, src, rows) })
		}
	}
}

func benchThroughput(b *testing.B, source string, rows int) {
	e := newEnvSource(b, source)
	// Both sources alike, as the server is set (the logical test
	// environment asks for synchronous_commit on): the WAL writer flushes
	// commits in batches, which suits a writer at full speed.
	e.exec(`DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = off', current_database()); END $$`)
	// A large queue: the client reads as fast as it can, but a 100-row
	// transaction arrives at once.
	n := e.startNode(feed.Config{QueueMessages: 1 << 20, QueueBytes: 1 << 30})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+n.addr+"/v1/ws", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.CloseNow()
	conn.SetReadLimit(1 << 20)
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"s","table":"orders"}`)); err != nil {
		b.Fatal(err)
	}
	if _, _, err := conn.Read(ctx); err != nil { // subscribed
		b.Fatal(err)
	}
	txs := max(1, b.N/rows)
	total := txs * rows
	lastAt := make(chan time.Time, 1)
	go func() {
		for got := 0; got < total; {
			_, data, err := conn.Read(ctx)
			if err != nil {
				return
			}
			var m struct{ Type string }
			if json.Unmarshal(data, &m) == nil && m.Type == "change" {
				got++
			}
		}
		lastAt <- time.Now()
	}()

	pcfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		b.Fatal(err)
	}
	pcfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	const writers = 4
	next := make(chan int, writers)
	go func() {
		defer close(next)
		for i := range txs {
			next <- i
		}
	}()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if _, err := pool.Exec(ctx, `INSERT INTO orders (id, status, total, user_id) SELECT g, 'open', 9.5, 'u1' FROM generate_series($1::int, $2::int) g`, i*rows, i*rows+rows-1); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	written := time.Since(start)
	var last time.Time
	select {
	case last = <-lastAt:
	case <-time.After(2 * time.Minute):
		b.Fatal("not every change arrived within 2 minutes")
	}
	b.StopTimer()
	took := last.Sub(start)
	b.ReportMetric(float64(total)/took.Seconds(), "delivered/s")
	b.ReportMetric(float64(total)/written.Seconds(), "written/s")
	b.ReportMetric(float64(last.Sub(start.Add(written)).Milliseconds()), "lag-ms")
}
