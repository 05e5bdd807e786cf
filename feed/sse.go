package feed

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/subscriptions"
)

// reserved query parameters: everything else is a filter condition (wait
// only for long polling, where it is a parameter of its own).
var (
	reservedSSE  = []string{"events", "select", "since", "access_token"}
	reservedPoll = []string{"events", "select", "since", "access_token", "wait"}
)

// httpRequest reads a subscription from an SSE or long-poll URL.
func httpRequest(r *http.Request, reserved []string) (request, *apiError) {
	q := r.URL.Query()
	filter, err := subscriptions.FilterFromQuery(q, reserved)
	if err != nil {
		return request{}, errorf("bad_request", "%s", err.Error())
	}
	req := request{table: r.PathValue("table"), filter: filter, sel: q.Get("select"), since: q.Get("since")}
	if ev := q.Get("events"); ev != "" {
		req.events = splitComma(ev)
	}
	return req, nil
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

// prepareHTTP reads, authorizes and checks the subscription of an SSE or
// long-poll request; on failure it has answered with the error.
func (s *Server) prepareHTTP(w http.ResponseWriter, r *http.Request, adjust func(*request)) (*prepared, identity, bool) {
	id, aerr := s.identify(r)
	if aerr != nil {
		writeError(w, aerr)
		return nil, id, false
	}
	reserved := reservedSSE
	if strings.HasPrefix(r.URL.Path, "/v1/changes/") {
		reserved = reservedPoll
	}
	req, aerr := httpRequest(r, reserved)
	if aerr != nil {
		writeError(w, aerr)
		return nil, id, false
	}
	if adjust != nil {
		adjust(&req)
	}
	p, aerr := s.prepare(r.Context(), id.Identity, req)
	if aerr != nil {
		writeError(w, aerr)
		return nil, id, false
	}
	return p, id, true
}

// serveSSE streams one subscription as Server-Sent Events.
func (s *Server) serveSSE(w http.ResponseWriter, r *http.Request) {
	p, id, ok := s.prepareHTTP(w, r, func(req *request) {
		if last := r.Header.Get("Last-Event-ID"); last != "" {
			req.since = last // a reconnecting EventSource resumes where it was
		}
	})
	if !ok {
		return
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, errorf("internal", "streaming is not supported by this connection"))
		return
	}
	c := s.newClient(id)
	if aerr := s.track(c); aerr != nil {
		writeError(w, aerr)
		return
	}
	defer s.untrack(c)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache, no-transform")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	flusher.Flush()

	sub := s.hub.newSubscription("sse", c.q, p)
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		defer cancel()
		s.sseWriter(ctx, w, flusher, r, c)
	}()
	err := s.hub.subscribe(ctx, sub, p.since, func(start listener.Cursor) {
		// The id makes a reconnecting EventSource resume from here even
		// before the first change.
		c.q.push(item{body: []byte(": subscribed\nid: " + start.String() + "\n\n")})
	})
	switch {
	case err == nil, ctx.Err() != nil, errors.Is(err, errQueueClosed):
	case errors.Is(err, errNotReady):
		c.q.push(item{body: []byte("event: error\ndata: {\"error\":\"unavailable\"}\n\n")})
		c.q.close("unavailable")
	default:
		// End the stream: the client reconnects with Last-Event-ID, the
		// last change it got, with no gap.
		s.cfg.Logger.Error("subscribe", "table", p.table.Name, "err", err)
		c.q.close("internal")
	}
	<-writerDone
	s.hub.unsubscribe(sub)
}

// sseWriter writes queued events as SSE, with a heartbeat comment, each
// write under a deadline.
func (s *Server) sseWriter(ctx context.Context, w http.ResponseWriter, flusher http.Flusher, r *http.Request, c *client) {
	rc := http.NewResponseController(w)
	beat := time.NewTicker(s.cfg.Heartbeat)
	defer beat.Stop()
	_, expires := c.identity()
	expired, stopExpiry := expiryTimer(expires)
	defer stopExpiry()
	var buf []item
	write := func(parts ...[]byte) bool {
		_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		for _, p := range parts {
			if _, err := w.Write(p); err != nil {
				return false
			}
		}
		return true
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			if !write([]byte(": ping\n\n")) {
				return
			}
			flusher.Flush()
			continue
		case <-expired:
			// The stream ends with the token; the client reconnects with
			// a fresh one and Last-Event-ID.
			write([]byte("event: error\ndata: {\"error\":\"token_expired\"}\n\n"))
			flusher.Flush()
			return
		case <-c.q.ready:
		}
		var reason string
		buf, reason = c.q.take(buf)
		for _, it := range buf {
			ok := true
			if it.reset {
				ok = write([]byte("id: "), []byte(it.cursor.String()), []byte("\nevent: reset\ndata: {\"reason\":\"cursor_expired\"}\n\n"))
			} else if it.change {
				ok = write([]byte("id: "), []byte(it.cursor.String()), []byte("\nevent: change\ndata: "), it.body, []byte("\n\n"))
			} else {
				ok = write(it.body)
			}
			if !ok {
				return
			}
		}
		clear(buf)
		flusher.Flush()
		switch reason {
		case "":
		case "slow_consumer":
			s.slow.Add(1)
			write([]byte("event: error\ndata: {\"error\":\"slow_consumer\"}\n\n"))
			flusher.Flush()
			return
		default:
			return
		}
	}
}
