package feed_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"

	"github.com/pgfeed/pgfeed/feed"
	"github.com/pgfeed/pgfeed/internal/token"
	"github.com/pgfeed/pgfeed/subscriptions"
)

const secret = "feed-test-secret-feed-test-secret"

func hs256(t testing.TB, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func userClaims(sub string, ttl time.Duration) jwt.MapClaims {
	return jwt.MapClaims{"sub": sub, "role": "authenticated", "exp": time.Now().Add(ttl).Unix(), "aud": "app"}
}

// authNode starts a node that verifies tokens (HS256 and a JWKS served by
// the test) with the given policies.
func (e *env) authNode(policies []subscriptions.Policy, jwksURL string, cfg feed.Config) *node {
	e.t.Helper()
	v, err := token.New(token.Config{Secret: secret, JWKSURL: jwksURL, Audience: "app", Leeway: time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := v.Prefetch(context.Background()); err != nil { // as serve does
		e.t.Fatal(err)
	}
	p, err := subscriptions.CompilePolicies(policies)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg.Verifier, cfg.Policies = v, p
	return e.startNode(cfg)
}

// TestTokenMatrix: each kind of bad token is refused on each transport;
// a good one is served; an unknown kid makes pgfeed refetch the JWKS.
func TestTokenMatrix(t *testing.T) {
	t.Parallel()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	var fetches atomic.Int32
	jwks := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The key is published under kid "k2" only from the second fetch
		// on (the first is the prefetch at start), as after a rotation.
		if fetches.Add(1) == 1 {
			_, _ = w.Write([]byte(`{"keys":[]}`))
			return
		}
		fmt.Fprintf(w, `{"keys":[{"kty":"RSA","kid":"k2","n":%q,"e":"AQAB"}]}`,
			base64.RawURLEncoding.EncodeToString(rsaKey.N.Bytes()))
	}))
	defer jwks.Close()

	e := newEnv(t)
	n := e.authNode([]subscriptions.Policy{{Table: "orders", Roles: []string{"authenticated"}}}, jwks.URL, feed.Config{})
	sign := func(m jwt.SigningMethod, kid string, key any, c jwt.MapClaims) string {
		tok := jwt.NewWithClaims(m, c)
		if kid != "" {
			tok.Header["kid"] = kid
		}
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	good := userClaims("u1", time.Hour)
	with := func(k string, v any) jwt.MapClaims {
		c := jwt.MapClaims{}
		for kk, vv := range good {
			c[kk] = vv
		}
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: mustBytes(x509.MarshalPKIXPublicKey(&rsaKey.PublicKey))})
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, good).SignedString(jwt.UnsafeAllowNoneSignatureType)
	bad := map[string]string{
		"expired":       hs256(t, with("exp", time.Now().Add(-time.Hour).Unix())),
		"not yet valid": hs256(t, with("nbf", time.Now().Add(time.Hour).Unix())),
		"wrong secret":  sign(jwt.SigningMethodHS256, "", []byte("not-the-secret-not-the-secret-!!"), good),
		"alg none":      none,
		"alg confusion": sign(jwt.SigningMethodHS256, "k2", pubPEM, good),
		"wrong aud":     hs256(t, with("aud", "other")),
		"missing role":  hs256(t, with("role", nil)),
		"malformed":     "abc.def",
	}
	for name, tok := range bad {
		// WebSocket and long polling: 401 before anything else.
		for _, path := range []string{"/v1/ws", "/v1/changes/orders?wait=1ms", "/v1/sse/orders"} {
			req, _ := http.NewRequest("GET", "http://"+n.addr+path, nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var body map[string]string
			_ = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if resp.StatusCode != 401 || body["error"] != "unauthorized" {
				t.Errorf("%s on %s: %d %v", name, path, resp.StatusCode, body)
			}
			if strings.Contains(body["message"], tok) && len(tok) > 10 {
				t.Errorf("%s: the error message repeats the token", name)
			}
		}
		// access_token works the same way.
		resp, err := http.Get("http://" + n.addr + "/v1/changes/orders?wait=1ms&access_token=" + url.QueryEscape(tok))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 {
			t.Errorf("%s via access_token: %d", name, resp.StatusCode)
		}
	}

	// Good tokens: HS256, and RS256 with a kid pgfeed must refetch for.
	rs := sign(jwt.SigningMethodRS256, "k2", rsaKey, good)
	for name, tok := range map[string]string{"HS256": hs256(t, good), "RS256 after refetch": rs} {
		c := n.dial(t, "?access_token="+url.QueryEscape(tok))
		c.subscribe(map[string]any{"id": "s", "table": "orders"})
		status, body := n.poll(t, "/v1/changes/orders?wait=1ms&access_token="+url.QueryEscape(tok))
		if status != 200 {
			t.Errorf("%s long poll: %d %v", name, status, body)
		}
		s, resp := n.sse(t, "/v1/sse/orders?access_token="+url.QueryEscape(tok), nil)
		if s == nil {
			t.Errorf("%s SSE: %d", name, resp.StatusCode)
		}
	}
	if f := fetches.Load(); f < 2 {
		t.Errorf("JWKS fetched %d times; the unknown kid should have refetched it", f)
	}
	// Anonymous access is off here: no token, no service.
	resp, err := http.Get("http://" + n.addr + "/v1/changes/orders?wait=1ms")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Errorf("no token: %d", resp.StatusCode)
	}
}

