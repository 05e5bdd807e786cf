package feed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/subscriptions"
)

// Store reads the change stream back from the database, for replays older
// than the in-memory history. The listener package provides it.
type Store interface {
	// Batch reads the batch of one tick; listener.ErrTickGone when pruned.
	Batch(ctx context.Context, tick int64) (listener.Batch, error)
	// Oldest is the oldest resumable position.
	Oldest(ctx context.Context) (listener.Cursor, error)
	// Newest is the newest tick id (0 when none).
	Newest(ctx context.Context) (int64, error)
}

// ErrCursorExpired means a cursor is older than what can be replayed, or
// unknown: the client must refetch its state.
var ErrCursorExpired = errors.New("cursor_expired")

// hub is the fan-out: it receives the ordered stream, keeps recent history,
// matches each change against the subscription index and hands it to each
// matching subscription's connection queue, never waiting on a connection.
type hub struct {
	log   *slog.Logger
	index *subscriptions.Index
	store Store
	// newest, when store is nil, is the newest position any node may have
	// given out (nil: a cursor beyond this node's position gets a reset).
	newest func(ctx context.Context) (listener.Cursor, error)

	histMax      int // events kept in memory for instant replay
	histMaxBytes int // and their approximate size
	pendingMax   int // events a replaying subscription may buffer
	replayFromDB bool

	// mu makes registering a subscription and reading the position atomic
	// with dispatching a batch: a subscription registered at position P gets
	// every batch after P from the fan-out and nothing before it.
	mu        sync.Mutex
	pos       listener.Cursor // guarded by mu: the position after the last dispatched batch
	started   bool            // guarded by mu: pos is known
	hist      []*event        // guarded by mu: hist[histHead:] are the recent events, oldest first
	histHead  int             // guarded by mu
	histBytes int             // guarded by mu: approximate size of the recent events, encodings aside
	encBytes  atomic.Int64    // size of the encodings the recent events hold (they grow after remember)
	histFrom  listener.Cursor // guarded by mu: every event after this is in hist

	rls *rlsGroups // nil without an RLS checker

	tick atomic.Int64 // pos.Tick, readable without mu; 0 until started

	delivered atomic.Int64 // changes handed to queues

	// flushes lists the queues the batch being dispatched filled, and bufs
	// are for flushing them; only dispatch uses them (the listener emits
	// from one goroutine). It flushes them itself, or hands them to
	// flusher.
	flushes flushList
	bufs    flushBufs
	flusher flusher
}

func newHub(log *slog.Logger, store Store, histMax, histMaxBytes, pendingMax int) *hub {
	return &hub{
		log: log, index: subscriptions.NewIndex(), store: store,
		histMax: histMax, histMaxBytes: histMaxBytes, pendingMax: pendingMax, replayFromDB: store != nil,
	}
}

// start fixes the starting position (the listener's, once ready) unless a
// batch has already been dispatched.
func (h *hub) start(pos listener.Cursor) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.started {
		h.pos, h.histFrom, h.started = pos, pos, true
		h.tick.Store(pos.Tick)
	}
}

// historyStart is the oldest position resumable from memory: every event
// after it is in the history.
func (h *hub) historyStart() (listener.Cursor, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.histFrom, h.started
}

// position is where a subscription made now starts.
// It reads a copy kept outside h.mu, so that health checks and metrics
// answer while a large batch is being fanned out.
func (h *hub) position() (listener.Cursor, bool) {
	tick := h.tick.Load()
	return listener.Cursor{Tick: tick}, tick != 0
}

// dispatch is the listener's emit: it fans one batch out. It never blocks on
// a client: once the batch is queued (and the hub's lock released), each
// WebSocket queue it filled is flushed with a write that does not wait, by
// dispatch itself, or by the flusher when the source is behind (or the
// flusher still runs: the queues' order of turns is kept).
func (h *hub) dispatch(b listener.Batch) error {
	h.fanOut(b)
	if b.Behind || h.flusher.busy() {
		h.flusher.take(&h.flushes)
	} else {
		flushNow(h.flushes.queues, &h.bufs)
		h.flushes.queues = h.flushes.queues[:0]
	}
	return nil
}

