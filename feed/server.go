package feed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgfeed/pgfeed/internal/token"
	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/subscriptions"
)

// Catalog describes captured tables (triggers.Catalog is one). A table
// that is not captured (or does not exist) gives an error wrapping
// subscriptions.ErrUnknownTable.
type Catalog interface {
	Table(ctx context.Context, name string) (*subscriptions.Table, error)
}

// Config configures a Server. Zero values mean the documented defaults.
type Config struct {
	// Listen is the TCP address to serve on (host:port).
	Listen string
	// AllowedOrigins are the browser origins (scheme://host[:port], or "*")
	// allowed to open WebSockets and make CORS requests. Empty: same origin
	// only.
	AllowedOrigins []string
	// Anonymous lets clients without a token in, with role "anon".
	Anonymous bool
	// Verifier checks tokens. Nil: a request with a token is refused.
	Verifier Verifier
	// RLS checks rows for policies with rls: true. Nil: such policies
	// are refused at subscribe time.
	RLS RLSChecker
	// Policies decide what each role may read. Nil: nothing is served.
	Policies *subscriptions.Policies
	// Catalog describes the captured tables. Required.
	Catalog Catalog
	// Store reads older changes back for resumes. Nil: resume only from
	// memory (the logical source); older cursors get a reset.
	Store Store
	// Newest, used when Store is nil, returns the newest position any node
	// may have handed out, so that a cursor beyond this node's position
	// (given by another node, or by this one before a restart, that this
	// node has not reached yet) is waited for rather than reset. Nil: such
	// cursors get a reset.
	Newest func(ctx context.Context) (listener.Cursor, error)
	// Metrics, when set, writes more Prometheus metrics at the end of
	// /metrics (the logical source's slot gauges).
	Metrics func(w io.Writer)
	// Ready reports whether the database is reachable and capture runs, for
	// /readyz. Nil: always ready once the stream has started.
	Ready func(ctx context.Context) error
	// Logger receives the server's logs. Nil: discard.
	Logger *slog.Logger

	// History is how many recent changes are kept in memory for instant
	// replay, and HistoryBytes about how much memory they may take; older
	// ones are replayed from the Store. Zero: 100,000 changes, 128 MiB.
	History      int
	HistoryBytes int
	// QueueMessages and QueueBytes bound each connection's outgoing queue;
	// a client that lets it fill up is disconnected as a slow consumer. A
	// transaction's matching changes are queued at once, so the bounds must
	// hold the largest transaction a client is expected to take live (a
	// client cut off by a larger one resumes with its cursor: replays are
	// paced by the client). Zero: 65,536 messages and 32 MiB.
	QueueMessages int
	QueueBytes    int
	// MaxMessageBytes is the largest WebSocket message a client may send.
	// Zero: 64 KiB.
	MaxMessageBytes int
	// MaxSubscriptions per connection. Zero: 100.
	MaxSubscriptions int
	// SubscribeRate is how many subscribe messages per second a WebSocket
	// connection may send (with bursts of twice as many). Zero: 20.
	SubscribeRate int
	// MaxConnections is how many streaming connections (WebSocket, SSE,
	// long polls) this node holds at once. Zero: 10,000.
	MaxConnections int
	// WriteTimeout bounds every network write. Zero: 10 s.
	WriteTimeout time.Duration
	// Heartbeat is the SSE comment and WebSocket ping interval. Zero: 15 s.
	Heartbeat time.Duration
	// PongWait is how long a WebSocket ping may go unanswered before the
	// client counts as gone and is disconnected; it is checked when a ping
	// is due. Zero: Heartbeat, and at least 5 s, so that a loaded server,
	// late to read its own sockets, does not drop clients that answered.
	PongWait time.Duration
	// WriterLinger is how long the writer goroutine of a busy WebSocket
	// (one that had messages to send less than WriterLinger before) waits
	// for more before it ends. Zero: 2 s.
	WriterLinger time.Duration
}

