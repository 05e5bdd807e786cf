package feed

import "sync"

// flushList collects the queues that one batch filled, so that each is
// flushed once, after the whole batch is queued. Only the fan-out uses it.
type flushList struct {
	queues []*queue
}

// add lists q unless it is listed already (here, or still pending at the
// flusher, whose flush takes everything queued before it starts).
func (f *flushList) add(q *queue) {
	if q.listed.CompareAndSwap(false, true) {
		f.queues = append(f.queues, q)
	}
}

// flushBufs are a flusher's reusable buffers.
type flushBufs struct {
	items []item
	out   []byte
}

// flushNow flushes queues, and clears the slice.
func flushNow(queues []*queue, bufs *flushBufs) {
	for i, q := range queues {
		queues[i] = nil
		// Before flush: a push after this lists the queue again.
		q.listed.Store(false)
		q.flush(bufs)
	}
	if cap(bufs.out) > 1<<20 {
		bufs.out = nil // one huge batch need not keep its buffer
	}
}

// flusher flushes the queues the fan-out filled on a goroutine of its own,
// when the source is behind (Batch.Behind): the fan-out then goes on to the
// next batch while the last one is written, on the other core, and the
// batches that come while the flusher writes go out together, one write
// per connection for all of them, rather than one per batch (the logical
// source emits every transaction as a batch). Its goroutine runs while
// there is something to flush. The hub owns it; Serve waits for it.
// Otherwise the fan-out flushes itself (flushNow): handing over costs more
// than the writes of a batch when the source keeps up.
type flusher struct {
	mu      sync.Mutex
	pending []*queue // guarded by mu: in the order first filled
	running bool     // guarded by mu: run's goroutine is on
	wg      sync.WaitGroup

	bufs  flushBufs // run's own
	spare []*queue  // run's own: the other pending slice
}

// take hands over the queues of fl, and empties fl.
func (f *flusher) take(fl *flushList) {
	if len(fl.queues) == 0 {
		return
	}
	f.mu.Lock()
	f.pending = append(f.pending, fl.queues...)
	start := !f.running
	if start {
		f.running = true
		f.wg.Add(1)
	}
	f.mu.Unlock()
	clear(fl.queues)
	fl.queues = fl.queues[:0]
	if start {
		go f.run()
	}
}

func (f *flusher) run() {
	defer f.wg.Done()
	for {
		f.mu.Lock()
		if len(f.pending) == 0 {
			f.running = false
			f.mu.Unlock()
			return
		}
		queues := f.pending
		f.pending, f.spare = f.spare[:0], nil
		f.mu.Unlock()
		flushNow(queues, &f.bufs)
		f.spare = queues[:0]
	}
}

// busy reports whether the flusher's goroutine runs.
func (f *flusher) busy() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running
}

// wait waits until no flush runs.
func (f *flusher) wait() { f.wg.Wait() }