func mustBytes(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// TestClaimBoundPolicy: two users on one table, each sees only their own
// rows, live and on resume; masked columns never leave the server, the key
// stays whole.
func TestClaimBoundPolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.authNode([]subscriptions.Policy{{
		Table: "orders", Roles: []string{"authenticated"},
		Filter: "user_id=eq.{claims.sub}", Columns: []string{"id", "status", "user_id"},
	}}, "", feed.Config{})
	ann := n.dial(t, "?access_token="+hs256(t, userClaims("ann", time.Hour)))
	bob := n.dial(t, "?access_token="+hs256(t, userClaims("bob", time.Hour)))
	ann.subscribe(map[string]any{"id": "a", "table": "orders"})
	bobStart := bob.subscribe(map[string]any{"id": "b", "table": "orders"})
	bob.conn.CloseNow()

	e.exec(`INSERT INTO orders VALUES (1, 'open', 10, 'ann', NULL), (2, 'open', 20, 'bob', NULL), (3, 'open', 30, 'ann', NULL)`)
	e.exec(`UPDATE orders SET total = 11, status = 'paid' WHERE id = 1`)
	e.exec(`UPDATE orders SET total = 21 WHERE id = 2`)
	got := ann.changes(3, wait)
	for i, want := range []int{1, 3, 1} {
		if keyID(got[i]) != want {
			t.Fatalf("ann's change %d is row %d, want %d", i, keyID(got[i]), want)
		}
	}
	upd := got[2]
	for _, row := range []string{"new", "old"} {
		r := upd[row].(map[string]any)
		if _, leaked := r["total"]; leaked {
			t.Errorf("masked column total in %s: %v", row, r)
		}
		if r["user_id"] != "ann" || r["id"] == nil {
			t.Errorf("%s lacks allowed columns: %v", row, r)
		}
	}
	// A filter or select on a masked column would reveal it.
	ann.send(map[string]any{"type": "subscribe", "id": "x", "table": "orders", "filter": "total=gt.5"})
	if m := ann.next(wait); m["type"] != "error" || m["code"] != "forbidden" {
		t.Errorf("filter on a masked column: %v", m)
	}
	// Bob resumes: his rows only.
	bob2 := n.dial(t, "?access_token="+hs256(t, userClaims("bob", time.Hour)))
	bob2.subscribe(map[string]any{"id": "b", "table": "orders", "since": bobStart})
	for i, m := range bob2.changes(2, wait) {
		if keyID(m) != 2 {
			t.Fatalf("bob's resumed change %d is row %d", i, keyID(m))
		}
	}
	// A token without the claim the policy needs is denied, not served
	// everything.
	noSub := jwt.MapClaims{"role": "authenticated", "exp": time.Now().Add(time.Hour).Unix(), "aud": "app"}
	c := n.dial(t, "?access_token="+hs256(t, noSub))
	c.send(map[string]any{"type": "subscribe", "id": "s", "table": "orders"})
	if m := c.next(wait); m["type"] != "error" || m["code"] != "forbidden" {
		t.Errorf("missing claim: %v", m)
	}
	// A role with no policy: forbidden.
	admin := hs256(t, jwt.MapClaims{"sub": "x", "role": "admin", "exp": time.Now().Add(time.Hour).Unix(), "aud": "app"})
	d := n.dial(t, "?access_token="+admin)
	d.send(map[string]any{"type": "subscribe", "id": "s", "table": "orders"})
	if m := d.next(wait); m["type"] != "error" || m["code"] != "forbidden" {
		t.Errorf("role without a policy: %v", m)
	}
}

