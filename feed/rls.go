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
	Visible(ctx context.Context, id subscriptions.Identity, t *subscriptions.Table, key []byte) (bool, error)
}

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
			for _, s := range j.subs {
				s.q.close("slow_consumer")
			}
		}
		for _, s := range subs {
			s.q.close("slow_consumer")
		}
		return
	}
	g.jobs = append(g.jobs, rlsJob{e: e, subs: subs})
	start := !g.running
	g.running = true
	g.mu.Unlock()
	if start {
		g.rls.wg.Add(1)
		go g.run()
	}
}

// run checks the waiting changes in order and delivers the visible ones.
func (g *rlsGroup) run() {
	defer g.rls.wg.Done()
	for {
		g.mu.Lock()
		if len(g.jobs) == 0 || g.rls.ctx.Err() != nil {
			g.jobs = nil
			g.running = false
			g.mu.Unlock()
			return
		}
		j := g.jobs[0]
		g.jobs[0] = rlsJob{}
		g.jobs = g.jobs[1:]
		g.mu.Unlock()
		e := j.e
		switch e.op {
		case "truncate":
		case "delete":
			// The row is gone: its visibility cannot be checked, and the
			// old row could reveal what the subscriber may not see.
			e = e.keyOnly()
		default:
			if !g.visible(g.rls.ctx, e) {
				continue
			}
		}
		for _, s := range j.subs {
			s.deliver(e)
		}
	}
}

// visible runs one check; a failure is logged (never the token), counted,
// and denies.
func (g *rlsGroup) visible(ctx context.Context, e *event) bool {
	g.rls.checks.Add(1)
	ok, err := g.rls.checker.Visible(ctx, g.id, g.table, e.key)
	if err != nil {
		g.rls.errors.Add(1)
		if ctx.Err() == nil {
			g.rls.log.Warn("row-level security check failed; the change is withheld from this group",
				"table", g.table.Name, "role", g.id.Role, "cursor", e.cursor.String(), "err", err)
		}
		return false
	}
	return ok
}
