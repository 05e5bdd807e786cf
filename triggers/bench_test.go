package triggers_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/pgfeed/pgfeed/internal/pgtemp"
	"github.com/pgfeed/pgfeed/internal/pgtest"
	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/triggers"
)

// BenchmarkCaptureCost measures what capture costs the application's writes,
// side by side on one durable server (fsync and synchronous_commit on, unlike
// the test server): single-row INSERT transactions from 4 concurrent clients,
// and one 100,000-row INSERT ... SELECT, each on an uncaptured table, a
// captured table while no listener is awake (one NOTIFY per transaction), a
// captured table while the listeners are awake (no NOTIFY), and a table of
// the logical source's publication while a Logical source streams it (the
// walsender decoding on the same machine). Each variant reports x-none, its
// ns/op over the uncaptured variant's of the same run:
//
//	go test -run '^$' -bench 'CaptureCost$' -count 3 ./triggers/
func BenchmarkCaptureCost(b *testing.B) {
	ctx := context.Background()
	url, pool, mustExec := captureServer(b)
	variants := []struct {
		name, table string
		awake       bool
	}{
		{"none", "plain", false},
		{"notify", "captured", false},
		{"awake", "captured", true},
		{"logical", "published", false},
	}
	var none time.Duration // ns/op of the uncaptured variant, per shape
	ratio := func(b *testing.B, name string) {
		per := b.Elapsed() / time.Duration(b.N)
		if name == "none" {
			none = per
		}
		if none > 0 {
			b.ReportMetric(float64(per)/float64(none), "x-none")
		}
	}
	for _, v := range variants {
		b.Run("single-row/"+v.name, func(b *testing.B) {
			setAwake(b, pool, v.awake)
			if v.name == "logical" {
				defer streamLogical(b, url, pool)()
			}
			mustExec("TRUNCATE pgfeed.changes; CHECKPOINT")
			insert := fmt.Sprintf(`INSERT INTO %s (user_id, status, total) VALUES ('u1', 'open', 9.5)`, v.table)
			b.SetParallelism(2) // 4 clients on this machine's 2 cores
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := pool.Exec(ctx, insert); err != nil {
						b.Error(err)
						return
					}
				}
			})
			ratio(b, v.name)
		})
	}
	none = 0
	for _, v := range variants {
		b.Run("bulk-100k/"+v.name, func(b *testing.B) {
			setAwake(b, pool, v.awake)
			if v.name == "logical" {
				defer streamLogical(b, url, pool)()
			}
			insert := fmt.Sprintf(`INSERT INTO %s (user_id, status, total) SELECT 'u' || g, 'open', g * 1.5 FROM generate_series(1, 100000) g`, v.table)
			for b.Loop() {
				b.StopTimer()
				mustExec("TRUNCATE pgfeed.changes, plain, captured, published; CHECKPOINT")
				b.StartTimer()
				mustExec(insert)
			}
			ratio(b, v.name)
		})
	}
}

// streamLogical runs a Logical source on the publication, on a slot of its
// own, until the returned function is called; that function stops it and
// drops the slot.
func streamLogical(b *testing.B, url string, pool *pgxpool.Pool) func() {
	b.Helper()
	repl, err := listener.ReplicationConnector(url)
	if err != nil {
		b.Fatal(err)
	}
	src := listener.NewLogical(listener.LogicalConfig{DB: pool, Replicate: repl, Slot: "bench"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(listener.Batch) error { return nil }) }()
	select {
	case <-src.Ready():
	case err := <-done:
		cancel()
		b.Fatalf("logical source: %v", err)
	}
	return func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("logical source: %v", err)
		}
		pgtest.DropSlot(b, url, "bench")
	}
}

// captureServer starts a durable throwaway server with three tables of the
// same shape: plain (uncaptured), captured (trigger source) and published
// (the logical source's publication). It returns the server's URL, a pool
// of 4 connections and an Exec that fails the benchmark.
func captureServer(b *testing.B) (string, *pgxpool.Pool, func(string)) {
	b.Helper()
	ctx := context.Background()
	srv, err := pgtemp.Start(ctx, pgtemp.Options{Settings: map[string]string{
		"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on",
	}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = srv.Stop() })
	url := srv.URL("postgres")
	pool, err := pgxpool.New(ctx, url+"&pool_max_conns=4")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	db := openSQL(b, url)
	_ = db.Close()
	mustExec := func(sql string) {
		if _, err := pool.Exec(ctx, sql); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
	for _, name := range []string{"plain", "captured", "published"} {
		mustExec(fmt.Sprintf(`CREATE TABLE %s (id bigserial PRIMARY KEY, user_id text NOT NULL, status text NOT NULL, total numeric NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`, name))
	}
	if _, err := triggers.Enable(ctx, pool, "captured"); err != nil {
		b.Fatal(err)
	}
	if _, err := triggers.EnableLogical(ctx, pool, triggers.Publication{}, "published"); err != nil {
		b.Fatal(err)
	}
	return url, pool, mustExec
}

// BenchmarkCaptureCostRounds measures the single-row trigger variants of
// BenchmarkCaptureCost in alternating rounds: each iteration runs
// uncaptured, NOTIFY and awake inserts for a second each (4 clients), and
// the reported ratios are the medians over the rounds of each variant's
// time per insert to the uncaptured one's in the same round. A slow spell
// of a shared machine then hits the variants alike. ns/op is per round.
//
//	go test -run '^$' -bench CaptureCostRounds -benchtime 7x ./triggers/
func BenchmarkCaptureCostRounds(b *testing.B) {
	ctx := context.Background()
	_, pool, mustExec := captureServer(b)
	const round = time.Second
	ratios := map[string][]float64{}
	for b.Loop() {
		var none float64
		for _, v := range []struct {
			name, table string
			awake       bool
		}{{"none", "plain", false}, {"notify", "captured", false}, {"awake", "captured", true}} {
			setAwake(b, pool, v.awake)
			mustExec("TRUNCATE pgfeed.changes")
			insert := fmt.Sprintf(`INSERT INTO %s (user_id, status, total) VALUES ('u1', 'open', 9.5)`, v.table)
			var done atomic.Int64
			g, gctx := errgroup.WithContext(ctx)
			stop := time.Now().Add(round)
			for range 4 {
				g.Go(func() error {
					for time.Now().Before(stop) {
						if _, err := pool.Exec(gctx, insert); err != nil {
							return err
						}
						done.Add(1)
					}
					return nil
				})
			}
			if err := g.Wait(); err != nil {
				b.Fatal(err)
			}
			per := float64(round) / float64(done.Load())
			if v.name == "none" {
				none = per
				continue
			}
			ratios[v.name] = append(ratios[v.name], per/none)
		}
	}
	for name, rs := range ratios {
		slices.Sort(rs)
		b.ReportMetric(rs[len(rs)/2], name+"-x-none")
	}
}

func setAwake(b *testing.B, pool *pgxpool.Pool, awake bool) {
	b.Helper()
	sql := `DELETE FROM pgfeed.listeners`
	if awake {
		sql = `INSERT INTO pgfeed.listeners VALUES ('bench', now() + interval '1 day') ON CONFLICT (node) DO UPDATE SET awake_until = excluded.awake_until`
	}
	if _, err := pool.Exec(context.Background(), sql); err != nil {
		b.Fatal(err)
	}
}