func (c *Config) defaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.History == 0 {
		c.History = 100_000
	}
	if c.HistoryBytes == 0 {
		c.HistoryBytes = 128 << 20
	}
	if c.QueueMessages == 0 {
		c.QueueMessages = 65536
	}
	if c.QueueBytes == 0 {
		c.QueueBytes = 32 << 20
	}
	if c.MaxMessageBytes == 0 {
		c.MaxMessageBytes = 64 << 10
	}
	if c.MaxSubscriptions == 0 {
		c.MaxSubscriptions = 100
	}
	if c.SubscribeRate == 0 {
		c.SubscribeRate = 20
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = 10_000
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = 15 * time.Second
	}
	if c.PongWait == 0 {
		c.PongWait = max(c.Heartbeat, 5*time.Second)
	}
	if c.WriterLinger == 0 {
		c.WriterLinger = 2 * time.Second
	}
}

// Server serves the change feed over WebSocket, SSE and long polling.
type Server struct {
	cfg     Config
	hub     *hub
	mux     *http.ServeMux
	origins []string // host patterns for the WebSocket origin check

	closing   chan struct{} // closed when shutdown begins
	poller    *poller       // set by Serve before it serves: idle WebSockets sleep in it; nil without (Handler alone, or no epoll)
	closeOnce sync.Once
	stopRLS   context.CancelFunc // ends the RLS checks at shutdown

	mu    sync.Mutex
	conns map[*client]struct{} // guarded by mu: open streaming connections
	wg    sync.WaitGroup       // streaming handlers and their writers

	slow    atomic.Int64 // connections closed as slow consumers
	asleep  atomic.Int64 // WebSocket connections with no reader goroutine (in the poller)
	writers atomic.Int64 // WebSocket writer goroutines running
}

// New returns a Server. Feed it the change stream with Emit (the listener's
// emit function) and Start, and serve it with Run or Handler.
func New(cfg Config) (*Server, error) {
	cfg.defaults()
	if cfg.Catalog == nil {
		return nil, errors.New("feed: Config.Catalog is required")
	}
	s := &Server{
		cfg:     cfg,
		hub:     newHub(cfg.Logger, cfg.Store, cfg.History, cfg.HistoryBytes, cfg.QueueMessages),
		mux:     http.NewServeMux(),
		closing: make(chan struct{}),
		conns:   make(map[*client]struct{}),
	}
	s.hub.newest = cfg.Newest
	if cfg.RLS != nil {
		ctx, cancel := context.WithCancel(context.Background())
		s.hub.rls = &rlsGroups{checker: cfg.RLS, log: cfg.Logger, maxJobs: cfg.QueueMessages, ctx: ctx, groups: map[string]*rlsGroup{}}
		s.stopRLS = cancel
	}
	for _, o := range cfg.AllowedOrigins {
		if o == "*" {
			s.origins = []string{"*"}
			break
		}
		u, err := url.Parse(o)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("feed: allowed origin %q is not scheme://host[:port]", o)
		}
		s.origins = append(s.origins, u.Host)
	}
	s.mux.HandleFunc("GET /v1/ws", s.serveWS)
	s.mux.HandleFunc("GET /v1/sse/{table}", s.serveSSE)
	s.mux.HandleFunc("GET /v1/changes/{table}", s.servePoll)
	s.mux.HandleFunc("OPTIONS /v1/", s.servePreflight)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", s.serveReady)
	s.mux.HandleFunc("GET /metrics", s.serveMetrics)
	// Everything else: the contract's JSON error body, not net/http's text
	// (nor its 405 for a GET under /v1/, which the OPTIONS pattern causes).
	s.mux.HandleFunc("/", serveNoRoute)
	return s, nil
}