// TestTokenRefreshAndExpiry: an auth message before expiry keeps the
// subscriptions without a gap (and applies the new claims); without one the
// connection closes with 1008 token_expired around exp.
func TestTokenRefreshAndExpiry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.authNode([]subscriptions.Policy{
		{Table: "orders", Roles: []string{"authenticated"}, Filter: "user_id=eq.{claims.sub}"},
		{Table: "typed", Roles: []string{"authenticated"}, Filter: "txt=eq.{claims.team}"},
	}, "", feed.Config{})

	short := userClaims("ann", 3*time.Second)
	short["team"] = "red"
	c := n.dial(t, "?access_token="+hs256(t, short))
	c.subscribe(map[string]any{"id": "o", "table": "orders"})
	c.subscribe(map[string]any{"id": "t", "table": "typed"})
	e.exec(`INSERT INTO orders (id, user_id) VALUES (1, 'ann')`)
	c.expectNext("o", "insert", 1)

	// Refresh: same user, no team claim any more (typed is then denied).
	c.send(map[string]any{"type": "auth", "token": hs256(t, userClaims("ann", time.Hour))})
	m := c.next(wait)
	if m["type"] != "error" || m["id"] != "t" || m["code"] != "forbidden" {
		t.Fatalf("after auth, want typed's subscription ended as forbidden, got %v", m)
	}
	// Past the first token's expiry the connection lives on, and nothing
	// was missed: rows written around the switch all arrive.
	for i := 2; i <= 40; i++ {
		e.exec(`INSERT INTO orders (id, user_id) VALUES ($1, 'ann')`, i)
		if i == 20 {
			time.Sleep(3 * time.Second) // let the first token expire
		}
	}
	checkIDs(t, "across the refresh", c.changes(39, wait), 2)

	// A bad auth token is refused and changes nothing.
	c.send(map[string]any{"type": "auth", "token": "garbage"})
	if m := c.next(wait); m["type"] != "error" || m["code"] != "unauthorized" {
		t.Fatalf("bad auth: %v", m)
	}

	// Without a refresh: closed with 1008 token_expired around exp.
	d := n.dial(t, "?access_token="+hs256(t, userClaims("ann", 2*time.Second)))
	d.subscribe(map[string]any{"id": "o", "table": "orders"})
	start := time.Now()
	for range d.msgs {
	}
	err := <-d.errc
	var ce websocket.CloseError
	if !asCloseError(err, &ce) || ce.Code != websocket.StatusPolicyViolation || ce.Reason != "token_expired" {
		t.Fatalf("expiry closed with %v, want 1008 token_expired", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("closed %v after subscribing, with a 2 s token", took)
	}
}

