package feed_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgfeed/pgfeed/feed"
	"github.com/pgfeed/pgfeed/subscriptions"
)

// metric reads one value from /metrics.
func (n *node) metric(t *testing.T, name string) int {
	t.Helper()
	resp, err := http.Get("http://" + n.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\d+)$`).FindStringSubmatch(buf.String())
	if m == nil {
		t.Fatalf("metric %s missing", name)
	}
	v, _ := strconv.Atoi(m[1])
	return v
}

// waitMetric polls the node's metric until it equals want, for up to 20 s.
func (n *node) waitMetric(t *testing.T, name string, want int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for n.metric(t, name) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d, want %d", name, n.metric(t, name), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRLS: PostgreSQL's row-level security, evaluated as each subscriber
// (role claim, request.jwt.claims), decides; checks run once per change per
// group of subscribers with the same claims; a policy that raises for one
// role withholds changes from that role only.
func TestRLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var b [4]byte
	_, _ = rand.Read(b[:])
	suffix := hex.EncodeToString(b[:])
	user, broken := "rls_user_"+suffix, "rls_broken_"+suffix
	// Roles are cluster-wide: unique names, dropped at the end.
	e.exec(`CREATE ROLE ` + user + ` NOLOGIN; CREATE ROLE ` + broken + ` NOLOGIN;
		GRANT SELECT ON orders TO ` + user + `, ` + broken + `;
		ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
		CREATE POLICY own ON orders FOR SELECT TO ` + user + `
			USING (user_id = current_setting('request.jwt.claims', true)::jsonb ->> 'sub');
		CREATE POLICY boom ON orders FOR SELECT TO ` + broken + ` USING (1 / (id - id) = 1)`)
	t.Cleanup(func() {
		ctx := context.Background()
		_, _ = e.pool.Exec(ctx, `DROP OWNED BY `+user+`, `+broken)
		_, _ = e.pool.Exec(ctx, `DROP ROLE IF EXISTS `+user+`, `+broken)
	})
	pool, err := pgxpool.New(context.Background(), e.url+"&pool_max_conns=2")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	n := e.authNode([]subscriptions.Policy{{Table: "orders", Roles: []string{user, broken}, RLS: true}}, "",
		feed.Config{RLS: &subscriptions.RLS{Pool: pool, Timeout: 5 * time.Second}})
	tok := func(role, sub string) string {
		return "?access_token=" + hs256(t, jwt.MapClaims{"role": role, "sub": sub, "aud": "app", "exp": time.Now().Add(time.Hour).Unix()})
	}
	ann1, ann2 := n.dial(t, tok(user, "ann")), n.dial(t, tok(user, "ann"))
	bob := n.dial(t, tok(user, "bob"))
	brk := n.dial(t, tok(broken, "x"))
	start := ann1.subscribe(map[string]any{"id": "s", "table": "orders"})
	for _, c := range []*wsClient{ann2, bob, brk} {
		c.subscribe(map[string]any{"id": "s", "table": "orders"})
	}
	e.exec(`INSERT INTO orders (id, user_id) VALUES (1, 'ann')`)
	e.exec(`INSERT INTO orders (id, user_id) VALUES (2, 'bob')`)
	e.exec(`INSERT INTO orders (id, user_id) VALUES (3, 'ann')`)
	e.exec(`UPDATE orders SET status = 'paid' WHERE id = 3`)
	for _, c := range []*wsClient{ann1, ann2} {
		c.expectNext("s", "insert", 1)
		c.expectNext("s", "insert", 3)
		c.expectNext("s", "update", 3)
	}
	bob.expectNext("s", "insert", 2)
	// A check reads the row as it is when checked, so the delete comes
	// after every group has checked the earlier changes (see the README):
	// 4 changes x 3 groups.
	for deadline := time.Now().Add(wait); n.metric(t, "pgfeed_rls_checks_total") < 12; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("RLS checks did not finish")
		}
	}
	e.exec(`DELETE FROM orders WHERE id = 2`)
	e.exec(`INSERT INTO orders (id, user_id) VALUES (4, 'bob')`) // a marker
	for _, c := range []*wsClient{ann1, ann2} {
		d := c.expectNext("s", "delete", 2)
		if d["old"] != nil || d["new"] != nil {
			t.Errorf("delete under RLS carries rows: %v", d)
		}
	}
	bob.expectNext("s", "delete", 2)
	bob.expectNext("s", "insert", 4)
	// The broken role's checks fail: it gets no insert or update, only the
	// key-only delete (which needs no check), and nothing else stops.
	brk.expectNext("s", "delete", 2)
	brk.send(map[string]any{"type": "ping"})
	if m := brk.next(wait); m["type"] != "pong" {
		t.Errorf("broken role got %v", m)
	}
	// ann's marker check: nothing after the delete but the pong.
	ann1.send(map[string]any{"type": "ping"})
	if m := ann1.next(wait); m["type"] != "pong" {
		t.Errorf("ann got %v (bob's row 4?)", m)
	}
	// 5 checked changes (4 inserts, 1 update) x 3 groups (ann, bob,
	// broken): one check per change per group, not per subscriber.
	for deadline := time.Now().Add(wait); n.metric(t, "pgfeed_rls_checks_total") != 15; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d RLS checks, want 15", n.metric(t, "pgfeed_rls_checks_total"))
		}
	}
	// The last check may still be running: wait for its verdict.
	for deadline := time.Now().Add(wait); n.metric(t, "pgfeed_rls_errors_total") != 5; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d RLS errors, want 5 (every check of the broken role)", n.metric(t, "pgfeed_rls_errors_total"))
		}
	}
	if got := n.metric(t, "pgfeed_rls_checks_total"); got != 15 {
		t.Errorf("%d RLS checks once all are done, want 15 (one per change per group, not per subscriber)", got)
	}
	// Resume under RLS: the same decisions.
	ann3 := n.dial(t, tok(user, "ann"))
	ann3.subscribe(map[string]any{"id": "s", "table": "orders", "since": start})
	ann3.expectNext("s", "insert", 1)
	ann3.expectNext("s", "insert", 3)
	ann3.expectNext("s", "update", 3)
	ann3.expectNext("s", "delete", 2)
}
