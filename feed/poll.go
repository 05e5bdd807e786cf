package feed

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/pgfeed/pgfeed/listener"
)

// maxPollChanges bounds one long-poll response; the client asks again from
// the returned cursor for more.
const maxPollChanges = 1000

// replayLimit is how much longer than its wait a long poll may take when
// its replay is slow to produce its first change.
const replayLimit = 30 * time.Second

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
	startc := make(chan listener.Cursor, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- s.hub.subscribe(ctx, sub, p.since, func(pos listener.Cursor) { startc <- pos })
	}()
	subDone := false
	var subErr error
	defer func() {
		cancel()
		if !subDone {
			<-errc
		}
		s.hub.unsubscribe(sub)
	}()

	// The subscription announces where it starts before any replay; an
	// answer always carries a cursor to poll again from.
	var start listener.Cursor
	select {
	case start = <-startc:
	case subErr = <-errc:
		subDone = true
		if subErr == nil {
			start = <-startc
			break
		}
		if errors.Is(subErr, errNotReady) {
			writeError(w, errorf("unavailable", "the change stream is not ready yet; retry"))
		} else if r.Context().Err() == nil {
			s.cfg.Logger.Error("long poll", "table", p.table.Name, "err", subErr)
			writeError(w, errorf("internal", "could not read changes; poll again"))
		}
		return
	case <-r.Context().Done():
		return
	}

	// wait counts from when the subscription is live: a replay, from
	// memory or the store, is answered whatever wait says (wait=0s asks
	// for what is there, not for a race with the replay). replayLimit
	// bounds the whole poll all the same, should the store be slow.
	var waitT *time.Timer
	var waitC <-chan time.Time // nil until armed
	armWait := func() {
		if waitT == nil && subDone && subErr == nil {
			waitT = time.NewTimer(wait)
			waitC = waitT.C
		}
	}
	armWait()
	defer func() {
		if waitT != nil {
			waitT.Stop()
		}
	}()
	limit := time.NewTimer(wait + replayLimit)
	defer limit.Stop()
	var changes []item
	for done := false; !done; {
		select {
		case <-c.q.ready:
		case subErr = <-errc:
			subDone = true
		case <-waitC:
			done = true
		case <-limit.C:
			done = true
		case <-r.Context().Done():
			return
		case <-s.closing:
			done = true
		}
		if subDone && subErr != nil && len(changes) == 0 {
			// Nothing was answered from this subscription: say why.
			s.cfg.Logger.Error("long poll", "table", p.table.Name, "err", subErr)
			writeError(w, errorf("internal", "could not read changes; poll again"))
			return
		}
		// Let a batch being fanned out finish, so that a transaction's
		// changes are answered together.
		s.hub.mu.Lock()
		s.hub.mu.Unlock() //lint:ignore SA2001 an empty critical section is the point
		more, reason := c.q.take(nil)
		for _, it := range more {
			if it.reset {
				if len(changes) == 0 {
					writeError(w, errorf("cursor_expired", "the cursor is older than the retained changes (or unknown): refetch the state and poll without since"))
					return
				}
				done = true // answer what came before; the next poll gets the 409
				break
			}
			if it.change {
				changes = append(changes, it)
			}
		}
		if reason == "slow_consumer" || len(changes) > 0 || subDone && subErr != nil {
			// More than one answer holds, something to answer, or a
			// replay that failed after some changes: answer them.
			done = true
		}
		armWait() // once the replay, if any, has been taken
	}
	cursor := start
	out := make([]json.RawMessage, 0, len(changes))
	for _, it := range changes {
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
