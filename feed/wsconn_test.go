package feed_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/pgfeed/pgfeed/feed"
	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/subscriptions"
)

// clientFrame is a masked WebSocket text frame, as a client sends it.
func clientFrame(payload string) []byte {
	key := [4]byte{1, 2, 3, 4}
	f := []byte{0x81}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	default:
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	}
	f = append(f, key[:]...)
	for i := range len(payload) {
		f = append(f, payload[i]^key[i%4])
	}
	return f
}

// serverMessage reads one unmasked text frame.
func serverMessage(t *testing.T, r *bufio.Reader) map[string]any {
	t.Helper()
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		t.Fatal(err)
	}
	if h[0] != 0x81 {
		t.Fatalf("frame header %x, want a final text frame", h)
	}
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			t.Fatal(err)
		}
		n = int(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			t.Fatal(err)
		}
		n = int(binary.BigEndian.Uint64(l[:]))
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(p))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("message %q: %v", p, err)
	}
	return m
}

// TestWebSocketFramesSentWithTheUpgrade sends the upgrade request and the
// first messages in one write, as a client may: the messages net/http read
// along with the request must reach the connection, and the answers (sent
// in corked bursts) arrive whole and in order.
func TestWebSocketFramesSentWithTheUpgrade(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(feed.Config{})
	var first []byte
	first = append(first, clientFrame(`{"type":"ping"}`)...)
	first = append(first, clientFrame(`{"type":"subscribe","id":"s1","table":"public.orders"}`)...)
	first = append(first, clientFrame(`{"type":"nonsense","id":"x"}`)...)
	w := dialRaw(t, n.addr, first...)
	c, r := w.c, w.r
	if m := serverMessage(t, r); m["type"] != "pong" {
		t.Fatalf("first message %v, want pong", m)
	}
	if m := serverMessage(t, r); m["type"] != "subscribed" || m["id"] != "s1" {
		t.Fatalf("second message %v, want subscribed s1", m)
	}
	if m := serverMessage(t, r); m["type"] != "error" || m["code"] != "bad_request" {
		t.Fatalf("third message %v, want a bad_request error", m)
	}
	// A burst: one transaction of 300 rows, every change in order.
	e.exec(`INSERT INTO orders (id, status, total, user_id) SELECT g, 'open', g, 'u' || g FROM generate_series(1, 300) g`)
	for i := 1; i <= 300; i++ {
		m := serverMessage(t, r)
		if m["type"] != "change" || keyID(m) != i {
			t.Fatalf("change %d: %v", i, m)
		}
	}
	if _, err := c.Write(clientFrame(`{"type":"ping"}`)); err != nil {
		t.Fatal(err)
	}
	if m := serverMessage(t, r); m["type"] != "pong" {
		t.Fatalf("after the burst %v, want pong", m)
	}
}

// blockingCatalog answers nothing until the caller gives up.
type blockingCatalog struct{ asked chan struct{} }

