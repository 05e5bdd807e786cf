package feed

import (
	"context"
	"sync"

	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/subscriptions"
)

// subscription is one client subscription: what it matches (sub, in the
// index), how its events are cut (proj) and where they go (q).
type subscription struct {
	id  string
	q   *queue
	hub *hub
	req request // as the client asked, to authorize again on a new token

	// after is the position the subscription has reached when it is
	// registered; events at or before it are not delivered. Written before
	// the subscription is added to the index, read by the fan-out after.
	after listener.Cursor

	mu         sync.Mutex
	sub        *subscriptions.Sub // guarded by mu (and swapped under hub.mu)
	proj       projection         // guarded by mu
	group      *rlsGroup          // guarded by mu and hub.mu: nil unless row-level security decides
	replaying  bool               // guarded by mu: live events wait in pending
	replayTill listener.Cursor    // guarded by mu: replayed events are before this
	pending    []*event           // guarded by mu
	stopped    bool               // guarded by mu
}

func newSubscription(h *hub, id string, q *queue, sub *subscriptions.Sub, cols []string) *subscription {
	s := &subscription{id: id, q: q, sub: sub, proj: newProjection(cols), hub: h}
	sub.Value = s
	return s
}

// deliver is called by the fan-out for every matching live event.
func (s *subscription) deliver(e *event) {
	if !s.after.Less(e.cursor) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	if s.replaying {
		if len(s.pending) >= s.hub.pendingMax {
			s.q.close("slow_consumer")
			s.stopped = true
			s.pending = nil
			return
		}
		s.pending = append(s.pending, e)
		return
	}
	if s.q.push(item{sub: s.id, body: e.json(s.proj), change: true, cursor: e.cursor}) {
		s.hub.delivered.Add(1)
	} else {
		s.stopped = true
	}
}

func (s *subscription) beginReplay(till listener.Cursor) {
	s.mu.Lock()
	s.replaying, s.replayTill = true, till
	s.mu.Unlock()
}

// replay pushes events (in order) that match, at the client's pace.
func (s *subscription) replay(ctx context.Context, events []*event) error {
	s.mu.Lock()
	till := s.replayTill
	s.mu.Unlock()
	for _, e := range events {
		s.mu.Lock()
		sub, proj, g := s.sub, s.proj, s.group
		s.mu.Unlock()
		if !e.cursor.Less(till) || !s.after.Less(e.cursor) || !sub.Matches(&e.match) {
			continue
		}
		if g != nil {
			if e = g.filter(ctx, []*event{e})[0]; e == nil {
				continue
			}
		}
		if !s.q.pushWait(ctx.Done(), item{sub: s.id, body: e.json(proj), change: true, cursor: e.cursor}) {
			if err := ctx.Err(); err != nil {
				return err
			}
			return errQueueClosed
		}
		s.hub.delivered.Add(1)
	}
	return nil
}

// endReplay delivers what arrived live during the replay and goes live. A
// non-zero skipTo (after a reset) drops the pending events at or before it.
func (s *subscription) endReplay(skipTo listener.Cursor) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	its := make([]item, 0, len(s.pending))
	for _, e := range s.pending {
		if skipTo.Less(e.cursor) {
			its = append(its, item{sub: s.id, body: e.json(s.proj), change: true, cursor: e.cursor})
		}
	}
	s.pending, s.replaying = nil, false
	if !s.q.pushAll(its) {
		s.stopped = true
		return
	}
	s.hub.delivered.Add(int64(len(its)))
}

func (s *subscription) stop() {
	s.mu.Lock()
	s.stopped = true
	s.pending = nil
	s.mu.Unlock()
}
