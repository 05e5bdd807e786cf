package feed_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/pgfeed/pgfeed/feed"
	"github.com/pgfeed/pgfeed/internal/pgtest"
	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/migrations"
	"github.com/pgfeed/pgfeed/subscriptions"
	"github.com/pgfeed/pgfeed/triggers"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// sources are the sources the live feed's contract tests run against.
var sources = []string{"trigger", "logical"}

// bothSources runs test once per source, in parallel, each on a fresh
// database. The client sees no difference but the cursors: every test run
// this way holds for both. (The logical source's test tables have REPLICA
// IDENTITY FULL, so that old rows are whole, as triggers give them.)
func bothSources(t *testing.T, test func(t *testing.T, e *env)) {
	t.Helper()
	t.Parallel()
	for _, src := range sources {
		t.Run(src, func(t *testing.T) {
			t.Parallel()
			test(t, newEnvSource(t, src))
		})
	}
}

// env is a database with captured tables and pgfeed nodes serving it.
type env struct {
	t      testing.TB
	url    string
	source string // "trigger" or "logical"
	db     *pgx.Conn
	pool   *pgxpool.Pool
	// behind marks every batch the nodes emit Behind, as a source that
	// has fallen behind does: the fan-out then flushes through its
	// flusher goroutine. Set before starting nodes.
	behind bool
}

// behindSource is a source whose batches all say Behind.
type behindSource struct{ changeSource }

func (s behindSource) Run(ctx context.Context, emit func(listener.Batch) error) error {
	return s.changeSource.Run(ctx, func(b listener.Batch) error {
		b.Behind = true
		return emit(b)
	})
}

const schema = `
CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric, user_id text, deleted_at timestamptz);
CREATE TABLE secret (id int PRIMARY KEY, v text);
CREATE TABLE typed (
	id int PRIMARY KEY, big bigint, num numeric, txt text, flag boolean, at timestamptz,
	doc jsonb, uid uuid, nums int[], nothing text);
`

// newEnv creates a database with pgfeed's schema and the test tables, all
// captured by triggers. The authorization tests (auth_test.go, rls_test.go)
// use it alone: policies, tokens and RLS act on events after the stream,
// the same whatever their source.
func newEnv(t testing.TB) *env {
	t.Helper()
	return newEnvSource(t, "trigger")
}

// newEnvSource is newEnv with the tables captured for source.
func newEnvSource(t testing.TB, source string) *env {
	t.Helper()
	return newEnvAt(t, pgtest.NewMigratedDB(t), source)
}

// newEnvAt is newEnvSource on the database at url.
func newEnvAt(t testing.TB, url, source string) *env {
	t.Helper()
	ctx := context.Background()
	sqldb, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer sqldb.Close()
	if _, err := migrations.Up(ctx, sqldb); err != nil { // a no-op when migrated
		t.Fatal(err)
	}
	e := &env{t: t, url: url, source: source, db: pgtest.Connect(t, url)}
	if source == "logical" {
		// The test server runs with synchronous_commit off: a commit's WAL
		// would wait up to 200 ms (wal_writer_delay) to be flushed, and so
		// to be decoded. Writers of this database flush at commit instead
		// (cheap: fsync is off too), as a production server does.
		e.exec(`DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = on', current_database()); END $$`)
		e.exec(`SET synchronous_commit = on`)
	}
	e.exec(schema)
	switch source {
	case "trigger":
		_, err = triggers.Enable(ctx, e.db, "orders", "secret", "typed")
	case "logical":
		_, err = triggers.EnableLogical(ctx, e.db, triggers.Publication{ReplicaIdentityFull: true}, "orders", "secret", "typed")
	default:
		t.Fatalf("unknown source %q", source)
	}
	if err != nil {
		t.Fatal(err)
	}
	e.pool, err = pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.pool.Close)
	return e
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
}

// node is one running pgfeed: a listener and a feed server.
type node struct {
	addr   string
	srv    *feed.Server
	cancel context.CancelFunc
	done   chan struct{}
}

// defaultPolicies: orders and typed readable by anon; secret has none.
var defaultPolicies = []subscriptions.Policy{
	{Table: "public.orders", Roles: []string{"anon"}},
	{Table: "public.typed", Roles: []string{"anon"}},
}

// changeSource is what a node needs of a listener, of either source.
type changeSource interface {
	Run(ctx context.Context, emit func(listener.Batch) error) error
	Ready() <-chan struct{}
	Position() listener.Cursor
}

