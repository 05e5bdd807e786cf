package feed

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/pgfeed/pgfeed/subscriptions"
)

// RLSChecker decides, for policies with rls: true, whether a subscriber
// may see a row (subscriptions.RLS is one). An error counts as "no".
type RLSChecker interface {
	// Visible answers for each key (a JSON object of the key columns).
	Visible(ctx context.Context, id subscriptions.Identity, t *subscriptions.Table, keys [][]byte) ([]bool, error)
}

// maxChecksPerQuery bounds how many waiting changes of a group one query
// checks.
const maxChecksPerQuery = 128

// rlsGroup is the subscribers of one table that share a role and claims:
// they see the same rows, so one check per change serves them all. Its
// checks run in order, one at a time, on a goroutine started when work
// arrives and ending when there is none; each subscription belongs to one
// group, so its changes keep their order.
type rlsGroup struct {
	key   string
	id    subscriptions.Identity
	table *subscriptions.Table
	rls   *rlsGroups

	mu      sync.Mutex
	refs    int      // guarded by mu: subscriptions in the group
	jobs    []rlsJob // guarded by mu: changes waiting for their check
	running bool     // guarded by mu: a goroutine is working through jobs
}

type rlsJob struct {
	e    *event
	subs []*subscription
	done chan struct{} // a barrier (e is nil): closed when the jobs before it are done
}

// barrier waits until every change enqueued before it has been delivered
// (or the checks are shutting down).
func (g *rlsGroup) barrier() {
	done := make(chan struct{})
	g.mu.Lock()
	g.add(rlsJob{done: done})
	select {
	case <-done:
	case <-g.rls.ctx.Done():
	}
}

// rlsGroups owns the groups and their goroutines.
type rlsGroups struct {
	checker RLSChecker
	log     *slog.Logger
	maxJobs int
	ctx     context.Context // cancelled at shutdown
	wg      sync.WaitGroup  // running group goroutines

	checks atomic.Int64
	errors atomic.Int64

	mu     sync.Mutex
	groups map[string]*rlsGroup // guarded by mu
}

// join returns the group for id on t, counting one more member.
func (r *rlsGroups) join(id subscriptions.Identity, t *subscriptions.Table) *rlsGroup {
	key := t.Name + "\x00" + subscriptions.GroupKey(id)
	r.mu.Lock()
	defer r.mu.Unlock()
	g := r.groups[key]
	if g == nil {
		g = &rlsGroup{key: key, id: id, table: t, rls: r}
		r.groups[key] = g
	}
	g.mu.Lock()
	g.refs++
	g.mu.Unlock()
	return g
}

// leave counts one member less, forgetting the group with its last.
func (r *rlsGroups) leave(g *rlsGroup) {
	r.mu.Lock()
	defer r.mu.Unlock()
	g.mu.Lock()
	g.refs--
	empty := g.refs == 0
	g.mu.Unlock()
	if empty && r.groups[g.key] == g {
		delete(r.groups, g.key)
	}
}

// enqueue hands the group a change for its matching subscriptions. It never
// blocks: a group that falls too far behind (its database checks slower
// than the changes) cuts its subscribers off as slow.
func (g *rlsGroup) enqueue(e *event, subs []*subscription) {
	g.mu.Lock()
	if len(g.jobs) >= g.rls.maxJobs {
		jobs := g.jobs
		g.jobs = nil
		g.mu.Unlock()
		for _, j := range jobs {
			if j.done != nil {
				close(j.done) // a token refresh waiting on the group goes on
			}
			for _, s := range j.subs {
				s.q.close("slow_consumer")
			}
		}
		for _, s := range subs {
			s.q.close("slow_consumer")
		}
		return
	}
	g.add(rlsJob{e: e, subs: subs})
}

// add queues j and unlocks g.mu (which the caller holds), starting the
// group's goroutine when it is not running.
func (g *rlsGroup) add(j rlsJob) {
	g.jobs = append(g.jobs, j)
	start := !g.running
	g.running = true
	g.mu.Unlock()
	if start {
		g.rls.wg.Add(1)
		go g.run()
	}
}

// run checks the waiting changes in order, many per query when they pile
// up, and delivers the visible ones.
func (g *rlsGroup) run() {
	defer g.rls.wg.Done()
	for {
		g.mu.Lock()
		if len(g.jobs) == 0 || g.rls.ctx.Err() != nil {
			for _, j := range g.jobs {
				if j.done != nil {
					close(j.done)
				}
			}
			g.jobs = nil
			g.running = false
			g.mu.Unlock()
			return
		}
		if j := g.jobs[0]; j.done != nil {
			g.jobs[0] = rlsJob{}
			g.jobs = g.jobs[1:]
			g.mu.Unlock()
			close(j.done)
			continue
		}
		n := 0
		for n < len(g.jobs) && n < maxChecksPerQuery && g.jobs[n].done == nil {
			n++
		}
		jobs := make([]rlsJob, n)
		copy(jobs, g.jobs)
		clear(g.jobs[:n])
		g.jobs = g.jobs[n:]
		g.mu.Unlock()

		events := make([]*event, n)
		for i, j := range jobs {
			events[i] = j.e
		}
		for i, e := range g.filter(g.rls.ctx, events) {
			if e == nil {
				continue
			}
			for _, s := range jobs[i].subs {
				if rlsMatches(s.current(), e) {
					s.deliver(e, nil)
				}
			}
		}
	}
}

// filter returns what each event looks like to the group: itself when the
// group may see it, nil when not, key only for a delete (the row is gone:
// its visibility cannot be checked, and the old row could reveal what the
// subscriber may not see). One query checks all the inserts and updates; a
// failure is logged (never the token), counted, and denies them all.
func (g *rlsGroup) filter(ctx context.Context, events []*event) []*event {
	out := make([]*event, len(events))
	var keys [][]byte
	var idx []int
	for i, e := range events {
		switch e.op {
		case "truncate":
			out[i] = e
		case "delete":
			out[i] = e.keyOnly()
		default:
			keys = append(keys, e.key)
			idx = append(idx, i)
		}
	}
	if len(keys) == 0 {
		return out
	}
	g.rls.checks.Add(int64(len(keys)))
	visible, err := g.rls.checker.Visible(ctx, g.id, g.table, keys)
	if err != nil {
		g.rls.errors.Add(int64(len(keys)))
		if ctx.Err() == nil {
			g.rls.log.Warn("row-level security check failed; the changes are withheld from this group",
				"table", g.table.Name, "role", g.id.Role, "changes", len(keys),
				"from", events[idx[0]].cursor.String(), "err", err)
		}
		return out
	}
	for k, i := range idx {
		if !visible[k] {
			continue
		}
		if e := events[i]; e.op == "update" {
			out[i] = e.withKeyOld()
		} else {
			out[i] = e
		}
	}
	return out
}

// rlsMatches decides a delete for a subscription under row-level security
// on the key alone: matching the old row's other columns would let a
// filter probe rows the subscriber may not see.
func rlsMatches(sub *subscriptions.Sub, e *event) bool {
	if e.op != "delete" {
		return true
	}
	key, err := subscriptions.DecodeRow(e.key)
	if err != nil {
		return false
	}
	return sub.Filter.Match(key)
}
