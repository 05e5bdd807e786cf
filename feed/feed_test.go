package feed_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgfeed/pgfeed/feed"
)

const wait = 15 * time.Second

// TestWSOpsAndFilters runs every op through table-wide, row-scoped,
// filtered, events-limited and select-projected subscriptions.
func TestWSOpsAndFilters(t *testing.T) { bothSources(t, testWSOpsAndFilters) }

func testWSOpsAndFilters(t *testing.T, e *env) {
	n := e.startNode(feed.Config{})
	c := n.dial(t, "")
	c.subscribe(map[string]any{"id": "all", "table": "public.orders"})
	c.subscribe(map[string]any{"id": "row2", "table": "orders", "filter": "id=eq.2"})
	c.subscribe(map[string]any{"id": "open", "table": "public.orders", "filter": "status=eq.open&total=gt.10"})
	c.subscribe(map[string]any{"id": "del", "table": "public.orders", "events": []string{"delete"}})
	c.subscribe(map[string]any{"id": "slim", "table": "public.orders", "select": "status", "filter": "id=in.(1,3)"})
	c.subscribe(map[string]any{"id": "nulls", "table": "public.orders", "filter": "deleted_at=is.null&user_id=neq.bob&total=lte.100&total=gte.1&id=lt.3"})

	e.exec(`INSERT INTO orders VALUES (1, 'open', 50, 'ann', NULL), (2, 'open', 5, 'bob', NULL), (3, 'closed', 20, 'cid', now())`)
	e.exec(`UPDATE orders SET status = 'closed' WHERE id = 1`) // leaves "open"
	e.exec(`DELETE FROM orders WHERE id = 2`)
	e.exec(`TRUNCATE orders`)

	got := map[string][]string{}
	var slim []map[string]any
	// all: 3 inserts + update + delete + truncate = 6; row2: insert, delete,
	// truncate = 3; open: insert 1, update 1 (leaving) , truncate = 3; del:
	// delete = 1 (truncate not in events); slim: insert 1, insert 3, update
	// 1, truncate = 4; nulls: insert 1 (ann), update 1, truncate = 3.
	for range 6 + 3 + 3 + 1 + 4 + 3 {
		m := c.next(wait)
		if m["type"] != "change" {
			t.Fatalf("got %v", m)
		}
		sub := m["sub"].(string)
		got[sub] = append(got[sub], fmt.Sprintf("%s %d", m["op"], keyID(m)))
		if sub == "slim" {
			slim = append(slim, m)
		}
	}
	want := map[string][]string{
		"all":   {"insert 1", "insert 2", "insert 3", "update 1", "delete 2", "truncate -1"},
		"row2":  {"insert 2", "delete 2", "truncate -1"},
		"open":  {"insert 1", "update 1", "truncate -1"},
		"del":   {"delete 2"},
		"slim":  {"insert 1", "insert 3", "update 1", "truncate -1"},
		"nulls": {"insert 1", "update 1", "truncate -1"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("deliveries:\n got  %v\n want %v", got, want)
	}
	// select keeps the key and the selected columns, in new and old alike.
	upd := slim[2]
	if !reflect.DeepEqual(upd["new"], map[string]any{"id": json.Number("1"), "status": "closed"}) ||
		!reflect.DeepEqual(upd["old"], map[string]any{"id": json.Number("1"), "status": "open"}) {
		t.Errorf("projected update: new %v old %v", upd["new"], upd["old"])
	}
	if tr := slim[3]; tr["key"] != nil || tr["new"] != nil || tr["old"] != nil {
		t.Errorf("truncate event: %v", tr)
	}
}

// TestEventJSON checks the change event's exact JSON against to_jsonb.
func TestEventJSON(t *testing.T) { bothSources(t, testEventJSON) }

func testEventJSON(t *testing.T, e *env) {
	n := e.startNode(feed.Config{})
	c := n.dial(t, "")
	start := c.subscribe(map[string]any{"id": "s", "table": "public.typed"})
	if start == "" {
		t.Fatal("subscribed without a cursor")
	}
	e.exec(`INSERT INTO typed VALUES (1, 9007199254740993, 12345678901234567890.123456789, 'héllo "q" \ ', true,
		'2026-11-27 14:05:41.123456+00', '{"a":[1,{"b":null}]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{1,2,NULL}', NULL)`)
	e.exec(`UPDATE typed SET num = 0.5 WHERE id = 1`)
	var row, oldRow json.RawMessage
	if err := e.db.QueryRow(context.Background(), `SELECT to_jsonb(t) FROM typed t`).Scan(&row); err != nil {
		t.Fatal(err)
	}
	raw := c.nextRaw(wait)
	var ins struct {
		Type, Sub, Cursor, Table, Op string
		Key, New, Old                json.RawMessage
		CommitTime                   string `json:"commit_time"`
	}
	if err := json.Unmarshal(raw, &ins); err != nil {
		t.Fatal(err)
	}
	if ins.Type != "change" || ins.Sub != "s" || ins.Table != "public.typed" || ins.Op != "insert" || string(ins.Old) != "null" {
		t.Errorf("insert event: %s", raw)
	}
	if _, err := time.Parse("2006-01-02T15:04:05.000000Z", ins.CommitTime); err != nil {
		t.Errorf("commit_time %q: %v", ins.CommitTime, err)
	}
	if ins.Cursor <= start && len(ins.Cursor) <= len(start) {
		t.Errorf("cursor %q not after the start %q", ins.Cursor, start)
	}
	if string(ins.Key) != `{"id":1}` {
		t.Errorf("key %s", ins.Key)
	}
	upd := c.nextRaw(wait)
	var u struct{ New, Old json.RawMessage }
	if err := json.Unmarshal(upd, &u); err != nil {
		t.Fatal(err)
	}
	oldRow = ins.New
	if !jsonEqual(t, u.New, row) {
		t.Errorf("update new:\n got  %s\n want %s", u.New, row)
	}
	if !jsonEqual(t, u.Old, oldRow) {
		t.Errorf("update old %s, want the inserted row %s", u.Old, oldRow)
	}
	// Values exactly as to_jsonb renders them, byte for byte after compacting.
	var compact bytes.Buffer
	_ = json.Compact(&compact, row)
	if !strings.Contains(string(upd), `"big":9007199254740993`) || !strings.Contains(string(raw), `"num":12345678901234567890.123456789`) ||
		!strings.Contains(string(raw), `"at":"2026-11-27T14:05:41.123456+00:00"`) || !strings.Contains(string(raw), `"nums":[1,2,null]`) {
		t.Errorf("values not rendered as to_jsonb renders them: %s", raw)
	}
}

// jsonEqual compares JSON values exactly (numbers as written).
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	da := json.NewDecoder(bytes.NewReader(a))
	da.UseNumber()
	db := json.NewDecoder(bytes.NewReader(b))
	db.UseNumber()
	if da.Decode(&x) != nil || db.Decode(&y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

// TestSubscribedMeansLive writes right after "subscribed": the change
// arrives, every time.
func TestSubscribedMeansLive(t *testing.T) { bothSources(t, testSubscribedMeansLive) }

func testSubscribedMeansLive(t *testing.T, e *env) {
	n := e.startNode(feed.Config{})
	for i := range 20 {
		c := n.dial(t, "")
		c.subscribe(map[string]any{"id": "s", "table": "orders", "filter": fmt.Sprintf("id=eq.%d", i)})
		e.exec(`INSERT INTO orders (id) VALUES ($1)`, i)
		c.expectNext("s", "insert", i)
		c.conn.CloseNow()
	}
}

// TestWSErrors: bad messages get the contract's codes and the connection
// and its other subscriptions keep working; an oversized frame closes.
func TestWSErrors(t *testing.T) { bothSources(t, testWSErrors) }

func testWSErrors(t *testing.T, e *env) {
	n := e.startNode(feed.Config{})
	c := n.dial(t, "")
	c.subscribe(map[string]any{"id": "ok", "table": "orders"})

	expectError := func(what, id, code string) {
		t.Helper()
		m := c.next(wait)
		if m["type"] != "error" || m["code"] != code {
			t.Fatalf("%s: got %v, want error %s", what, m, code)
		}
		if id == "" && m["id"] != nil || id != "" && m["id"] != id {
			t.Errorf("%s: error id %v, want %q", what, m["id"], id)
		}
		if msg, _ := m["message"].(string); msg == "" {
			t.Errorf("%s: error without a message", what)
		}
	}
	ctx := context.Background()
	_ = c.conn.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe",`))
	expectError("malformed JSON", "", "bad_request")
	_ = c.conn.Write(ctx, websocket.MessageText, []byte(`[1,2]`))
	expectError("JSON that is not an object", "", "bad_request")
	c.send(map[string]any{"type": "subscribe", "id": "e6", "table": "orders", "events": "insert"})
	expectError("events as a string", "e6", "bad_request")
	c.send(map[string]any{"type": "dance"})
	expectError("unknown type", "", "bad_request")
	c.send(map[string]any{"type": "subscribe", "id": "f", "table": "orders", "filter": "id=like.1"})
	expectError("bad filter op", "f", "bad_request")
	c.send(map[string]any{"type": "subscribe", "id": "v", "table": "orders", "filter": "total=gt.abc"})
	expectError("bad filter value", "v", "bad_request")
	c.send(map[string]any{"type": "subscribe", "id": "col", "table": "orders", "filter": "colour=eq.red"})
	expectError("unknown column", "col", "bad_request")
	c.send(map[string]any{"type": "subscribe", "id": "sel", "table": "orders", "select": "colour"})
	expectError("unknown select column", "sel", "bad_request")
	c.send(map[string]any{"type": "subscribe", "id": "tbl", "table": "public.nope"})
	expectError("unknown table", "tbl", "not_found")
	c.send(map[string]any{"type": "subscribe", "id": "sec", "table": "public.secret"})
	expectError("table without a policy", "sec", "forbidden")
	c.send(map[string]any{"type": "subscribe", "id": "ev", "table": "orders", "events": []string{"upsert"}})
	expectError("bad events", "ev", "bad_request")
	// A since that is no cursor is an unknown one: a reset, then live.
	c.send(map[string]any{"type": "subscribe", "id": "cur", "table": "orders", "since": "not-a-cursor"})
	if m := c.next(wait); m["type"] != "subscribed" || m["id"] != "cur" {
		t.Fatalf("subscribe with a bad cursor: %v", m)
	}
	if m := c.next(wait); m["type"] != "reset" || m["sub"] != "cur" || m["reason"] != "cursor_expired" {
		t.Fatalf("after a bad cursor: %v, want a reset", m)
	}
	c.send(map[string]any{"type": "unsubscribe", "id": "cur"})
	c.send(map[string]any{"type": "subscribe", "id": "ok", "table": "orders"})
	expectError("duplicate id", "ok", "bad_request")
	c.send(map[string]any{"type": "unsubscribe", "id": "missing"})
	expectError("unknown unsubscribe", "missing", "not_found")
	c.send(map[string]any{"type": "ping"})
	if m := c.next(wait); m["type"] != "pong" {
		t.Fatalf("ping: %v", m)
	}

	// The good subscription never stopped.
	e.exec(`INSERT INTO orders (id) VALUES (7)`)
	c.expectNext("ok", "insert", 7)

	// A 2 MB frame: too_large, then the connection closes (1009).
	big := `{"type":"ping","pad":"` + strings.Repeat("x", 2<<20) + `"}`
	_ = c.conn.Write(ctx, websocket.MessageText, []byte(big))
	expectError("2 MB frame", "", "too_large")
	select {
	case _, ok := <-c.msgs:
		if ok {
			t.Fatal("message after too_large")
		}
	case <-time.After(wait):
		t.Fatal("connection not closed after too_large")
	}
	if err := <-c.errc; websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
		t.Errorf("close after too_large: %v", err)
	}

	// Another client was never affected.
	d := n.dial(t, "")
	d.subscribe(map[string]any{"id": "x", "table": "orders"})
	e.exec(`INSERT INTO orders (id) VALUES (8)`)
	d.expectNext("x", "insert", 8)
}

// TestUnsubscribe stops deliveries to one subscription only.
func TestUnsubscribe(t *testing.T) { bothSources(t, testUnsubscribe) }

func testUnsubscribe(t *testing.T, e *env) {
	n := e.startNode(feed.Config{})
	c := n.dial(t, "")
	c.subscribe(map[string]any{"id": "a", "table": "orders"})
	c.subscribe(map[string]any{"id": "b", "table": "orders", "filter": "id=eq.2"})
	c.send(map[string]any{"type": "unsubscribe", "id": "b"})
	c.send(map[string]any{"type": "ping"})
	if m := c.next(wait); m["type"] != "pong" {
		t.Fatalf("got %v", m)
	}
	e.exec(`INSERT INTO orders (id) VALUES (2)`)
	e.exec(`INSERT INTO orders (id) VALUES (3)`)
	c.expectNext("a", "insert", 2)
	c.expectNext("a", "insert", 3)
}

// TestHTTPErrors: errors before a stream starts are HTTP statuses with the
// contract's JSON body.
func TestHTTPErrors(t *testing.T) { bothSources(t, testHTTPErrors) }

func testHTTPErrors(t *testing.T, e *env) {
	n := e.startNode(feed.Config{})
	cases := []struct {
		path   string
		status int
		code   string
	}{
		{"/v1/sse/public.nope", 404, "not_found"},
		{"/v1/sse/public.secret", 403, "forbidden"},
		{"/v1/sse/orders?colour=eq.red", 400, "bad_request"},
		{"/v1/sse/orders?id=zz.1", 400, "bad_request"},
		{"/v1/changes/orders?wait=forever", 400, "bad_request"},
		{"/v1/changes/orders?since=t1&wait=0s", 409, "cursor_expired"},
		{"/v1/changes/orders?since=garbage&wait=0s", 409, "cursor_expired"},
		{"/v1/sse/orders?access_token=abc", 401, "unauthorized"},
		{"/v1/nothing", 404, "not_found"},
		{"/v1/sse/", 404, "not_found"},
		{"/v1/sse/a/b", 404, "not_found"},
		{"/healthz/x", 404, "not_found"},
	}
	for _, c := range cases {
		resp, err := http.Get("http://" + n.addr + c.path)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error, Message string }
		_ = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != c.status || body.Error != c.code || body.Message == "" {
			t.Errorf("%s: %d %+v, want %d %s", c.path, resp.StatusCode, body, c.status, c.code)
		}
	}
	resp, err := http.Post("http://"+n.addr+"/v1/sse/orders", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Error, Message string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != 405 || body.Error != "bad_request" || resp.Header.Get("Allow") == "" {
		t.Errorf("POST: %d %+v, want 405 with a JSON body and Allow", resp.StatusCode, body)
	}
	resp, err = http.Get("http://" + n.addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("healthz: %v %v", resp, err)
	}
	resp, err = http.Get("http://" + n.addr + "/readyz")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("readyz: %v %v", resp, err)
	}
	resp, err = http.Get("http://" + n.addr + "/metrics")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("metrics: %v %v", resp, err)
	}
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	if !strings.Contains(buf.String(), "pgfeed_deliveries_total") {
		t.Errorf("metrics: %s", buf.String())
	}
}

// TestShutdownGoesAway: stopping the server closes WebSockets with 1001.
func TestShutdownGoesAway(t *testing.T) { bothSources(t, testShutdownGoesAway) }

func testShutdownGoesAway(t *testing.T, e *env) {
	n := e.startNode(feed.Config{})
	c := n.dial(t, "")
	c.subscribe(map[string]any{"id": "s", "table": "orders"})
	stopped := make(chan struct{})
	go func() { n.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop within 10 s")
	}
	for range c.msgs {
	}
	if err := <-c.errc; websocket.CloseStatus(err) != websocket.StatusGoingAway {
		t.Errorf("close on shutdown: %v, want 1001", err)
	}
}
