package feed

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/subscriptions"
)

// wsMessage is any message a WebSocket client sends.
type wsMessage struct {
	Type   string          `json:"type"`
	ID     json.RawMessage `json:"id"`
	Table  string          `json:"table"`
	Filter string          `json:"filter"`
	Events []string        `json:"events"`
	Select string          `json:"select"`
	Since  string          `json:"since"`
	Token  string          `json:"token"`
}

// wsOriginAllowed reports whether a browser at origin may open a WebSocket
// to host: no Origin (not a browser), the same host, or an allowed origin.
func (s *Server) wsOriginAllowed(origin, host string) bool {
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	if strings.EqualFold(u.Host, host) {
		return true
	}
	for _, o := range s.origins {
		if o == "*" || strings.EqualFold(o, u.Host) {
			return true
		}
	}
	return false
}

// serveWS upgrades the request and hands the connection to its own
// goroutine (wsConn.read), so that net/http's per-request state is released
// when this handler returns; the Server waits for that goroutine.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	if origin := r.Header.Get("Origin"); !s.wsOriginAllowed(origin, r.Host) {
		// Refused here, in the contract's JSON, rather than in plain text
		// by websocket.Accept (whose check, with the same rules, stays).
		writeError(w, errorf("forbidden", "origin %q may not open WebSockets here: add it to http.allowed_origins", origin))
		return
	}
	id, aerr := s.identify(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	c := s.newClient(id)
	ws := newWSConn(s, c)
	opts := &websocket.AcceptOptions{OriginPatterns: s.origins}
	if len(s.origins) == 1 && s.origins[0] == "*" {
		opts = &websocket.AcceptOptions{InsecureSkipVerify: true}
	}
	// Pongs that come between the frames of a message reach
	// coder/websocket; the others, awaitMessage.
	opts.OnPongReceived = func(context.Context, []byte) { ws.pong() }
	if aerr := s.track(c); aerr != nil {
		writeError(w, aerr)
		return
	}
	cw := &corkingWriter{ResponseWriter: w, timeout: s.cfg.WriteTimeout}
	conn, err := websocket.Accept(cw, r, opts)
	if err != nil || cw.sock == nil {
		if conn != nil {
			_ = conn.CloseNow()
		}
		s.untrack(c)
		return // Accept has answered the client
	}
	conn.SetReadLimit(-1) // enforced by the reader, to answer too_large first
	ws.start(conn, cw.sock, cw.br)
	go ws.read()
}

// wsReader reads client messages until the connection ends, or until it
// falls asleep (reported: the goroutine must end, see wsConn.sleep).
func (s *Server) wsReader(ctx context.Context, ws *wsConn) (asleep bool) {
	conn, c := ws.conn, ws.c
	limit := int64(s.cfg.MaxMessageBytes)
	for first := true; ; first = false {
		if asleep, err := ws.awaitMessage(!first); asleep || err != nil {
			return asleep
		}
		// Not ctx: the connection ends by being closed, and a
		// cancellable context costs every read a context.AfterFunc.
		typ, rd, err := conn.Reader(context.Background())
		if err != nil {
			return false
		}
		data, err := io.ReadAll(io.LimitReader(rd, limit+1))
		if err != nil {
			return false
		}
		if int64(len(data)) > limit {
			s.wsSend(c, map[string]any{"type": "error", "id": nil, "code": "too_large",
				"message": "message larger than " + strconv.FormatInt(limit, 10) + " bytes"})
			c.q.close("too_large")
			return false
		}
		if typ != websocket.MessageText {
			s.wsError(c, nil, errorf("bad_request", "messages must be JSON text frames"))
			continue
		}
		// Handled on a goroutine of its own, waited for: decoding and
		// subscribing run deep call chains (JSON, the catalog's queries),
		// and a stack that grew for them would stay with this long-lived
		// goroutine while the connection idles.
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.wsHandle(ctx, ws, data, &ws.rate)
		}()
		<-done
	}
}

// rateLimit is a token bucket; only the reader's message handling uses it,
// one message at a time.
type rateLimit struct {
	tokens float64
	last   time.Time
}

