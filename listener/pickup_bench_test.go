package listener_test

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfeed/pgfeed/internal/pgtest"
	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/triggers"
)

// BenchmarkPickup measures how long a committed change waits before the
// source emits it, at 1,000 single-row transactions a second from 4
// writers: writers woken by NOTIFY (the default below 2,000 a second)
// against a source that promises to read and polls (NotifyBelow -1). One
// op is one change; p50-ms and p99-ms are from commit's return to emit.
//
//	go test -run '^$' -bench Pickup -benchtime 5000x ./listener/
func BenchmarkPickup(b *testing.B) {
	for _, v := range []struct {
		name  string
		below int
	}{{"notify", 0}, {"poll", -1}} {
		b.Run(v.name, func(b *testing.B) {
			ctx := context.Background()
			url := pgtest.NewMigratedDB(b)
			conn := pgtest.Connect(b, url)
			if _, err := conn.Exec(ctx, `CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)`); err != nil {
				b.Fatal(err)
			}
			if _, err := triggers.Enable(ctx, conn, "items"); err != nil {
				b.Fatal(err)
			}
			var (
				mu        sync.Mutex
				committed = map[int]time.Time{}
				emitted   = map[int]time.Time{}
				all       = make(chan struct{})
			)
			n := b.N
			src := listener.New(listener.Config{
				Connect:     func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, url) },
				NotifyBelow: v.below,
			})
			sctx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() {
				done <- src.Run(sctx, func(bt listener.Batch) error {
					now := time.Now()
					mu.Lock()
					defer mu.Unlock()
					for _, c := range bt.Changes {
						var k struct{ ID int }
						_ = json.Unmarshal(c.Key, &k)
						emitted[k.ID] = now
					}
					if len(emitted) == n {
						close(all)
					}
					return nil
				})
			}()
			<-src.Ready()
			const writers = 4
			interval := time.Second / 1000 * writers
			b.ResetTimer()
			var wg sync.WaitGroup
			for w := range writers {
				wg.Go(func() {
					wc := pgtest.Connect(b, url)
					tick := time.NewTicker(interval)
					defer tick.Stop()
					for id := w; id < n; id += writers {
						<-tick.C
						if _, err := wc.Exec(ctx, `INSERT INTO items (id) VALUES ($1)`, id); err != nil {
							b.Error(err)
							return
						}
						t := time.Now()
						mu.Lock()
						committed[id] = t
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			select {
			case <-all:
			case <-time.After(30 * time.Second):
				b.Fatal("not every change was emitted")
			}
			b.StopTimer()
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			waits := make([]float64, 0, n)
			for id, c := range committed {
				waits = append(waits, float64(emitted[id].Sub(c))/1e6)
			}
			slices.Sort(waits)
			b.ReportMetric(waits[len(waits)/2], "p50-ms")
			b.ReportMetric(waits[len(waits)*99/100], "p99-ms")
		})
	}
}
