package feed_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgfeed/pgfeed/feed"
	"github.com/pgfeed/pgfeed/subscriptions"
)

// BenchmarkPolicyModes compares, side by side in one run, claim-bound
// policies evaluated in memory (filter user_id=eq.{claims.sub}) with
// row-level security evaluated by PostgreSQL (rls: true, a policy reading
// request.jwt.claims): 1,000 WebSocket subscribers over 100 distinct claim
// sets on one table, 1,000 single-row inserts at 200 a second, each row
// visible to the 10 subscribers of one claim set. It reports deliveries a
// second (from the first commit to the last delivery) and the latency from
// COMMIT returning to receipt. Run it once:
//
//	go test -run '^$' -bench PolicyModes -benchtime 1x ./feed/
func BenchmarkPolicyModes(b *testing.B) {
	for _, mode := range []string{"memory", "rls"} {
		b.Run(mode, func(b *testing.B) {
			for b.Loop() {
				runPolicyBench(b, mode)
			}
		})
	}
}

func runPolicyBench(b *testing.B, mode string) {
	const (
		claimSets = 100
		perSet    = 10
		changes   = 1000
		rate      = 200
	)
	e := newEnv(b)
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	role := "bench_" + hex.EncodeToString(suffix[:])
	e.exec(`CREATE ROLE ` + role + ` NOLOGIN; GRANT SELECT ON orders TO ` + role + `;
		ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
		CREATE POLICY own ON orders FOR SELECT TO ` + role + ` USING (user_id = current_setting('request.jwt.claims', true)::jsonb ->> 'sub')`)
	b.Cleanup(func() {
		_, _ = e.pool.Exec(context.Background(), `DROP OWNED BY `+role)
		_, _ = e.pool.Exec(context.Background(), `DROP ROLE IF EXISTS `+role)
	})
	policy := subscriptions.Policy{Table: "orders", Roles: []string{role}, Filter: "user_id=eq.{claims.sub}"}
	cfg := feed.Config{}
	if mode == "rls" {
		policy = subscriptions.Policy{Table: "orders", Roles: []string{role}, RLS: true}
		pool, err := pgxpool.New(context.Background(), e.url+"&pool_max_conns=4")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(pool.Close)
		cfg.RLS = &subscriptions.RLS{Pool: pool}
	}
	n := e.authNode([]subscriptions.Policy{policy}, "", cfg)

	type receipt struct {
		id int
		at time.Time
	}
	var (
		mu       sync.Mutex
		receipts []receipt
		wg       sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for set := range claimSets {
		tok := hs256(b, jwt.MapClaims{"sub": fmt.Sprint("user", set), "role": role, "aud": "app", "exp": time.Now().Add(time.Hour).Unix()})
		for range perSet {
			conn, _, err := websocket.Dial(ctx, "ws://"+n.addr+"/v1/ws?access_token="+url.QueryEscape(tok), nil)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { conn.CloseNow() })
			if err := conn.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"s","table":"orders"}`)); err != nil {
				b.Fatal(err)
			}
			if _, m, err := conn.Read(ctx); err != nil || !bytes.Contains(m, []byte(`"type":"subscribed"`)) {
				b.Fatalf("subscribe: %s %v", m, err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					_, m, err := conn.Read(ctx)
					if err != nil {
						return
					}
					at := time.Now()
					var ev struct{ Key struct{ ID int } }
					if json.Unmarshal(m, &ev) == nil {
						mu.Lock()
						receipts = append(receipts, receipt{ev.Key.ID, at})
						mu.Unlock()
					}
				}
			}()
		}
	}

	committed := make([]time.Time, changes)
	tick := time.NewTicker(time.Second / rate)
	start := time.Now()
	for i := range changes {
		<-tick.C
		if _, err := e.pool.Exec(ctx, `INSERT INTO orders (id, user_id) VALUES ($1, $2)`, i, fmt.Sprint("user", i%claimSets)); err != nil {
			b.Fatal(err)
		}
		committed[i] = time.Now()
	}
	tick.Stop()
	want := changes * perSet
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		got := len(receipts)
		mu.Unlock()
		if got >= want || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if len(receipts) != want {
		b.Errorf("%s: %d deliveries, want %d", mode, len(receipts), want)
	}
	lat := make([]time.Duration, 0, len(receipts))
	var last time.Time
	for _, r := range receipts {
		lat = append(lat, r.at.Sub(committed[r.id]))
		if r.at.After(last) {
			last = r.at
		}
	}
	slices.Sort(lat)
	if len(lat) == 0 {
		return
	}
	b.ReportMetric(float64(len(receipts))/last.Sub(start).Seconds(), "deliveries/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