// wsHandle answers one client message.
func (s *Server) wsHandle(ctx context.Context, ws *wsConn, data []byte, rate *rateLimit) {
	c := ws.c
	var m wsMessage
	if err := json.Unmarshal(data, &m); err != nil {
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &te) && te.Field == "":
			s.wsError(c, nil, errorf("bad_request", "a message must be a JSON object, not %s", te.Value))
		case errors.As(err, &te):
			// Valid JSON with a field of the wrong type: Unmarshal filled
			// the others, so the error names its subscription.
			want := "a string"
			if te.Type.Kind() == reflect.Slice {
				want = "an array of strings"
			}
			s.wsError(c, m.ID, errorf("bad_request", "%q must be %s, not %s", te.Field, want, te.Value))
		default:
			s.wsError(c, nil, errorf("bad_request", "message is not valid JSON: %s", err.Error()))
		}
		return
	}
	switch m.Type {
	case "subscribe":
		now := time.Now()
		rate.tokens = min(float64(2*s.cfg.SubscribeRate), rate.tokens+now.Sub(rate.last).Seconds()*float64(s.cfg.SubscribeRate))
		rate.last = now
		if rate.tokens < 1 {
			s.wsError(c, m.ID, errorf("rate_limited", "more than %d subscribe messages a second", s.cfg.SubscribeRate))
			return
		}
		rate.tokens--
		s.wsSubscribe(ctx, c, m)
	case "unsubscribe":
		s.wsUnsubscribe(c, m)
	case "ping":
		s.wsSend(c, map[string]any{"type": "pong"})
	case "auth":
		s.wsAuth(ctx, ws, m.Token)
	case "":
		s.wsError(c, m.ID, errorf("bad_request", "message has no type"))
	default:
		s.wsError(c, m.ID, errorf("bad_request", "unknown message type %q", m.Type))
	}
}

// subID reads a subscription id: a non-empty JSON string.
func subID(raw json.RawMessage) (string, bool) {
	var id string
	if json.Unmarshal(raw, &id) != nil || id == "" || len(id) > 256 {
		return "", false
	}
	return id, true
}

func (s *Server) wsSubscribe(ctx context.Context, c *client, m wsMessage) {
	id, ok := subID(m.ID)
	if !ok {
		s.wsError(c, m.ID, errorf("bad_request", "subscribe needs an id: a non-empty string"))
		return
	}
	filter, err := subscriptions.ParseFilter(m.Filter)
	if err != nil {
		s.wsError(c, m.ID, errorf("bad_request", "%s", err.Error()))
		return
	}
	req := request{table: m.Table, filter: filter, events: m.Events, sel: m.Select, since: m.Since}
	who, _ := c.identity()
	p, aerr := s.prepare(ctx, who, req)
	if aerr != nil {
		s.wsError(c, m.ID, aerr)
		return
	}
	sub := s.hub.newSubscription(id, c.q, p)
	sub.req = req
	c.mu.Lock()
	if _, dup := c.subs[id]; dup {
		c.mu.Unlock()
		s.hub.unsubscribe(sub)
		s.wsError(c, m.ID, errorf("bad_request", "subscription %q exists already", id))
		return
	}
	if len(c.subs) >= s.cfg.MaxSubscriptions {
		c.mu.Unlock()
		s.hub.unsubscribe(sub)
		s.wsError(c, m.ID, errorf("rate_limited", "at most %d subscriptions per connection", s.cfg.MaxSubscriptions))
		return
	}
	c.subs[id] = sub
	c.mu.Unlock()

	start := func() {
		err := s.hub.subscribe(ctx, sub, p.since, func(start listener.Cursor) {
			s.wsSend(c, map[string]any{"type": "subscribed", "id": id, "cursor": start.String()})
		})
		if err == nil {
			return
		}
		c.mu.Lock()
		if c.subs[id] == sub {
			delete(c.subs, id)
		}
		c.mu.Unlock()
		s.hub.unsubscribe(sub)
		switch {
		case ctx.Err() != nil, errors.Is(err, errQueueClosed):
		case errors.Is(err, errNotReady):
			s.wsError(c, m.ID, errorf("unavailable", "the change stream is not ready yet; retry"))
		default:
			s.cfg.Logger.Error("subscribe", "table", p.table.Name, "err", err)
			s.wsError(c, m.ID, errorf("internal", "the subscription failed; subscribe again from the last cursor received"))
		}
	}
	if p.since == nil {
		start()
		return
	}
	// A replay may take long: it runs beside the reader, which keeps
	// answering pings, unsubscribes and tokens meanwhile.
	c.replays.Add(1)
	go func() {
		defer c.replays.Done()
		start()
	}()
}

