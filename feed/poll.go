package feed

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/pgfeed/pgfeed/listener"
)

// maxPollChanges bounds one long-poll response; the client asks again from
// the returned cursor for more.
const maxPollChanges = 1000

// servePoll answers a long poll: the changes after since (or from now) as
// soon as there is at least one, or none when wait passes.
func (s *Server) servePoll(w http.ResponseWriter, r *http.Request) {
	wait := 30 * time.Second
	if ws := r.URL.Query().Get("wait"); ws != "" {
		d, err := time.ParseDuration(ws)
		if err != nil || d < 0 || d > 5*time.Minute {
			writeError(w, errorf("bad_request", "wait: %q is not a duration between 0s and 5m", ws))
			return
		}
		wait = d
	}
	p, id, ok := s.prepareHTTP(w, r, nil)
	if !ok {
		return
	}
	if !id.expires.IsZero() {
		// The answer comes no later than the token's expiry.
		wait = min(wait, max(0, time.Until(id.expires)))
	}
	c := s.newClient(id)
	if aerr := s.track(c); aerr != nil {
		writeError(w, aerr)
		return
	}
	defer s.untrack(c)
	ctx, cancel := context.WithCancel(r.Context())
	sub := s.hub.newSubscription("poll", c.q, p)

	// The subscription (and its replay, which may be longer than one
	// answer) runs beside the wait; it ends when the answer is written.
	type started struct {
		pos     listener.Cursor
		expired bool
	}
	startc := make(chan started, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- s.hub.subscribe(ctx, sub, p.since, func(pos listener.Cursor, expired bool) {
			startc <- started{pos, expired}
		})
	}()
	defer func() {
		cancel()
		<-errc
		s.hub.unsubscribe(sub)
	}()

	var st started
	select {
	case st = <-startc:
	case err := <-errc:
		errc <- err // for the deferred wait
		if err == nil {
			st = <-startc // it started and returned at once (no replay)
			break
		}
		if r.Context().Err() == nil {
			s.cfg.Logger.Error("long poll", "table", p.table.Name, "err", err)
			writeError(w, errorf("internal", "could not read changes"))
		}
		return
	}
	if st.expired {
		writeError(w, errorf("cursor_expired", "the cursor is older than the retained changes (or unknown): refetch the state and poll without since"))
		return
	}

	timer := time.NewTimer(wait)
	defer timer.Stop()
	var changes []item
	for done := false; !done; {
		select {
		case <-c.q.ready:
		case <-timer.C:
			done = true
		case <-r.Context().Done():
			return
		case <-s.closing:
			done = true
		}
		// Let a batch being fanned out finish, so that a transaction's
		// changes are answered together.
		s.hub.mu.Lock()
		s.hub.mu.Unlock() //lint:ignore SA2001 an empty critical section is the point
		var more []item
		var reason string
		more, reason = c.q.take(nil)
		changes = append(changes, more...)
		if reason == "slow_consumer" {
			// More arrived than one answer holds: answer what we have.
			done = true
		}
		if len(changes) > 0 {
			done = true
		}
	}
	cursor := st.pos
	out := make([]json.RawMessage, 0, len(changes))
	for _, it := range changes {
		if !it.change {
			continue
		}
		if len(out) == maxPollChanges {
			break
		}
		out = append(out, it.body)
		cursor = it.cursor
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(struct {
		Changes []json.RawMessage `json:"changes"`
		Cursor  string            `json:"cursor"`
	}{out, cursor.String()})
}
