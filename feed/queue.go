package feed

import (
	"sync"
	"sync/atomic"

	"github.com/pgfeed/pgfeed/listener"
)

// item is one message waiting for a connection's writer.
type item struct {
	sub  []byte // the subscription a change is for, as a JSON string
	body []byte // a change event (shared, read-only) or a whole message
	// change reports whether body is a change event, which the transport
	// frames with sub (WebSocket) or as an SSE event.
	change bool
	// cursor is the change's position (change items only).
	cursor listener.Cursor
	// reset tells the client of sub that its cursor has expired and the
	// subscription goes on from now: it must refetch its state.
	reset bool
}

// queue is a connection's bounded outgoing queue: many producers (the
// fan-out, the connection's own replies), one consumer (its writer). A
// producer never blocks: when the queue is full it is closed as slow and
// the producer moves on. It allocates nothing while idle.
type queue struct {
	maxItems int
	maxBytes int

	mu     sync.Mutex
	items  []item // guarded by mu
	bytes  int    // guarded by mu: total len(body) of items
	closed string // guarded by mu: why the queue closed; "" while open

	ready chan struct{} // one token: the writer has something to do
	// notify, when set (before the first push), is called instead of
	// signalling ready: a WebSocket connection starts its writer then.
	notify func()
	// flush, when set (with notify), lets the fan-out hand a batch's items
	// over once the whole batch is queued, instead of notifying per item:
	// pushFor lists the queue in the batch's flushList, and the flusher
	// calls it (a WebSocket connection then writes them at once, see
	// wsConn.flush).
	flush func(*flushBufs)
	space chan struct{} // one token: the writer took items, so pushWait may go on

	// listed is set while the queue waits in a flushList or the flusher's
	// pending list; the flusher clears it before it calls flush.
	listed atomic.Bool
}

func newQueue(maxItems, maxBytes int) *queue {
	return &queue{maxItems: maxItems, maxBytes: maxBytes, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// pushWait adds it, waiting while the queue is full: for replays, which are
// pulled at the client's pace rather than pushed at the stream's. It
// returns false when the queue closes or done is closed first.
func (q *queue) pushWait(done <-chan struct{}, it item) bool {
	for {
		q.mu.Lock()
		if q.closed != "" {
			q.mu.Unlock()
			return false
		}
		if len(q.items) < q.maxItems && q.bytes+len(it.body) <= q.maxBytes || len(q.items) == 0 {
			q.items = append(q.items, it)
			q.bytes += len(it.body)
			q.mu.Unlock()
			q.signal()
			return true
		}
		q.mu.Unlock()
		select {
		case <-q.space:
		case <-done:
			return false
		}
	}
}

// push adds it; it returns false (and closes the queue as slow_consumer)
// when the queue is full, or false when the queue was already closed.
func (q *queue) push(it item) bool { return q.pushFor(it, nil) }

// flushEarly is how many items a listed queue may collect before the
// fan-out notifies it all the same: a big batch then starts the
// connection's writer, which drains the queue while the fan-out fills it,
// rather than overflowing it.
const flushEarly = 64

// pushFor is push for the fan-out: with fl, a queue that can be flushed is
// listed in fl rather than notified, while it holds fewer than flushEarly
// items; the fan-out flushes fl (itself or through the flusher) once the
// batch is queued.
func (q *queue) pushFor(it item, fl *flushList) bool {
	q.mu.Lock()
	if q.closed != "" {
		q.mu.Unlock()
		return false
	}
	if len(q.items) >= q.maxItems || q.bytes+len(it.body) > q.maxBytes {
		q.closed = "slow_consumer"
		q.items, q.bytes = nil, 0
		q.mu.Unlock()
		q.signal()
		return false
	}
	q.items = append(q.items, it)
	q.bytes += len(it.body)
	early := len(q.items) >= flushEarly
	q.mu.Unlock()
	if fl != nil && q.flush != nil && !early {
		fl.add(q)
	} else {
		q.signal()
	}
	return true
}

// pushAll adds several items at once, all or none.
func (q *queue) pushAll(its []item) bool {
	n := 0
	for _, it := range its {
		n += len(it.body)
	}
	q.mu.Lock()
	if q.closed != "" {
		q.mu.Unlock()
		return false
	}
	if len(q.items)+len(its) > q.maxItems || q.bytes+n > q.maxBytes {
		q.closed = "slow_consumer"
		q.items, q.bytes = nil, 0
		q.mu.Unlock()
		q.signal()
		return false
	}
	q.items = append(q.items, its...)
	q.bytes += n
	q.mu.Unlock()
	q.signal()
	return true
}

func (q *queue) signal() {
	if q.notify != nil {
		q.notify()
		return
	}
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// close closes the queue for reason (the first reason sticks).
func (q *queue) close(reason string) {
	q.mu.Lock()
	if q.closed == "" {
		q.closed = reason
	}
	q.mu.Unlock()
	q.signal()
	select {
	case q.space <- struct{}{}:
	default:
	}
}

// take moves every waiting item into buf (reset to length 0) and returns
// it, with the reason the queue closed ("" while open). Items pushed before
// the close are still returned, except after a slow_consumer close, which
// drops them.
func (q *queue) take(buf []item) ([]item, string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.takeLocked(buf), q.closed
}

// takeOpen is take for the fan-out's flush: it takes nothing from a closed
// queue, whose close is the writer's to carry out, and reports whether the
// queue is open.
func (q *queue) takeOpen(buf []item) ([]item, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed != "" {
		return buf[:0], false
	}
	return q.takeLocked(buf), true
}

// takeLocked is take's work, with q.mu held.
func (q *queue) takeLocked(buf []item) []item {
	buf = append(buf[:0], q.items...)
	clear(q.items)
	q.items = q.items[:0]
	if cap(q.items) > 256 {
		q.items = nil // let a burst's backing array go
	}
	q.bytes = 0
	select {
	case q.space <- struct{}{}:
	default:
	}
	return buf
}

// idle reports whether the queue is open and empty.
func (q *queue) idle() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) == 0 && q.closed == ""
}
