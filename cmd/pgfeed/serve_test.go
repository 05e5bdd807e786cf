package main

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pgfeed/pgfeed/internal/pgtest"
)

// TestServeWithTokens runs pgfeed serve from a config file with a
// claim-bound policy, the way a Supabase user would, and follows a table
// over SSE with a token: only the user's rows arrive, masked columns never,
// and SIGTERM (a cancelled context) exits 0.
func TestServeWithTokens(t *testing.T) {
	cleanEnv(t)
	url := pgtest.NewMigratedDB(t)
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric, user_id text)`); err != nil {
		t.Fatal(err)
	}
	pgfeed(t, "triggers", "enable", "orders", "--database-url", url).wantCode(t, 0)
	const secret = "serve-test-secret-serve-test-secret"
	cfg := writeFile(t, "pgfeed.yaml", `
auth:
  jwt:
    secret: `+secret+`
    audience: authenticated
policies:
  - table: public.orders
    roles: [authenticated]
    filter: "user_id=eq.{claims.sub}"
    columns: [id, status, user_id]
`)
	addr, stop := startServe(t, cfg, url)

	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "ann", "role": "authenticated", "aud": "authenticated", "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequestWithContext(t.Context(), "GET", "http://"+addr+"/v1/sse/public.orders", nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("SSE: %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() && !strings.HasPrefix(sc.Text(), "id: ") { // subscribed
	}
	if _, err := conn.Exec(context.Background(), `INSERT INTO orders VALUES (1, 'open', 5, 'bob'), (2, 'open', 7, 'ann')`); err != nil {
		t.Fatal(err)
	}
	var ev map[string]any
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			if err := json.Unmarshal([]byte(data), &ev); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	row, _ := ev["new"].(map[string]any)
	if row["user_id"] != "ann" || row["id"] != float64(2) {
		t.Fatalf("first change for ann: %v", ev)
	}
	if _, leaked := row["total"]; leaked {
		t.Errorf("masked column total sent: %v", row)
	}
	// Without a token: refused (anonymous access is off).
	r2, err := http.Get("http://" + addr + "/v1/changes/public.orders?wait=1ms")
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != 401 {
		t.Errorf("no token: %d, want 401", r2.StatusCode)
	}
	stop()
}

// startServe runs `pgfeed serve` with cfg on url, listening on a free
// port, and returns its address once it serves. stop cancels it (as
// SIGTERM does) and fails the test unless it exits 0 within 10 s.
func startServe(t *testing.T, cfg, url string) (addr string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stderr := newSyncBuffer("msg=serving")
	var stdout strings.Builder
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--config", cfg, "--database-url", url, "--listen", "127.0.0.1:0"}, &stdout, stderr)
	}()
	select {
	case <-stderr.seen:
	case code := <-done:
		t.Fatalf("serve exited with %d:\n%s", code, stderr)
	case <-time.After(time.Minute):
		t.Fatalf("serve not ready:\n%s", stderr)
	}
	addr = regexp.MustCompile(`listen=(\S+)`).FindStringSubmatch(stderr.String())[1]
	return addr, func() {
		t.Helper()
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Fatalf("serve exited with %d after SIGTERM:\n%s", code, stderr)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("serve did not exit within 10 s of SIGTERM")
		}
	}
}

// TestServePortInUse: a port another process holds is a runtime failure
// (exit 1), not a configuration error.
func TestServePortInUse(t *testing.T) {
	cleanEnv(t)
	url := pgtest.NewMigratedDB(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := pgfeed(t, "serve", "--database-url", url, "--listen", l.Addr().String())
	r.wantCode(t, 1)
	if !strings.Contains(r.stderr, "is in use by another process") {
		t.Errorf("stderr %q", r.stderr)
	}
}

// TestServeRefusesBadPolicies: a policy naming a table that is not
// captured, or a column it lacks, is a configuration error (exit 2).
func TestServeRefusesBadPolicies(t *testing.T) {
	cleanEnv(t)
	url := pgtest.NewMigratedDB(t)
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE orders (id int PRIMARY KEY, status text)`); err != nil {
		t.Fatal(err)
	}
	pgfeed(t, "triggers", "enable", "orders", "--database-url", url).wantCode(t, 0)
	for file, want := range map[string]string{
		"policies:\n  - table: public.missing\n    roles: [anon]\n":                           "policies[0].table",
		"policies:\n  - table: public.orders\n    roles: [anon]\n    columns: [id, nope]\n":   "nope",
		"policies:\n  - table: public.orders\n    roles: [anon]\n    filter: \"nope=eq.1\"\n": "nope",
	} {
		r := pgfeed(t, "serve", "--config", writeFile(t, "pgfeed.yaml", file), "--database-url", url, "--listen", "127.0.0.1:0")
		r.wantCode(t, 2)
		if !strings.Contains(r.stderr, want) {
			t.Errorf("%q: stderr %q does not name %q", file, r.stderr, want)
		}
	}
}