// wsAuth replaces the connection's identity with the token's. Each
// subscription is authorized again: those the new claims no longer allow
// end with a forbidden error; the others go on, with the new claims'
// policy filter and columns, without a gap.
func (s *Server) wsAuth(ctx context.Context, ws *wsConn, raw string) {
	c := ws.c
	if raw == "" {
		s.wsError(c, nil, errorf("bad_request", "auth needs a token"))
		return
	}
	id, aerr := s.verify(ctx, raw)
	if aerr != nil {
		s.wsError(c, nil, aerr) // the old identity stays, until it expires
		return
	}
	c.mu.Lock()
	c.id, c.expires = id.Identity, id.expires
	subs := make([]*subscription, 0, len(c.subs))
	for _, sub := range c.subs {
		subs = append(subs, sub)
	}
	c.mu.Unlock()
	ws.armExpiry()
	for _, sub := range subs {
		req := sub.req
		req.since = ""
		p, aerr := s.prepare(ctx, id.Identity, req)
		if aerr != nil {
			c.mu.Lock()
			delete(c.subs, sub.id)
			c.mu.Unlock()
			s.hub.unsubscribe(sub)
			s.wsError(c, json.RawMessage(strconv.Quote(sub.id)), aerr)
			continue
		}
		s.hub.replace(sub, p)
	}
}

func (s *Server) wsUnsubscribe(c *client, m wsMessage) {
	id, ok := subID(m.ID)
	if !ok {
		s.wsError(c, m.ID, errorf("bad_request", "unsubscribe needs the id of a subscription"))
		return
	}
	c.mu.Lock()
	sub, found := c.subs[id]
	delete(c.subs, id)
	c.mu.Unlock()
	if !found {
		s.wsError(c, m.ID, errorf("not_found", "no subscription %q", id))
		return
	}
	s.hub.unsubscribe(sub)
}

// wsSend queues a control message.
func (s *Server) wsSend(c *client, msg map[string]any) {
	b, err := json.Marshal(msg)
	if err != nil {
		return
	}
	c.q.push(item{body: b})
}

func (s *Server) wsError(c *client, id json.RawMessage, e *apiError) {
	var idv any
	if sid, ok := subID(id); ok {
		idv = sid
	}
	s.wsSend(c, map[string]any{"type": "error", "id": idv, "code": e.code, "message": e.message})
}

var changePrefix = []byte(`{"type":"change","sub":`)

// wsWrite writes one queued item to sock as one text frame (appendFrame),
// built in buf (the writer's own, reused). One sock.Write per frame keeps
// frames whole against the control frames others write. The socket's write
// deadline bounds the write.
func (s *Server) wsWrite(sock io.Writer, it item, buf *[]byte) error {
	b := appendFrame((*buf)[:0], it)
	*buf = b
	if cap(b) > 64<<10 {
		*buf = nil // do not keep one huge message's buffer per connection
	}
	_, err := sock.Write(b)
	return err
}

var resetPrefix, resetSuffix = []byte(`{"type":"reset","sub":`), []byte(`,"reason":"cursor_expired"}`)

// appendFrame appends one queued item to dst as one WebSocket text frame,
// framed here rather than by coder/websocket (which would copy the message
// once more, into its buffer, and take its channel-based write lock for
// each): the connection negotiates no extension (compression is off), a
// server's frames are unmasked, and only the connection's writer (or the
// fan-out's flush standing in for it, see wsConn.flush) writes data frames.
// A change is framed as {"type":"change","sub":"s1", + the shared event
// without its "{".
func appendFrame(dst []byte, it item) []byte {
	var n int
	switch {
	case it.reset:
		n = len(resetPrefix) + len(it.sub) + len(resetSuffix)
	case it.change:
		n = len(changePrefix) + len(it.sub) + len(it.body) // "," replaces the body's "{"
	default:
		n = len(it.body)
	}
	switch {
	case n < 126:
		dst = append(dst, 0x81, byte(n)) // FIN, text; the shortest length form
	case n < 1<<16:
		dst = binary.BigEndian.AppendUint16(append(dst, 0x81, 126), uint16(n))
	default:
		dst = binary.BigEndian.AppendUint64(append(dst, 0x81, 127), uint64(n))
	}
	switch {
	case it.reset:
		return append(append(append(dst, resetPrefix...), it.sub...), resetSuffix...)
	case it.change:
		return append(append(append(append(dst, changePrefix...), it.sub...), ','), it.body[1:]...)
	}
	return append(dst, it.body...)
}
