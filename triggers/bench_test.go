package triggers_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgfeed/pgfeed/internal/pgtemp"
	"github.com/pgfeed/pgfeed/triggers"
)

// BenchmarkCaptureCost measures what capture costs the application's writes,
// side by side on one durable server (fsync and synchronous_commit on, unlike
// the test server): single-row INSERT transactions from 4 concurrent clients,
// and one 100,000-row INSERT ... SELECT, each on an uncaptured table, a
// captured table while no listener is awake (one NOTIFY per transaction), and
// a captured table while the listeners are awake (no NOTIFY). Compare the
// ns/op of the variants of one run:
//
//	go test -run '^$' -bench CaptureCost -count 3 ./triggers/
func BenchmarkCaptureCost(b *testing.B) {
	ctx := context.Background()
	srv, err := pgtemp.Start(ctx, pgtemp.Options{Settings: map[string]string{
		"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on",
	}})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Stop()
	url := srv.URL("postgres")
	pool, err := pgxpool.New(ctx, url+"&pool_max_conns=4")
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	db := openSQL(b, url)
	defer db.Close()
	mustExec := func(sql string) {
		if _, err := pool.Exec(ctx, sql); err != nil {
			b.Fatalf("%s: %v", sql, err)
		}
	}
	for _, name := range []string{"plain", "captured"} {
		mustExec(fmt.Sprintf(`CREATE TABLE %s (id bigserial PRIMARY KEY, user_id text NOT NULL, status text NOT NULL, total numeric NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`, name))
	}
	if _, err := triggers.Enable(ctx, pool, "captured"); err != nil {
		b.Fatal(err)
	}
	variants := []struct {
		name, table string
		awake       bool
	}{
		{"none", "plain", false},
		{"notify", "captured", false},
		{"awake", "captured", true},
	}
	for _, v := range variants {
		b.Run("single-row/"+v.name, func(b *testing.B) {
			setAwake(b, pool, v.awake)
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
		})
	}
	for _, v := range variants {
		b.Run("bulk-100k/"+v.name, func(b *testing.B) {
			setAwake(b, pool, v.awake)
			insert := fmt.Sprintf(`INSERT INTO %s (user_id, status, total) SELECT 'u' || g, 'open', g * 1.5 FROM generate_series(1, 100000) g`, v.table)
			for b.Loop() {
				b.StopTimer()
				mustExec("TRUNCATE pgfeed.changes, plain, captured; CHECKPOINT")
				b.StartTimer()
				mustExec(insert)
			}
		})
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