// startNode runs a pgfeed node on e's database until the test ends (or
// stop is called). cfg's zero fields get test defaults. With the logical
// source the node streams from a slot of its own.
func (e *env) startNode(cfg feed.Config) *node {
	e.t.Helper()
	slot := ""
	if e.source == "logical" {
		slot = pgtest.Slot(e.t, e.url)
	}
	return e.startNodeOn(cfg, slot)
}

// startNodeOn is startNode streaming from slot (logical source only).
func (e *env) startNodeOn(cfg feed.Config, slot string) *node {
	t := e.t
	t.Helper()
	if cfg.Policies == nil {
		p, err := subscriptions.CompilePolicies(defaultPolicies)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Policies = p
	}
	if cfg.Verifier == nil {
		cfg.Anonymous = true
	}
	var (
		src     changeSource
		logical *listener.Logical
	)
	if e.source == "logical" {
		// Named as the trigger listener's connection is, for the tests
		// that terminate it.
		url := e.url + "&application_name=pgfeed-listener"
		if !strings.Contains(e.url, "?") {
			url = e.url + "?application_name=pgfeed-listener"
		}
		repl, err := listener.ReplicationConnector(url)
		if err != nil {
			t.Fatal(err)
		}
		var srv *feed.Server // set below; Keep is called once Run runs
		logical = listener.NewLogical(listener.LogicalConfig{
			DB: e.pool, Replicate: repl, Slot: slot,
			Keep: func() listener.Cursor { return srv.HistoryStart() },
			// Unbounded: the tests share one server, whose WAL grows by
			// megabytes with every database another test creates; with the
			// default bound, a busy run moved the confirmed position past a
			// node's history and a restarted node answered reset.
			MaxRetainedWAL: 1 << 50,
		})
		src = logical
		cfg.Catalog = triggers.NewPublicationCatalog(e.pool, "pgfeed", time.Millisecond)
		cfg.Newest = logical.Newest
		srv, err = feed.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return e.runNode(cfg, srv, src)
	}
	cfg.Catalog = triggers.NewCatalog(e.pool, time.Millisecond)
	if cfg.Store == nil {
		cfg.Store = listener.Log{DB: e.pool}
	}
	srv, err := feed.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	connCfg, err := pgx.ParseConfig(e.url)
	if err != nil {
		t.Fatal(err)
	}
	connCfg.RuntimeParams["application_name"] = "pgfeed-listener"
	src = listener.New(listener.Config{
		Connect: func(ctx context.Context) (*pgx.Conn, error) { return pgx.ConnectConfig(ctx, connCfg.Copy()) },
		Poll:    200 * time.Millisecond,
	})
	return e.runNode(cfg, srv, src)
}