// fanOut queues a batch's events for their subscriptions, under h.mu.
func (h *hub) fanOut(b listener.Batch) {
	events := make([]*event, 0, len(b.Changes))
	for _, c := range b.Changes {
		e, err := newEvent(c)
		if err == nil {
			e.counted = &h.encBytes // it joins the history below
		}
		if err != nil {
			// A row pgfeed cannot parse is a bug, not a client's problem:
			// log it and keep the stream going.
			h.log.Error("skip unreadable change", "cursor", c.Cursor.String(), "err", err)
			continue
		}
		events = append(events, e)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.started {
		// The batch came before Start: the stream starts where the
		// source did, which may be before the batch (a logical source
		// starts at its slot's position, and the batch's cursor is its
		// commit's). A cursor from that start must stay resumable here.
		from := b.From
		if from.Tick == 0 {
			from = listener.Cursor{Tick: b.Tick.ID}
		}
		h.histFrom, h.started = from, true
	}
	var checks []rlsJobFor // reused across events
	for _, e := range events {
		checks = checks[:0]
		h.index.Match(&e.match, func(s *subscriptions.Sub) {
			sub := s.Value.(*subscription)
			g := sub.group
			if g == nil {
				sub.deliver(e, &h.flushes)
			} else {
				// Through the group, even what needs no check, so that
				// the subscription's changes keep their order.
				checks = addCheck(checks, g, sub)
			}
		})
		for _, c := range checks {
			c.g.enqueue(e, c.subs)
		}
		h.remember(e)
	}
	h.pos = listener.Cursor{Tick: b.Tick.ID + 1}
	h.tick.Store(h.pos.Tick)
}

// remember appends e to the history, dropping the oldest events beyond the
// count and size budgets. Caller holds h.mu.
func (h *hub) remember(e *event) {
	h.hist = append(h.hist, e)
	h.histBytes += e.size()
	for n := len(h.hist) - h.histHead; n > 0 && (n > h.histMax || h.histBytes+int(h.encBytes.Load()) > h.histMaxBytes); n-- {
		old := h.hist[h.histHead]
		h.hist[h.histHead] = nil
		h.histHead++
		h.histBytes -= old.size()
		old.mu.Lock()
		old.counted = nil // encodings made from now on are no longer the history's
		h.encBytes.Add(-int64(old.encSize))
		old.mu.Unlock()
		h.histFrom = old.cursor
	}
	if h.histHead > 1024 && h.histHead > len(h.hist)/2 {
		n := copy(h.hist, h.hist[h.histHead:])
		clear(h.hist[n:])
		h.hist = h.hist[:n]
		h.histHead = 0
	}
}

// historyAfter returns the remembered events after c, oldest first. Caller
// holds h.mu and has checked that c is not before histFrom.
func (h *hub) historyAfter(c listener.Cursor) []*event {
	recent := h.hist[h.histHead:]
	i := sort.Search(len(recent), func(i int) bool { return c.Less(recent[i].cursor) })
	return append([]*event(nil), recent[i:]...)
}

// subscribe registers s and starts it: from now when since is nil, or
// replaying everything after *since first. announce is called exactly once,
// under the hub's lock and so before any event of s is queued, with the
// cursor the subscription starts from.
//
// A since older than what can be replayed (or invented) gets a reset: a
// reset item is queued right after the announcement and the subscription
// goes on from now. A replay cut short by pruning ends the same way: the
// reset is queued after what was replayed and before the live changes that
// waited. Any other replay failure (the connection went away, the store
// failed) stops the subscription without queueing anything after the
// replayed changes, and is returned: the client resumes from the last
// change it got, with no gap.
//
// The replay runs on the caller's goroutine, pushing into the connection's
// queue at the client's pace; live changes that arrive meanwhile wait in the
// subscription's pending list and follow the replay with no gap and no
// duplicate.
func (h *hub) subscribe(ctx context.Context, s *subscription, since *listener.Cursor, announce func(start listener.Cursor)) error {
	expired := false
	if since != nil && *since == (listener.Cursor{}) {
		since, expired = nil, true // not a cursor: unknown (see prepare)
	}
	if since != nil {
		h.mu.Lock()
		pos, histFrom, started := h.pos, h.histFrom, h.started
		h.mu.Unlock()
		if !started {
			return errNotReady
		}
		switch {
		case since.Tick > pos.Tick:
			// Past this node's position: fine if another node is ahead,
			// not if the cursor is invented.
			if err := h.checkFuture(ctx, *since); errors.Is(err, ErrCursorExpired) {
				since, expired = nil, true
			} else if err != nil {
				return err
			}
		case since.Less(histFrom):
			if ok, err := h.resumable(ctx, *since); err != nil {
				return err
			} else if !ok {
				since, expired = nil, true
			}
		}
	}
	h.mu.Lock()
	if !h.started {
		h.mu.Unlock()
		return errNotReady
	}
	if s.isStopped() { // unsubscribed before it started
		h.mu.Unlock()
		return errQueueClosed
	}
	pos := h.pos
	reset := item{sub: s.idJSON, reset: true, cursor: pos}
	if since == nil || !since.Less(pos) {
		start := pos
		if since != nil {
			start = *since
		}
		s.after = start
		announce(start)
		if expired {
			s.q.push(reset)
		}
		h.index.Add(s.sub)
		h.mu.Unlock()
		return nil
	}
	c := *since
	s.after = c
	s.beginReplay(pos)
	announce(c)
	h.index.Add(s.sub)
	var fromMemory []*event
	inMemory := !c.Less(h.histFrom)
	if inMemory {
		fromMemory = h.historyAfter(c)
	}
	histFrom := h.histFrom
	h.mu.Unlock()

	var err error
	if inMemory {
		err = s.replay(ctx, fromMemory)
	} else {
		err = h.replayStored(ctx, s, c, histFrom)
	}
	switch {
	case err == nil:
		s.release(nil, listener.Cursor{})
	case errors.Is(err, ErrCursorExpired):
		s.release([]item{reset}, pos)
		err = nil
	default:
		s.stop()
		s.release(nil, listener.Cursor{})
	}
	return err
}

var (
	errNotReady    = errors.New("the change stream is not ready yet")
	errQueueClosed = errors.New("connection closed")
)

// resumable reports whether the changes after c can still be read back.
func (h *hub) resumable(ctx context.Context, c listener.Cursor) (bool, error) {
	if !h.replayFromDB {
		return false, nil
	}
	oldest, err := h.store.Oldest(ctx)
	if err != nil {
		return false, fmt.Errorf("check cursor: %w", err)
	}
	// A cursor inside the batch just before the oldest retained one cannot
	// be resumed either: the rest of that batch is gone.
	return oldest.Tick != 0 && !c.Less(oldest), nil
}

// checkFuture verifies that a cursor beyond this node's position names a
// tick that exists.
func (h *hub) checkFuture(ctx context.Context, c listener.Cursor) error {
	if h.store == nil {
		if h.newest == nil {
			return ErrCursorExpired
		}
		// Without a log of ticks (the logical source), a cursor is a
		// position in the WAL: one not past the server's WAL may have
		// been given by another node, or by this one before a restart,
		// and this node will reach it.
		newest, err := h.newest(ctx)
		if err != nil {
			return fmt.Errorf("check cursor: %w", err)
		}
		if newest.Less(c) {
			return ErrCursorExpired
		}
		return nil
	}
	newest, err := h.store.Newest(ctx)
	if err != nil {
		return fmt.Errorf("check cursor: %w", err)
	}
	// The batch after the newest tick is not cut yet: only its start is a
	// position anyone can have been given.
	if c.Tick > newest+1 || c.Tick == newest+1 && c.Pos > 0 {
		return ErrCursorExpired
	}
	return nil
}

// replayStored replays from the database the events after c up to histFrom,
// then the in-memory history from there.
func (h *hub) replayStored(ctx context.Context, s *subscription, c, histFrom listener.Cursor) error {
	if !h.replayFromDB {
		return ErrCursorExpired
	}
	// Batches up to histFrom: the one holding it, or the one before when
	// histFrom is a batch's start.
	last := histFrom.Tick
	if histFrom.Pos == 0 {
		last--
	}
	for tick := max(c.Tick, 1); tick <= last; tick++ {
		b, err := h.store.Batch(ctx, tick)
		if errors.Is(err, listener.ErrTickGone) {
			return ErrCursorExpired
		}
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		var batch []*event
		for _, ch := range b.Changes {
			if !c.Less(ch.Cursor) || histFrom.Less(ch.Cursor) {
				continue
			}
			e, err := newEvent(ch)
			if err != nil {
				return fmt.Errorf("replay: %w", err)
			}
			batch = append(batch, e)
		}
		if err := s.replay(ctx, batch); err != nil {
			return err
		}
	}
	h.mu.Lock()
	var fromMemory []*event
	if !histFrom.Less(h.histFrom) {
		fromMemory = h.historyAfter(histFrom)
	} else {
		// The history moved on while we read the database: read what fell
		// out of it from the database too.
		newFrom := h.histFrom
		h.mu.Unlock()
		return h.replayStored(ctx, s, histFrom, newFrom)
	}
	h.mu.Unlock()
	return s.replay(ctx, fromMemory)
}

// rlsJobFor collects, for one change, the subscriptions of one RLS group.
type rlsJobFor struct {
	g    *rlsGroup
	subs []*subscription
}

func addCheck(checks []rlsJobFor, g *rlsGroup, s *subscription) []rlsJobFor {
	for i := range checks {
		if checks[i].g == g {
			checks[i].subs = append(checks[i].subs, s)
			return checks
		}
	}
	return append(checks, rlsJobFor{g: g, subs: []*subscription{s}})
}

// unsubscribe removes s from the index; nothing more is delivered to it.
// Safe to call more than once.
func (h *hub) unsubscribe(s *subscription) {
	h.mu.Lock()
	s.mu.Lock()
	sub, g := s.sub, s.group
	s.group = nil
	s.stopped = true
	s.pending = nil
	s.mu.Unlock()
	// Under h.mu, with stopped set: a subscribe still on its way cannot
	// add it back.
	h.index.Remove(sub)
	h.mu.Unlock()
	if g != nil {
		h.rls.leave(g)
	}
}

// replace gives s a new filter, projection and RLS group (after a token
// change) between two batches, so that it misses nothing and gets nothing
// twice.
func (h *hub) replace(s *subscription, p *prepared) {
	var g *rlsGroup
	if p.rls {
		g = h.rls.join(p.id, p.table)
	}
	h.mu.Lock()
	s.mu.Lock()
	old, oldGroup := s.sub, s.group
	if s.stopped {
		s.mu.Unlock()
		h.mu.Unlock()
		if g != nil {
			h.rls.leave(g)
		}
		return
	}
	p.sub.Value = s
	s.sub, s.proj, s.group = p.sub, newProjection(p.cols), g
	if oldGroup != nil && oldGroup != g {
		// Changes still waiting in the old group's checks must come
		// before those of the new route: hold the new ones until the old
		// group is through, then release them in stream order.
		s.hold()
	}
	s.mu.Unlock()
	h.index.Remove(old)
	h.index.Add(p.sub)
	h.mu.Unlock()
	if oldGroup != nil {
		if oldGroup != g {
			oldGroup.barrier()
			s.release(nil, listener.Cursor{})
		}
		h.rls.leave(oldGroup)
	}
}

// newSubscription makes the subscription a prepared request describes,
// not yet registered.
func (h *hub) newSubscription(id string, q *queue, p *prepared) *subscription {
	s := newSubscription(h, id, q, p.sub, p.cols)
	if p.rls {
		s.group = h.rls.join(p.id, p.table)
	}
	return s
}