// TestLimits: origins, subscriptions per connection, subscribe rate,
// connections per node.
func TestLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(feed.Config{
		AllowedOrigins: []string{"https://app.example"}, MaxSubscriptions: 3,
		SubscribeRate: 5, MaxConnections: 4,
	})
	ctx := context.Background()
	for origin, ok := range map[string]bool{"https://app.example": true, "https://evil.example": false} {
		h := http.Header{"Origin": {origin}}
		conn, resp, err := websocket.Dial(ctx, "ws://"+n.addr+"/v1/ws", &websocket.DialOptions{HTTPHeader: h})
		if ok && err != nil {
			t.Errorf("origin %s refused: %v", origin, err)
		}
		if !ok && (err == nil || resp == nil || resp.StatusCode != http.StatusForbidden) {
			t.Errorf("origin %s accepted (err %v)", origin, err)
		}
		if !ok && resp != nil {
			var body struct{ Error, Message string }
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || body.Error != "forbidden" || !strings.Contains(body.Message, "http.allowed_origins") {
				t.Errorf("origin %s refused with %+v (%v), want the JSON error naming http.allowed_origins", origin, body, err)
			}
		}
		if conn != nil {
			conn.CloseNow()
		}
	}
	// CORS for SSE and long polling from the allowed origin only.
	for origin, want := range map[string]string{"https://app.example": "https://app.example", "https://evil.example": ""} {
		req, _ := http.NewRequest("GET", "http://"+n.addr+"/v1/changes/orders?wait=1ms", nil)
		req.Header.Set("Origin", origin)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != want {
			t.Errorf("CORS for %s: %q", origin, got)
		}
	}

	c := n.dial(t, "")
	for i := range 3 {
		c.subscribe(map[string]any{"id": fmt.Sprint(i), "table": "orders"})
	}
	c.send(map[string]any{"type": "subscribe", "id": "4th", "table": "orders"})
	if m := c.next(wait); m["type"] != "error" || m["code"] != "rate_limited" || m["id"] != "4th" {
		t.Errorf("4th subscription: %v", m)
	}
	// Burst of subscribe messages: beyond 2x the rate, rate_limited.
	d := n.dial(t, "")
	limited := 0
	for i := range 30 {
		d.send(map[string]any{"type": "subscribe", "id": fmt.Sprint(i), "table": "nope"})
	}
	for range 30 {
		if m := d.next(wait); m["code"] == "rate_limited" {
			limited++
		}
	}
	if limited < 10 {
		t.Errorf("%d of 30 rapid subscribes rate limited, want at least 10", limited)
	}
	// Connections per node: 2 open (c, d) + 2 more, then refused.
	n.dial(t, "")
	n.dial(t, "")
	_, resp, err := websocket.Dial(ctx, "ws://"+n.addr+"/v1/ws", nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("5th connection: %v %v", resp, err)
	}
}

// TestTokenExpiryEndsStreams: an SSE stream ends at the token's expiry
// with a token_expired event; a long poll answers by then.
func TestTokenExpiryEndsStreams(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.authNode([]subscriptions.Policy{{Table: "orders", Roles: []string{"authenticated"}}}, "", feed.Config{})
	tok := url.QueryEscape(hs256(t, userClaims("ann", 2*time.Second)))
	s, resp := n.sse(t, "/v1/sse/orders?access_token="+tok, nil)
	if s == nil {
		t.Fatalf("SSE: %d", resp.StatusCode)
	}
	start := time.Now()
	ev := s.next(wait)
	if ev.event != "error" || !strings.Contains(ev.data, "token_expired") {
		t.Fatalf("SSE at expiry: %+v", ev)
	}
	if _, open := <-s.events; open {
		t.Error("SSE stream went on after token_expired")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("SSE ended %v after start, with a 2 s token", took)
	}
	tok = url.QueryEscape(hs256(t, userClaims("ann", 2*time.Second)))
	start = time.Now()
	status, body := n.poll(t, "/v1/changes/orders?wait=60s&access_token="+tok)
	if status != 200 || len(body["changes"].([]any)) != 0 {
		t.Fatalf("long poll at expiry: %d %v", status, body)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("long poll with wait=60s and a 2 s token answered after %v", took)
	}
}