// serveNoRoute answers a request no endpoint takes.
func serveNoRoute(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead && r.Method != http.MethodOptions {
		w.Header().Set("Allow", "GET, OPTIONS")
		writeErrorStatus(w, http.StatusMethodNotAllowed, errorf("bad_request", "%s is not allowed: every endpoint answers GET", r.Method))
		return
	}
	writeError(w, errorf("not_found", "no endpoint at %s: see /v1/ws, /v1/sse/{schema.table}, /v1/changes/{schema.table}, /healthz, /readyz, /metrics", r.URL.Path))
}

// Emit hands one batch of the ordered stream to the fan-out. It is the
// listener's emit function, called from one goroutine, one batch at a time;
// it never blocks on a client.
func (s *Server) Emit(b listener.Batch) error { return s.hub.dispatch(b) }

// Start tells the server where the stream starts (the listener's position
// once ready). Subscriptions are refused until Start or the first Emit.
func (s *Server) Start(pos listener.Cursor) { s.hub.start(pos) }

// Position is the position after the last batch handed to Emit, and
// whether the stream has started.
func (s *Server) Position() (listener.Cursor, bool) { return s.hub.position() }

// HistoryStart is the oldest position this server can resume clients from
// without a Store: the start of its in-memory history. The logical source
// confirms its slot no further (listener.LogicalConfig.Keep), so that a
// restarted node can resume the same cursors. Zero before the stream
// starts.
func (s *Server) HistoryStart() listener.Cursor {
	c, _ := s.hub.historyStart()
	return c
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return s.cors(s.mux) }

// Run serves on cfg.Listen until ctx is cancelled, then closes every
// streaming connection with a going-away notice and returns.
func (s *Server) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.cfg.Listen, err)
	}
	return s.Serve(ctx, l)
}

// Serve is Run on an existing listener.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelWarn),
	}
	if p, err := newPoller(s.cfg.Logger); err == nil {
		s.poller = p
		go p.run()
		// After every connection has ended (s.wg): none sleeps in it.
		defer p.stop()
	} else {
		s.cfg.Logger.Debug("idle WebSocket connections keep their reader goroutine", "err", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(l) }()
	var serveErr error
	select {
	case serveErr = <-errc:
	case <-ctx.Done():
	}
	s.shutdown()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := hs.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		err = hs.Close()
	}
	s.wg.Wait()
	s.hub.flusher.wait()
	if s.hub.rls != nil {
		s.stopRLS()
		s.hub.rls.wg.Wait()
	}
	if serveErr != nil {
		return fmt.Errorf("serve: %w", serveErr)
	}
	if err != nil {
		return fmt.Errorf("shut down: %w", err)
	}
	return nil
}

// shutdown tells every streaming connection to go away. Idempotent.
func (s *Server) shutdown() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.mu.Lock()
		conns := make([]*client, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			c.q.close("going_away")
		}
	})
}

// track registers a streaming connection; it refuses when the server is
// shutting down or holds MaxConnections already.
func (s *Server) track(c *client) *apiError {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.closing:
		return errorf("unavailable", "the server is shutting down")
	default:
	}
	if len(s.conns) >= s.cfg.MaxConnections {
		return errorf("rate_limited", "this node holds its maximum of %d connections; retry later or on another node", s.cfg.MaxConnections)
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return nil
}

func (s *Server) untrack(c *client) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// client is one streaming connection's state, whatever the transport.
type client struct {
	q *queue

	mu      sync.Mutex
	id      subscriptions.Identity   // guarded by mu
	expires time.Time                // guarded by mu: when the token expires; zero: never
	subs    map[string]*subscription // guarded by mu

	replays sync.WaitGroup // WebSocket replays running beside the reader
}

func (s *Server) newClient(id identity) *client {
	return &client{
		q:  newQueue(s.cfg.QueueMessages, s.cfg.QueueBytes),
		id: id.Identity, expires: id.expires,
		subs: make(map[string]*subscription),
	}
}

// identity returns the client's identity and token expiry.
func (c *client) identity() (subscriptions.Identity, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.id, c.expires
}