func (b blockingCatalog) Table(ctx context.Context, name string) (*subscriptions.Table, error) {
	select {
	case b.asked <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestShutdownWhileSubscribing: a subscribe stuck in the catalog (a slow
// or unreachable database) does not keep the server from shutting down:
// the connection's work is cancelled when it closes.
func TestShutdownWhileSubscribing(t *testing.T) {
	t.Parallel()
	p, err := subscriptions.CompilePolicies(defaultPolicies)
	if err != nil {
		t.Fatal(err)
	}
	cat := blockingCatalog{asked: make(chan struct{}, 1)}
	srv, err := feed.New(feed.Config{Catalog: cat, Policies: p, Anonymous: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start(listener.Cursor{Tick: 1})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	c, _, err := websocket.Dial(dctx, "ws://"+l.Addr().String()+"/v1/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(dctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"s","table":"public.orders"}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cat.asked:
	case <-dctx.Done():
		t.Fatal("the subscribe never reached the catalog")
	}
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Serve did not return after shutdown while a subscribe was waiting on the catalog")
	}
}

// TestWebSocketPing: the server pings every Heartbeat; a client that
// answers stays connected and its messages are read as before (pongs,
// split across writes or sent with a message, are taken out of the
// stream); one that stops answering is closed.
func TestWebSocketPing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const beat = 100 * time.Millisecond
	n := e.startNode(feed.Config{Heartbeat: beat, PongWait: beat})
	w := dialRaw(t, n.addr)
	c, r := w.c, w.r
	// A pong with a payload, masked as a client sends it.
	pong := []byte{0x8A, 0x80 | 3, 9, 8, 7, 6, 'a' ^ 9, 'b' ^ 8, 'c' ^ 7}
	expectPing := func() {
		t.Helper()
		var h [2]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			t.Fatalf("waiting for a ping: %v", err)
		}
		if h != [2]byte{0x89, 0x00} {
			t.Fatalf("frame %x, want a ping", h)
		}
	}
	for i := range 4 {
		expectPing()
		var err error
		switch i {
		case 0: // whole
			_, err = c.Write(pong)
		case 1: // in pieces
			for _, part := range [][]byte{pong[:1], pong[1:4], pong[4:]} {
				if _, err = c.Write(part); err != nil {
					break
				}
				time.Sleep(5 * time.Millisecond) // separate reads on the server
			}
		case 2: // followed by a message in the same write
			_, err = c.Write(append(slices.Clone(pong), clientFrame(`{"type":"ping"}`)...))
			if err == nil {
				if m := serverMessage(t, r); m["type"] != "pong" {
					t.Fatalf("after a pong and a ping message: %v", m)
				}
			}
		case 3:
			_, err = c.Write(pong)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	// Silence: the next ping goes unanswered, and the one after finds it so.
	expectPing()
	start := time.Now()
	if _, err := io.ReadAll(r); err != nil {
		t.Fatalf("waiting for the close: %v", err)
	}
	if d := time.Since(start); d > 10*beat {
		t.Errorf("closed %v after the unanswered ping, want about %v", d, beat)
	}
}

// TestWebSocketLatePong: a client whose pongs come later than a heartbeat
// but within Config.PongWait (a busy client, or a busy server late to read
// them) stays connected; one that stops answering is closed, not before
// PongWait has passed since its last pong.
func TestWebSocketLatePong(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const beat, wait = 50 * time.Millisecond, 600 * time.Millisecond
	n := e.startNode(feed.Config{Heartbeat: beat, PongWait: wait})
	w := dialRaw(t, n.addr)
	pong := []byte{0x8A, 0x80, 1, 2, 3, 4}
	// nextFrame reads one server frame, returning its first byte and
	// payload.
	nextFrame := func() (byte, []byte) {
		t.Helper()
		var h [2]byte
		if _, err := io.ReadFull(w.r, h[:]); err != nil {
			t.Fatalf("reading a frame: %v", err)
		}
		if h[1] > 125 {
			t.Fatalf("frame header %x: want a short frame", h)
		}
		p := make([]byte, h[1])
		if _, err := io.ReadFull(w.r, p); err != nil {
			t.Fatalf("reading a frame: %v", err)
		}
		return h[0], p
	}
	// Answer every fourth ping only: each answered one waited about
	// three heartbeats.
	var lastPong time.Time
	for pings := 1; pings <= 16; {
		if op, _ := nextFrame(); op != 0x89 {
			t.Fatalf("frame %x, want a ping", op)
		}
		if pings%4 == 0 {
			if _, err := w.c.Write(pong); err != nil {
				t.Fatal(err)
			}
			lastPong = time.Now()
		}
		pings++
	}
	w.send(t, `{"type":"ping"}`)
	for {
		op, p := nextFrame()
		if op == 0x89 {
			continue
		}
		if op != 0x81 || string(p) != `{"type":"pong"}` {
			t.Fatalf("frame %x %q, want the pong message", op, p)
		}
		break
	}
	// Silence.
	if _, err := io.ReadAll(w.r); err != nil {
		t.Fatalf("waiting for the close: %v", err)
	}
	if d := time.Since(lastPong); d < wait {
		t.Errorf("closed %v after the last pong, before PongWait (%v)", d, wait)
	}
}

// rawWS is a WebSocket client on a bare TCP connection: no goroutine of
// its own, so that a test sees only the server's.
type rawWS struct {
	c net.Conn
	r *bufio.Reader
}

// dialRaw upgrades a bare TCP connection to a WebSocket; with is sent in
// the same write as the upgrade request (frames a client sends at once).
func dialRaw(t *testing.T, addr string, with ...byte) *rawWS {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	req := "GET /v1/ws HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
	if _, err := c.Write(append([]byte(req), with...)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade answered %s", resp.Status)
	}
	return &rawWS{c: c, r: r}
}

func (w *rawWS) send(t *testing.T, msg string) {
	t.Helper()
	if _, err := w.c.Write(clientFrame(msg)); err != nil {
		t.Fatal(err)
	}
}

// subscribedRaw opens count raw WebSocket connections to n, each
// subscribed to public.orders.
func subscribedRaw(t *testing.T, n *node, count int) []*rawWS {
	t.Helper()
	clients := make([]*rawWS, count)
	for i := range clients {
		clients[i] = dialRaw(t, n.addr)
		clients[i].send(t, `{"type":"subscribe","id":"s","table":"public.orders"}`)
		if m := serverMessage(t, clients[i].r); m["type"] != "subscribed" {
			t.Fatalf("client %d: %v", i, m)
		}
	}
	return clients
}

// hangUp closes every client and waits until the server has no connection
// left and metric is back to 0.
func hangUp(t *testing.T, n *node, clients []*rawWS, metric string) {
	t.Helper()
	for _, c := range clients {
		c.c.Close()
	}
	n.waitMetric(t, "pgfeed_connections", 0)
	n.waitMetric(t, metric, 0)
}

// expectRow1 reads the insert of row 1 from every client.
func expectRow1(t *testing.T, clients []*rawWS) {
	t.Helper()
	for i, c := range clients {
		if m := serverMessage(t, c.r); m["type"] != "change" || keyID(m) != 1 {
			t.Fatalf("client %d: %v", i, m)
		}
	}
}

// TestIdleWebSocketsSleep: an idle connection keeps no goroutine (its
// socket waits in the server's poller); changes still reach it, a message
// or a ping wakes it, and a client that hangs up is torn down.
func TestIdleWebSocketsSleep(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(feed.Config{})
	const conns = 40
	clients := subscribedRaw(t, n, conns)
	n.waitMetric(t, "pgfeed_websockets_asleep", conns)
	e.insertRows(1, 2)
	expectRow1(t, clients)
	for i, c := range clients {
		c.send(t, `{"type":"ping"}`)
		if m := serverMessage(t, c.r); m["type"] != "pong" {
			t.Fatalf("client %d after sleeping: %v", i, m)
		}
	}
	n.waitMetric(t, "pgfeed_websockets_asleep", conns)
	// Protocol pings, as many client libraries send them, are answered
	// with their payload and do not keep the connection awake.
	for i, c := range clients {
		if _, err := c.c.Write([]byte{0x89, 0x80 | 2, 1, 2, 3, 4, 'h' ^ 1, 'i' ^ 2}); err != nil {
			t.Fatal(err)
		}
		var f [4]byte
		if _, err := io.ReadFull(c.r, f[:]); err != nil {
			t.Fatalf("client %d: waiting for the pong: %v", i, err)
		}
		if f != [4]byte{0x8A, 2, 'h', 'i'} {
			t.Fatalf("client %d: frame %x, want a pong with the ping's payload", i, f)
		}
	}
	n.waitMetric(t, "pgfeed_websockets_asleep", conns)
	hangUp(t, n, clients, "pgfeed_websockets_asleep")
}

// TestWritersEndWhenIdle: a connection that was only sent its "subscribed"
// keeps no writer goroutine, however long writers linger; nor does one sent
// a trickle of changes, which the fan-out writes to the socket itself. A
// transaction big enough to start the writer while the fan-out is still
// queueing it does; the writer of a busy connection (one whose writer sent
// changes before) then lingers for more; all end with the connections.
func TestWritersEndWhenIdle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(feed.Config{WriterLinger: time.Hour})
	const conns = 20
	clients := subscribedRaw(t, n, conns)
	n.waitMetric(t, "pgfeed_websocket_writers", 0)
	e.insertRows(1, 2)
	expectRow1(t, clients)
	if got := n.metric(t, "pgfeed_websocket_writers"); got != 0 {
		t.Fatalf("pgfeed_websocket_writers = %v after a change, want 0: the fan-out sends it", got)
	}
	const rows = 100 // in one transaction: over flushEarly
	for round := range 2 {
		e.exec(`INSERT INTO orders (id, status) SELECT g, 'open' FROM generate_series($1::int, $2::int) g`, 2+round*rows, 1+(round+1)*rows)
		for i, c := range clients {
			for k := range rows {
				if m := serverMessage(t, c.r); m["type"] != "change" || keyID(m) != 2+round*rows+k {
					t.Fatalf("client %d, round %d: %v", i, round, m)
				}
			}
		}
	}
	n.waitMetric(t, "pgfeed_websocket_writers", conns)
	hangUp(t, n, clients, "pgfeed_websocket_writers")
}

// TestMessageSizes: messages that need each form of the frame length (a
// pong: under 126 bytes; changes: 126 to 65535, and more) reach a standard
// client whole.
func TestMessageSizes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(feed.Config{})
	c := n.dial(t, "")
	c.subscribe(map[string]any{"id": "s", "table": "orders", "select": "id,status"})
	for i, size := range []int{1, 60000, 70000, 200000} {
		e.exec(`INSERT INTO orders (id, status) VALUES ($1, repeat('y', $2))`, i+1, size)
		m := c.expectNext("s", "insert", i+1)
		if got := m["new"].(map[string]any)["status"].(string); len(got) != size {
			t.Errorf("row %d: status of %d bytes, want %d", i+1, len(got), size)
		}
	}
	c.send(map[string]any{"type": "ping"})
	if m := c.next(10 * time.Second); m["type"] != "pong" {
		t.Errorf("ping: %v", m)
	}
}