// runNode runs srv fed by src until the test ends or stop is called.
func (e *env) runNode(cfg feed.Config, srv *feed.Server, src changeSource) *node {
	t := e.t
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if e.behind {
		src = behindSource{src}
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{addr: l.Addr().String(), srv: srv, cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := src.Run(ctx, srv.Emit); err != nil {
			t.Errorf("listener: %v", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := srv.Serve(ctx, l); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	go func() { wg.Wait(); close(n.done) }()
	select {
	case <-src.Ready():
		srv.Start(src.Position())
	case <-n.done:
		t.Fatal("listener ended before it was ready")
	case <-time.After(30 * time.Second):
		t.Fatal("listener not ready")
	}
	t.Cleanup(n.stop)
	return n
}

func (n *node) stop() {
	n.cancel()
	<-n.done
}

// wsClient is a test WebSocket client that reads in the background.
type wsClient struct {
	t    *testing.T
	conn *websocket.Conn
	msgs chan map[string]any
	raw  chan []byte
	errc chan error // the read error that ended the connection
}

func (n *node) dial(t *testing.T, query string) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+n.addr+"/v1/ws"+query, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	conn.SetReadLimit(8 << 20)
	c := &wsClient{t: t, conn: conn, msgs: make(chan map[string]any, 100000), raw: make(chan []byte, 100000), errc: make(chan error, 1)}
	go func() {
		for {
			_, data, err := conn.Read(context.Background())
			if err != nil {
				c.errc <- err
				close(c.msgs)
				return
			}
			var m map[string]any
			d := json.NewDecoder(strings.NewReader(string(data)))
			d.UseNumber()
			if err := d.Decode(&m); err != nil {
				t.Errorf("server sent invalid JSON %q: %v", data, err)
			}
			c.raw <- data
			c.msgs <- m
		}
	}()
	t.Cleanup(func() { _ = conn.CloseNow() })
	return c
}

func (c *wsClient) send(v any) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := json.Marshal(v)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// next returns the next message, failing after d.
func (c *wsClient) next(d time.Duration) map[string]any {
	c.t.Helper()
	select {
	case m, ok := <-c.msgs:
		if !ok {
			c.t.Fatalf("connection closed: %v", <-c.errc)
		}
		<-c.raw
		return m
	case <-time.After(d):
		c.t.Fatalf("no message within %v", d)
	}
	return nil
}

// nextRaw returns the next message's bytes.
func (c *wsClient) nextRaw(d time.Duration) []byte {
	c.t.Helper()
	select {
	case m, ok := <-c.msgs:
		if !ok {
			c.t.Fatalf("connection closed: %v", <-c.errc)
		}
		_ = m
		return <-c.raw
	case <-time.After(d):
		c.t.Fatalf("no message within %v", d)
	}
	return nil
}

// subscribe sends a subscribe and waits for "subscribed", returning its
// cursor. Changes of other subscriptions that arrive first fail the test.
func (c *wsClient) subscribe(msg map[string]any) string {
	c.t.Helper()
	msg["type"] = "subscribe"
	c.send(msg)
	m := c.next(10 * time.Second)
	if m["type"] != "subscribed" || m["id"] != msg["id"] {
		c.t.Fatalf("subscribe %v: got %v", msg, m)
	}
	return m["cursor"].(string)
}

// changes reads n change messages.
func (c *wsClient) changes(n int, d time.Duration) []map[string]any {
	c.t.Helper()
	out := make([]map[string]any, 0, n)
	deadline := time.After(d)
	for len(out) < n {
		select {
		case m, ok := <-c.msgs:
			if !ok {
				c.t.Fatalf("connection closed after %d of %d changes: %v", len(out), n, <-c.errc)
			}
			<-c.raw
			if m["type"] != "change" {
				c.t.Fatalf("after %d changes, got %v", len(out), m)
			}
			out = append(out, m)
		case <-deadline:
			c.t.Fatalf("got %d of %d changes within %v", len(out), n, d)
		}
	}
	return out
}

// quiet checks no message is waiting after a marker change: it writes a
// marker row and expects it to be the next message for sub.
func (c *wsClient) expectNext(sub string, op string, id int) map[string]any {
	c.t.Helper()
	m := c.next(10 * time.Second)
	if m["type"] != "change" || m["sub"] != sub || m["op"] != op || keyID(m) != id {
		c.t.Fatalf("want %s change of row %d for %s, got %v", op, id, sub, m)
	}
	return m
}

// keyID is the "id" of a change's key, or -1.
func keyID(m map[string]any) int {
	k, ok := m["key"].(map[string]any)
	if !ok {
		return -1
	}
	n, ok := k["id"].(json.Number)
	if !ok {
		return -1
	}
	i, _ := n.Int64()
	return int(i)
}

// sseStream reads Server-Sent Events.
type sseEvent struct {
	id, event, data string
}

type sseStream struct {
	t      *testing.T
	resp   *http.Response
	events chan sseEvent
	cancel context.CancelFunc
}

func (n *node) sse(t *testing.T, path string, header http.Header) (*sseStream, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+n.addr+path, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		cancel()
		return nil, resp
	}
	s := &sseStream{t: t, resp: resp, events: make(chan sseEvent, 100000), cancel: cancel}
	go func() {
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 8<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.event != "" || ev.data != "" {
					s.events <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, ":"):
			case strings.HasPrefix(line, "id: "):
				ev.id = line[4:]
			case strings.HasPrefix(line, "event: "):
				ev.event = line[7:]
			case strings.HasPrefix(line, "data: "):
				ev.data = line[6:]
			}
		}
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return s, resp
}

func (s *sseStream) next(d time.Duration) sseEvent {
	s.t.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			s.t.Fatal("SSE stream ended")
		}
		return ev
	case <-time.After(d):
		s.t.Fatalf("no SSE event within %v", d)
	}
	return sseEvent{}
}

// poll makes one long-poll request.
func (n *node) poll(t *testing.T, path string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get("http://" + n.addr + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	d := json.NewDecoder(resp.Body)
	d.UseNumber()
	if err := d.Decode(&body); err != nil {
		t.Fatalf("poll %s: %v", path, err)
	}
	return resp.StatusCode, body
}

// srvPosition is where the node's stream is.
func (n *node) srvPosition() (listener.Cursor, bool) { return n.srv.Position() }