// expiryTimer returns a channel that fires when the client's token
// expires (nil when it never does).
func expiryTimer(expires time.Time) (<-chan time.Time, func()) {
	if expires.IsZero() {
		return nil, func() {}
	}
	t := time.NewTimer(time.Until(expires))
	return t.C, func() { t.Stop() }
}

// endAll unsubscribes everything of the client.
func (s *Server) endAll(c *client) {
	c.mu.Lock()
	subs := c.subs
	c.subs = map[string]*subscription{}
	c.mu.Unlock()
	for _, sub := range subs {
		s.hub.unsubscribe(sub)
	}
}

// apiError is an error a client is told about, with the contract's code.
type apiError struct {
	code    string // bad_request, unauthorized, forbidden, not_found, ...
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func (e *apiError) status() int {
	switch e.code {
	case "bad_request", "too_large":
		return http.StatusBadRequest
	case "unauthorized":
		return http.StatusUnauthorized
	case "forbidden":
		return http.StatusForbidden
	case "not_found":
		return http.StatusNotFound
	case "rate_limited":
		return http.StatusTooManyRequests
	case "cursor_expired":
		return http.StatusConflict
	case "unavailable":
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

func errorf(code, format string, args ...any) *apiError {
	return &apiError{code: code, message: fmt.Sprintf(format, args...)}
}

// Verifier checks a client's token (token.Verifier is one). Its errors
// are shown to the client and must not contain the token.
type Verifier interface {
	Verify(ctx context.Context, raw string) (token.Claims, error)
}

// identity is who a client is, and until when.
type identity struct {
	subscriptions.Identity
	expires time.Time // zero: never
}

// identify returns who is asking: the verified token of the Authorization
// header or the access_token parameter, or "anon" without one when
// anonymous access is on.
func (s *Server) identify(r *http.Request) (identity, *apiError) {
	raw := ""
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, rest, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(rest) == "" {
			return identity{}, errorf("unauthorized", "the Authorization header must be \"Bearer <token>\"")
		}
		raw = strings.TrimSpace(rest)
	}
	if raw == "" {
		raw = r.URL.Query().Get("access_token")
	}
	if raw == "" {
		if !s.cfg.Anonymous {
			return identity{}, errorf("unauthorized", "a token is required (anonymous access is off)")
		}
		return identity{Identity: subscriptions.Identity{Role: "anon"}}, nil
	}
	return s.verify(r.Context(), raw)
}

// verify checks a token.
func (s *Server) verify(ctx context.Context, raw string) (identity, *apiError) {
	if s.cfg.Verifier == nil {
		return identity{}, errorf("unauthorized", "this server accepts no tokens (no auth.jwt key is configured)")
	}
	c, err := s.cfg.Verifier.Verify(ctx, raw)
	if err != nil {
		return identity{}, errorf("unauthorized", "%s", err.Error())
	}
	return identity{Identity: subscriptions.Identity{Role: c.Role, Claims: c.All}, expires: c.Expires}, nil
}

// request is a subscription as a client asks for it, on any transport.
type request struct {
	table  string
	filter subscriptions.Filter
	events []string
	sel    string
	since  string
}

// prepared is a request checked against the catalog and the policies.
type prepared struct {
	table *subscriptions.Table
	sub   *subscriptions.Sub
	cols  []string // projection; nil = every column
	since *listener.Cursor
	id    subscriptions.Identity
	rls   bool // row-level security decides, per change
}

// qualify reads "orders" as "public.orders".
func qualify(table string) string {
	if strings.Contains(table, ".") {
		return table
	}
	return "public." + table
}

func (s *Server) prepare(ctx context.Context, id subscriptions.Identity, req request) (*prepared, *apiError) {
	if req.table == "" {
		return nil, errorf("bad_request", "table is required")
	}
	name := qualify(req.table)
	t, err := s.cfg.Catalog.Table(ctx, name)
	if errors.Is(err, subscriptions.ErrUnknownTable) {
		return nil, errorf("not_found", "table %s is not captured by pgfeed", name)
	}
	if err != nil {
		s.cfg.Logger.Error("describe table", "table", name, "err", err)
		return nil, errorf("internal", "could not read table %s", name)
	}
	if s.cfg.Policies == nil {
		return nil, errorf("forbidden", "no policy allows role %q to read %s", id.Role, t.Name)
	}
	grant, err := s.cfg.Policies.Authorize(id, t.Name)
	if err != nil {
		return nil, errorf("forbidden", "%s", err.Error())
	}
	// A filter or select on a column the policy withholds is refused
	// first, whether or not the column exists, so that errors reveal
	// nothing about hidden columns.
	if grant.Columns != nil {
		var named []string
		for _, c := range strings.Split(req.sel, ",") {
			if c = strings.TrimSpace(c); c != "" && c != "*" {
				named = append(named, c)
			}
		}
		if _, _, err := grant.Apply(req.filter, named); err != nil {
			return nil, errorf("forbidden", "%s", err.Error())
		}
	}
	if err := req.filter.Check(t); err != nil {
		return nil, errorf("bad_request", "%s", err.Error())
	}
	events, err := subscriptions.ParseEvents(req.events)
	if err != nil {
		return nil, errorf("bad_request", "%s", err.Error())
	}
	sel, err := subscriptions.ParseSelect(req.sel, t)
	if err != nil {
		return nil, errorf("bad_request", "%s", err.Error())
	}
	// The grant's filter is ANDed in, its columns cut the projection.
	filter, cols, err := grant.Apply(req.filter, sel)
	if err != nil {
		return nil, errorf("forbidden", "%s", err.Error())
	}
	if grant.RLS && s.cfg.RLS == nil {
		return nil, errorf("internal", "the policy for %s uses row-level security, which is not set up on this server", t.Name)
	}
	p := &prepared{
		table: t,
		sub:   &subscriptions.Sub{Table: t.Name, Filter: filter, Events: events},
		cols:  cols,
		id:    id,
		rls:   grant.RLS,
	}
	if req.since != "" {
		// A since that is not a cursor pgfeed gave (corrupted, from another
		// system) is an unknown cursor: the zero Cursor, which no cursor
		// parses to, gets a reset (CONTRACT: "older than retention (or
		// unknown)"), and the client refetches its state. A 400 would stop
		// a browser's EventSource from reconnecting for good.
		c, _ := listener.ParseCursor(req.since)
		p.since = &c
	}
	return p, nil
}

// writeError answers a plain HTTP request with the contract's error body.
func writeError(w http.ResponseWriter, e *apiError) { writeErrorStatus(w, e.status(), e) }

// writeErrorStatus is writeError with another status than the code's.
func writeErrorStatus(w http.ResponseWriter, status int, e *apiError) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": e.code, "message": e.message})
}

// cors answers browsers from allowed origins.
func (s *Server) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if origin := r.Header.Get("Origin"); origin != "" && s.originAllowed(origin) {
			w.Header().Set("Access-Control-Allow-Origin", origin)
			w.Header().Set("Vary", "Origin")
			w.Header().Set("Access-Control-Allow-Headers", "Authorization, Last-Event-ID")
			w.Header().Set("Access-Control-Allow-Methods", "GET, OPTIONS")
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) originAllowed(origin string) bool {
	for _, o := range s.cfg.AllowedOrigins {
		if o == "*" || strings.EqualFold(o, origin) {
			return true
		}
	}
	return false
}

func (s *Server) servePreflight(w http.ResponseWriter, _ *http.Request) {
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	if _, started := s.hub.position(); !started {
		writeError(w, errorf("unavailable", "the change stream has not started"))
		return
	}
	if s.cfg.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := s.cfg.Ready(ctx); err != nil {
			// The details (hosts, users) are for the log, not the world.
			s.cfg.Logger.Warn("not ready", "err", err)
			writeError(w, errorf("unavailable", "the database is unreachable or capture is not running"))
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ready\n"))
}

func (s *Server) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	conns := len(s.conns)
	s.mu.Unlock()
	pos, _ := s.hub.position()
	w.Header().Set("Content-Type", "text/plain; version=0.0.4")
	fmt.Fprintf(w, "# HELP pgfeed_connections Open streaming connections.\n# TYPE pgfeed_connections gauge\npgfeed_connections %d\n", conns)
	fmt.Fprintf(w, "# HELP pgfeed_subscriptions Live subscriptions.\n# TYPE pgfeed_subscriptions gauge\npgfeed_subscriptions %d\n", s.hub.index.Len())
	fmt.Fprintf(w, "# HELP pgfeed_deliveries_total Changes handed to connection queues.\n# TYPE pgfeed_deliveries_total counter\npgfeed_deliveries_total %d\n", s.hub.delivered.Load())
	fmt.Fprintf(w, "# HELP pgfeed_websockets_asleep WebSocket connections waiting for input with no goroutine.\n# TYPE pgfeed_websockets_asleep gauge\npgfeed_websockets_asleep %d\n", s.asleep.Load())
	fmt.Fprintf(w, "# HELP pgfeed_websocket_writers WebSocket writer goroutines running.\n# TYPE pgfeed_websocket_writers gauge\npgfeed_websocket_writers %d\n", s.writers.Load())
	fmt.Fprintf(w, "# HELP pgfeed_slow_consumers_total Connections closed because they fell behind.\n# TYPE pgfeed_slow_consumers_total counter\npgfeed_slow_consumers_total %d\n", s.slow.Load())
	if r := s.hub.rls; r != nil {
		fmt.Fprintf(w, "# HELP pgfeed_rls_checks_total Changes checked under row-level security, once per group of subscribers sharing table, role and claims (many per query when they pile up).\n# TYPE pgfeed_rls_checks_total counter\npgfeed_rls_checks_total %d\n", r.checks.Load())
		fmt.Fprintf(w, "# HELP pgfeed_rls_errors_total Changes whose row-level security check failed; they were withheld from that group.\n# TYPE pgfeed_rls_errors_total counter\npgfeed_rls_errors_total %d\n", r.errors.Load())
	}
	fmt.Fprintf(w, "# HELP pgfeed_stream_tick The tick the stream has reached (the logical source: a WAL position).\n# TYPE pgfeed_stream_tick gauge\npgfeed_stream_tick %d\n", pos.Tick)
	if s.cfg.Metrics != nil {
		s.cfg.Metrics(w)
	}
	writeRuntimeMetrics(w)
}

// runtimeMetrics are the Go runtime's figures /metrics reports: what a
// connection costs shows in them (runtime/metrics reads them without
// stopping the world).
var runtimeMetrics = []struct{ name, help, key string }{
	{"go_goroutines", "Goroutines that exist.", "/sched/goroutines:goroutines"},
	{"go_heap_objects_bytes", "Bytes of heap objects, live or not yet swept.", "/memory/classes/heap/objects:bytes"},
	{"go_stack_bytes", "Bytes of goroutine stacks.", "/memory/classes/heap/stacks:bytes"},
	{"go_total_bytes", "Bytes mapped by the Go runtime.", "/memory/classes/total:bytes"},
	{"go_stack_starting_bytes", "The stack size new goroutines start with.", "/gc/stack/starting-size:bytes"},
}

func writeRuntimeMetrics(w io.Writer) {
	samples := make([]metrics.Sample, len(runtimeMetrics))
	for i, m := range runtimeMetrics {
		samples[i].Name = m.key
	}
	metrics.Read(samples)
	for i, m := range runtimeMetrics {
		if samples[i].Value.Kind() != metrics.KindUint64 {
			continue
		}
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s gauge\n%s %d\n", m.name, m.help, m.name, m.name, samples[i].Value.Uint64())
	}
}
