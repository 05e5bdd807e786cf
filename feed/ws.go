package feed

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
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

// serveWS runs one WebSocket connection. The handler's goroutine reads and
// answers the client; one writer goroutine, which it waits for, drains the
// connection's queue.
func (s *Server) serveWS(w http.ResponseWriter, r *http.Request) {
	id, aerr := s.identify(r)
	if aerr != nil {
		writeError(w, aerr)
		return
	}
	opts := &websocket.AcceptOptions{OriginPatterns: s.origins}
	if len(s.origins) == 1 && s.origins[0] == "*" {
		opts = &websocket.AcceptOptions{InsecureSkipVerify: true}
	}
	c := s.newClient(id)
	if aerr := s.track(c); aerr != nil {
		writeError(w, aerr)
		return
	}
	defer s.untrack(c)
	conn, err := websocket.Accept(w, r, opts)
	if err != nil {
		return // Accept has answered the client
	}
	conn.SetReadLimit(-1) // enforced below, to answer too_large first

	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		defer cancel() // the writer ending (slow client, shutdown) ends the reader
		s.wsWriter(ctx, conn, c)
	}()
	// The reader and the replays it starts get their own context, ended
	// with the reader; the writer goes on to send what is queued (an error,
	// a close reason) until the queue closes.
	rctx, rcancel := context.WithCancel(ctx)
	s.wsReader(rctx, conn, c)
	rcancel()
	c.replays.Wait()
	s.endAll(c)
	c.q.close("closed")
	<-writerDone
	_ = conn.CloseNow()
}

// wsReader reads client messages until the connection ends.
func (s *Server) wsReader(ctx context.Context, conn *websocket.Conn, c *client) {
	limit := int64(s.cfg.MaxMessageBytes)
	// A token bucket for subscribe messages: SubscribeRate a second, bursts
	// of twice that.
	burst := float64(2 * s.cfg.SubscribeRate)
	tokens, last := burst, time.Now()
	for {
		typ, rd, err := conn.Reader(ctx)
		if err != nil {
			return
		}
		data, err := io.ReadAll(io.LimitReader(rd, limit+1))
		if err != nil {
			return
		}
		if int64(len(data)) > limit {
			s.wsSend(c, map[string]any{"type": "error", "id": nil, "code": "too_large",
				"message": "message larger than " + strconv.FormatInt(limit, 10) + " bytes"})
			c.q.close("too_large")
			return
		}
		if typ != websocket.MessageText {
			s.wsError(c, nil, errorf("bad_request", "messages must be JSON text frames"))
			continue
		}
		var m wsMessage
		if err := json.Unmarshal(data, &m); err != nil {
			s.wsError(c, nil, errorf("bad_request", "message is not valid JSON: %s", err.Error()))
			continue
		}
		switch m.Type {
		case "subscribe":
			now := time.Now()
			tokens = min(burst, tokens+now.Sub(last).Seconds()*float64(s.cfg.SubscribeRate))
			last = now
			if tokens < 1 {
				s.wsError(c, m.ID, errorf("rate_limited", "more than %d subscribe messages a second", s.cfg.SubscribeRate))
				continue
			}
			tokens--
			s.wsSubscribe(ctx, c, m)
		case "unsubscribe":
			s.wsUnsubscribe(c, m)
		case "ping":
			s.wsSend(c, map[string]any{"type": "pong"})
		case "auth":
			s.wsAuth(ctx, c, m.Token)
		case "":
			s.wsError(c, m.ID, errorf("bad_request", "message has no type"))
		default:
			s.wsError(c, m.ID, errorf("bad_request", "unknown message type %q", m.Type))
		}
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
func (s *Server) wsAuth(ctx context.Context, c *client, raw string) {
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
	select {
	case c.reauth <- struct{}{}:
	default:
	}
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

// wsWriter drains the queue onto the socket, every write under a deadline,
// and pings the client; it closes the socket when the queue closes.
func (s *Server) wsWriter(ctx context.Context, conn *websocket.Conn, c *client) {
	ping := time.NewTicker(s.cfg.Heartbeat)
	defer ping.Stop()
	_, expires := c.identity()
	expired, stopExpiry := expiryTimer(expires)
	defer func() { stopExpiry() }()
	var buf []item
	var frame []byte
	// Every write runs under a deadline: a watchdog, re-armed per message,
	// closes the connection when one takes longer than WriteTimeout. (A
	// context with a deadline per message costs coder/websocket a
	// context.AfterFunc per frame: a tenth of the writer's CPU.)
	watchdog := time.AfterFunc(time.Hour, func() { _ = conn.CloseNow() })
	watchdog.Stop()
	defer watchdog.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.reauth:
			stopExpiry()
			_, expires = c.identity()
			expired, stopExpiry = expiryTimer(expires)
			continue
		case <-expired:
			_ = conn.Close(websocket.StatusPolicyViolation, "token_expired")
			return
		case <-ping.C:
			pctx, cancel := context.WithTimeout(ctx, s.cfg.WriteTimeout)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return
			}
			continue
		case <-c.q.ready:
		}
		var reason string
		buf, reason = c.q.take(buf)
		for _, it := range buf {
			watchdog.Reset(s.cfg.WriteTimeout)
			if err := s.wsWrite(conn, it, &frame); err != nil {
				return
			}
		}
		watchdog.Stop()
		clear(buf)
		switch reason {
		case "":
		case "slow_consumer":
			s.slow.Add(1)
			s.cfg.Logger.Info("closing slow WebSocket client")
			_ = conn.Close(websocket.StatusTryAgainLater, "slow_consumer")
			return
		case "too_large":
			_ = conn.Close(websocket.StatusMessageTooBig, "too_large")
			return
		case "going_away":
			_ = conn.Close(websocket.StatusGoingAway, "server shutting down")
			return
		default:
			return
		}
	}
}

var changePrefix = []byte(`{"type":"change","sub":`)

// wsWrite writes one queued item as one frame. A change is framed as
// {"type":"change","sub":"s1", + the shared event without its "{", copied
// into buf (the writer's own, reused): one frame, so one flush and one
// write system call per message (a streamed message costs a frame, and a
// flush, per piece).
// The caller's watchdog bounds the write.
func (s *Server) wsWrite(conn *websocket.Conn, it item, buf *[]byte) error {
	b := (*buf)[:0]
	switch {
	case it.reset:
		b = append(append(append(b, `{"type":"reset","sub":`...), it.sub...), `,"reason":"cursor_expired"}`...)
	case it.change:
		b = append(append(append(append(b, changePrefix...), it.sub...), ','), it.body[1:]...)
	default:
		b = append(b, it.body...)
	}
	*buf = b
	if cap(b) > 64<<10 {
		*buf = nil // do not keep one huge message's buffer per connection
	}
	return conn.Write(context.Background(), websocket.MessageText, b)
}
