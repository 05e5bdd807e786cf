package feed

import (
	"context"
	"slices"
	"sync"

	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/subscriptions"
)

// subscription is one client subscription: what it matches (sub, in the
// index), how its events are cut (proj) and where they go (q).
type subscription struct {
	id     string
	idJSON []byte // id as a JSON string, for framing its changes
	q      *queue
	hub    *hub
	req    request // as the client asked, to authorize again on a new token

	// after is the position the subscription has reached when it is
	// registered; events at or before it are not delivered. Written before
	// the subscription is added to the index, read by the fan-out after.
	after listener.Cursor

	mu         sync.Mutex
	sub        *subscriptions.Sub // guarded by mu (and swapped under hub.mu)
	proj       projection         // guarded by mu
	group      *rlsGroup          // guarded by mu and hub.mu: nil unless row-level security decides
	holds      int                // guarded by mu: while > 0, live events wait in pending
	replayTill listener.Cursor    // guarded by mu: replayed events are before this
	pending    []*event           // guarded by mu
	stopped    bool               // guarded by mu
}

func newSubscription(h *hub, id string, q *queue, sub *subscriptions.Sub, cols []string) *subscription {
	s := &subscription{id: id, idJSON: appendJSONString(nil, id), q: q, sub: sub, proj: newProjection(cols), hub: h}
	sub.Value = s
	return s
}

func (s *subscription) item(e *event, proj projection) item {
	return item{sub: s.idJSON, body: e.json(proj), change: true, cursor: e.cursor}
}

// deliver is called by the fan-out (or an RLS group) for every matching
// live event. The fan-out passes its batch's flushList (see
// queue.pushFor); an RLS group nil.
func (s *subscription) deliver(e *event, fl *flushList) {
	if !s.after.Less(e.cursor) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	if s.holds > 0 {
		if len(s.pending) >= s.hub.pendingMax {
			s.q.close("slow_consumer")
			s.stopped = true
			s.pending = nil
			return
		}
		s.pending = append(s.pending, e)
		return
	}
	if s.q.pushFor(s.item(e, s.proj), fl) {
		s.hub.delivered.Add(1)
	} else {
		s.stopped = true
	}
}

// hold makes live events wait in pending until the matching release.
// Caller holds s.mu.
func (s *subscription) hold() { s.holds++ }

// release ends a hold. With the last one, prefix and then the pending
// events after skipTo are queued, in stream order (events held while the
// subscription moved between RLS groups may have arrived out of order).
func (s *subscription) release(prefix []item, skipTo listener.Cursor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holds--
	if s.stopped || s.holds > 0 {
		return
	}
	slices.SortStableFunc(s.pending, func(a, b *event) int {
		switch {
		case a.cursor.Less(b.cursor):
			return -1
		case b.cursor.Less(a.cursor):
			return 1
		}
		return 0
	})
	its := append(make([]item, 0, len(prefix)+len(s.pending)), prefix...)
	for _, e := range s.pending {
		if skipTo.Less(e.cursor) {
			its = append(its, s.item(e, s.proj))
		}
	}
	s.pending = nil
	if !s.q.pushAll(its) {
		s.stopped = true
		return
	}
	s.hub.delivered.Add(int64(len(its) - len(prefix)))
}

func (s *subscription) beginReplay(till listener.Cursor) {
	s.mu.Lock()
	s.hold()
	s.replayTill = till
	s.mu.Unlock()
}

// replay pushes events (in order) that match, at the client's pace.
func (s *subscription) replay(ctx context.Context, events []*event) error {
	s.mu.Lock()
	till := s.replayTill
	s.mu.Unlock()
	for _, e := range events {
		s.mu.Lock()
		sub, proj, g, stopped := s.sub, s.proj, s.group, s.stopped
		s.mu.Unlock()
		if stopped {
			return errQueueClosed
		}
		if !e.cursor.Less(till) || !s.after.Less(e.cursor) || !sub.Matches(&e.match) {
			continue
		}
		if g != nil {
			if e = g.filter(ctx, []*event{e})[0]; e == nil || !rlsMatches(sub, e) {
				continue
			}
		}
		if !s.q.pushWait(ctx.Done(), s.item(e, proj)) {
			if err := ctx.Err(); err != nil {
				return err
			}
			return errQueueClosed
		}
		s.hub.delivered.Add(1)
	}
	return nil
}

// current is the subscription's Sub (it changes with the token).
func (s *subscription) current() *subscriptions.Sub {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sub
}

func (s *subscription) isStopped() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopped
}

// stop ends the subscription: nothing more is queued, pending is dropped.
func (s *subscription) stop() {
	s.mu.Lock()
	s.stopped = true
	s.pending = nil
	s.mu.Unlock()
}
