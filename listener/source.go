package listener

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Channel is the NOTIFY channel the capture functions wake listeners on.
const Channel = "pgfeed"

// Config configures a trigger Source. Zero values mean the documented
// defaults.
type Config struct {
	// Connect opens the source's dedicated connection, which LISTENs and
	// reads. Required.
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// Node names this process in pgfeed.listeners. Zero: a random name.
	Node string
	// Poll is the safety-net interval: with no wake-up, the source still
	// looks for changes this often. Zero: 1 s.
	Poll time.Duration
	// AwakeFor is how long one promise to be reading lasts; writers skip
	// NOTIFY while every listener's promise holds. Zero: 2 s.
	AwakeFor time.Duration
	// NotifyBelow is the rate, in captured transactions per second, below
	// which the source lets writers NOTIFY rather than promising to read:
	// a NOTIFY wakes it at once (the lowest latency) but serializes
	// commits, which costs writers only when they commit fast. At this rate
	// and above it promises to read back to back (writers skip NOTIFY);
	// under half of it, it withdraws the promise. Zero: 2,000. Negative:
	// promise whenever changes flow (the cheapest writes; reads poll every
	// millisecond when they pause).
	NotifyBelow int
	// Retention is how long changes stay readable; older ticks and changes
	// are pruned. Zero: 24 h.
	Retention time.Duration
	// PruneEvery is how often pruning runs, on a connection of its own
	// (opened with Connect for each pass), so that it never delays reads.
	// Zero: 1 min.
	PruneEvery time.Duration
	// Logger receives the source's logs. Zero: discard.
	Logger *slog.Logger
}

// DefaultNotifyBelow is Config.NotifyBelow's default.
const DefaultNotifyBelow = 2000

// Source reads the trigger log continuously and emits its batches in order.
// One Source owns one connection; Run drives it.
type Source struct {
	cfg Config

	ready     chan struct{} // closed once the first session is reading
	readyOnce sync.Once
	live      atomic.Bool // a session is connected and reading

	mu   sync.Mutex
	last int64 // guarded by mu: the newest tick whose batch was emitted

	// seen is the snapshot of tick last: the transactions whose changes
	// have been emitted. Only the session goroutine uses it.
	seen snapshot
}

// setLast records that t's batch has been emitted.
func (s *Source) setLast(t Tick) {
	s.mu.Lock()
	s.last = t.ID
	s.mu.Unlock()
	snap, err := parseSnapshot(t.Snapshot)
	if err != nil {
		// Not from PostgreSQL; treat every wake-up as news.
		snap = snapshot{}
	}
	s.seen = snap
}

// New returns a Source; call Run to start it.
func New(cfg Config) *Source {
	if cfg.Node == "" {
		var b [6]byte
		_, _ = crand.Read(b[:])
		cfg.Node = "pgfeed-" + hex.EncodeToString(b[:])
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.AwakeFor <= 0 {
		cfg.AwakeFor = 2 * time.Second
	}
	if cfg.NotifyBelow == 0 {
		cfg.NotifyBelow = DefaultNotifyBelow
	}
	if cfg.Retention <= 0 {
		cfg.Retention = 24 * time.Hour
	}
	if cfg.PruneEvery <= 0 {
		cfg.PruneEvery = time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, ready: make(chan struct{})}
}

// Ready is closed once the source is listening and has its starting tick:
// every transaction that commits afterwards will be emitted.
func (s *Source) Ready() <-chan struct{} { return s.ready }

// Live reports whether the source is connected and reading now (false
// while it reconnects).
func (s *Source) Live() bool { return s.live.Load() }

// Position is the cursor right after the last emitted batch: where a client
// that subscribes now starts. It is zero before Ready.
func (s *Source) Position() Cursor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Cursor{Tick: s.last + 1}
}

// Run reads until ctx is cancelled or emit fails, reconnecting with capped,
// jittered backoff when the connection is lost. It calls emit with every
// batch in tick order, from one goroutine; a batch counts as delivered when
// emit returns nil. It returns nil on cancellation and emit's error
// otherwise.
func (s *Source) Run(ctx context.Context, emit func(Batch) error) error {
	if s.cfg.Connect == nil {
		return errors.New("listener: Config.Connect is required")
	}
	defer beside(ctx, s.pruneLoop)()
	return runSessions(ctx, s.cfg.Logger, "change listener disconnected; reconnecting",
		func(connected func()) error { return s.session(ctx, emit, connected) })
}

// pruneLoop prunes every PruneEvery, first right away, until ctx ends. A
// failed pass is logged and tried again at the next.
func (s *Source) pruneLoop(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.prunePass(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("prune change log", "err", err)
		}
		t.Reset(s.cfg.PruneEvery)
	}
}

func (s *Source) prunePass(ctx context.Context) error {
	conn, err := s.cfg.Connect(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	return s.prune(ctx, conn)
}

// beside runs bg on a goroutine of its own; the function it returns stops
// bg (cancels its context) and waits for it to return.
func beside(ctx context.Context, bg func(context.Context)) (stop func()) {
	bctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		bg(bctx)
	}()
	return func() {
		cancel()
		<-done
	}
}

// endError ends Run instead of a reconnect: emit failed, or the source
// cannot go on (a lost slot).
type endError struct{ err error }

func (e *endError) Error() string { return e.err.Error() }

// runSessions runs session again and again, with capped, jittered backoff
// between attempts (reset by session's connected), until ctx is cancelled
// (nil) or session fails with an endError (its error).
func runSessions(ctx context.Context, log *slog.Logger, lost string, session func(connected func()) error) error {
	backoff := newBackoff(100*time.Millisecond, 10*time.Second)
	for {
		err := session(backoff.reset)
		if ctx.Err() != nil {
			return nil
		}
		var ee *endError
		if errors.As(err, &ee) {
			return ee.err
		}
		wait := backoff.next()
		log.Warn(lost, "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// session is one connection's life: listen, catch up, then alternate
// between reading while changes flow and sleeping until woken.
func (s *Source) session(ctx context.Context, emit func(Batch) error, connected func()) error {
	conn, err := s.cfg.Connect(ctx)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		// A fresh context: ctx may be cancelled, and the row is best removed
		// so that writers need not wait for it to expire.
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, _ = conn.Exec(cctx, `DELETE FROM pgfeed.listeners WHERE node = $1`, s.cfg.Node)
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{Channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	s.mu.Lock()
	last := s.last
	s.mu.Unlock()
	if last == 0 {
		// First start: the stream begins after the newest tick.
		t, _, err := CreateTick(ctx, conn)
		if err != nil {
			return err
		}
		s.setLast(t)
	}
	connected()
	s.live.Store(true)
	defer s.live.Store(false)
	s.readyOnce.Do(func() { close(s.ready) })

	// Start asleep: writers NOTIFY. A promise this node made before a
	// reconnect may still hold; sleep withdraws it and reads what writers
	// that relied on it commit.
	if err := s.sleep(ctx, conn, emit); err != nil {
		return err
	}
	lastBeat := time.Now()
	awake, awakeSince, waited := false, time.Now(), false
	idle := 0 // reads in a row that found nothing
	var rate rateMeter
	for {
		n, txs, err := s.readNew(ctx, conn, emit)
		if err != nil {
			return err
		}
		rate.add(time.Now(), txs)
		if !awake {
			// Writers NOTIFY: each commit wakes this loop at once. Promise
			// to read instead only when transactions come fast enough for
			// back-to-back reads to find them as soon (or, with a negative
			// NotifyBelow, whenever a NOTIFY woke it).
			if s.cfg.NotifyBelow < 0 && waited || n > 0 && rate.perSecond >= float64(s.cfg.NotifyBelow) {
				if err := s.setAwake(ctx, conn, true); err != nil {
					return err
				}
				awake, awakeSince, idle, waited = true, time.Now(), 0, false
				continue
			}
			waited = false
			if time.Since(lastBeat) >= s.cfg.Poll {
				if err := s.heartbeat(ctx, conn); err != nil {
					return err
				}
				lastBeat = time.Now()
			}
			// Every commit after this read's tick notifies: the wait
			// returns at once for those that came during the read.
			if waited, err = s.notified(ctx, conn, s.cfg.Poll); err != nil {
				return err
			}
			continue
		}
		slow := rate.perSecond < float64(s.cfg.NotifyBelow)/2
		if (n > 0 || idle < idleReads) && !slow {
			// Changes are flowing (or paused only a moment): keep reading,
			// and keep the promise fresh. Going to sleep and waking up
			// costs several round trips; a short pause between commits
			// should not pay them.
			if n > 0 {
				idle = 0
			} else {
				idle++
				if err := s.waitNotification(ctx, conn, idleWait); err != nil {
					return err
				}
			}
			if time.Since(awakeSince) >= s.cfg.AwakeFor/2 {
				if err := s.setAwake(ctx, conn, true); err != nil {
					return err
				}
				awakeSince = time.Now()
			}
			continue
		}
		idle = 0
		if err := s.sleep(ctx, conn, emit); err != nil {
			return err
		}
		awake, lastBeat = false, time.Now()
	}
}

// rateMeter measures transactions per second over windows of rateWindow.
type rateMeter struct {
	start     time.Time
	count     int
	perSecond float64 // over the last full window
}

const rateWindow = 250 * time.Millisecond

func (m *rateMeter) add(now time.Time, n int) {
	if m.start.IsZero() {
		m.start = now
	}
	m.count += n
	if d := now.Sub(m.start); d >= rateWindow {
		m.perSecond = float64(m.count) / d.Seconds()
		m.start, m.count = now, 0
	}
}

// While awake, a read that finds nothing is retried idleReads times, idleWait
// apart, before the source goes to sleep.
const (
	idleReads = 5
	idleWait  = time.Millisecond
)

// readNew cuts a tick and emits every batch not emitted yet. It returns the
// number of batches emitted and of the transactions they held.
func (s *Source) readNew(ctx context.Context, conn *pgx.Conn, emit func(Batch) error) (n, txs int, err error) {
	s.mu.Lock()
	last := s.last
	s.mu.Unlock()
	// The tick and the first batch after last come in one round trip; a
	// reader that fell behind by more than a tick reads the rest one by one.
	t, b, ok, err := nextBatch(ctx, conn, last)
	for id := last + 1; ; id++ {
		if errors.Is(err, ErrTickGone) {
			// This node fell further behind than the retention period (it
			// was stopped, or cut off, that long): the batches are gone.
			// Reconnecting would not bring them back; go on from the
			// newest tick, loudly.
			s.cfg.Logger.Error("change log pruned past this node's position: changes were skipped",
				"from_tick", id, "to_tick", t.ID)
			s.setLast(t)
			return n, txs, nil
		}
		if errors.Is(err, ErrTicksWentBack) {
			// Going on would hand out cursors that old ones collide with;
			// stop, loudly, for an operator to look (a restart goes on
			// from the new ticks).
			return n, txs, &endError{err: fmt.Errorf("%w (was pgfeed's schema rolled back, or its ticks deleted?): cursors given out before name other changes now", err)}
		}
		if err != nil || !ok {
			return n, txs, err
		}
		if err := emit(b); err != nil {
			return n, txs, &endError{err: fmt.Errorf("emit batch %d: %w", id, err)}
		}
		s.setLast(b.Tick)
		n++
		for i, c := range b.Changes {
			if i == 0 || c.TxID != b.Changes[i-1].TxID {
				txs++
			}
		}
		if ok = id < t.ID; ok {
			b, err = ReadBatch(ctx, conn, id+1)
		}
	}
}

// sleep withdraws the promise to be reading and drains what writers that
// relied on it may still commit; from then on writers NOTIFY.
func (s *Source) sleep(ctx context.Context, conn *pgx.Conn, emit func(Batch) error) error {
	if err := s.setAwake(ctx, conn, false); err != nil {
		return err
	}
	// Every writer that saw the promise and skipped its NOTIFY had its
	// transaction id before the promise was withdrawn: it is below this
	// snapshot's xmax. Read until all of those have finished.
	var snap string
	if err := conn.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snap); err != nil {
		return fmt.Errorf("take snapshot: %w", err)
	}
	drainWait := 5 * time.Millisecond
	lastBeat := time.Now()
	for {
		if _, _, err := s.readNew(ctx, conn, emit); err != nil {
			return err
		}
		if time.Since(lastBeat) >= s.cfg.Poll {
			if err := s.heartbeat(ctx, conn); err != nil {
				return err
			}
			lastBeat = time.Now()
		}
		var done bool
		err := conn.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot()) >= pg_snapshot_xmax($1::pg_snapshot)`, snap).Scan(&done)
		if err != nil {
			return fmt.Errorf("check running writers: %w", err)
		}
		if done {
			break
		}
		// A transaction that was running when the promise ended is still
		// open (perhaps for minutes): keep polling, more slowly over time.
		if err := s.waitNotification(ctx, conn, drainWait); err != nil {
			return err
		}
		drainWait = min(drainWait*2, s.cfg.Poll)
	}
	// The last read may have raced with a commit; one more read after the
	// drain closes that window.
	if _, _, err := s.readNew(ctx, conn, emit); err != nil {
		return err
	}
	return s.heartbeat(ctx, conn)
}

// waitNotification waits up to d for a wake-up (see notified). A timeout is
// not an error.
func (s *Source) waitNotification(ctx context.Context, conn *pgx.Conn, d time.Duration) error {
	_, err := s.notified(ctx, conn, d)
	return err
}

// notified waits up to d for a notification on conn that brings news, and
// reports whether one came. A writer's NOTIFY carries its transaction id: one
// whose changes were already emitted is skipped (its commit raced with the
// read that found them), which spares a read that would find nothing.
func (s *Source) notified(ctx context.Context, conn *pgx.Conn, d time.Duration) (bool, error) {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		n, err := conn.WaitForNotification(wctx)
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		if err == nil {
			if x, perr := strconv.ParseUint(n.Payload, 10, 64); perr == nil && s.seen.visible(x) {
				continue
			}
			return true, nil
		}
		if errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
			return false, nil
		}
		return false, fmt.Errorf("wait for notification: %w", err)
	}
}

// setAwake records (or withdraws) this node's promise to be reading.
func (s *Source) setAwake(ctx context.Context, conn *pgx.Conn, awake bool) error {
	until := "'-infinity'::timestamptz"
	if awake {
		until = "clock_timestamp() + $2::interval"
	}
	_, err := conn.Exec(ctx, `
		INSERT INTO pgfeed.listeners (node, awake_until, seen_at)
		VALUES ($1, `+until+`, now())
		ON CONFLICT (node) DO UPDATE SET awake_until = excluded.awake_until, seen_at = excluded.seen_at`,
		awakeArgs(s.cfg.Node, awake, s.cfg.AwakeFor)...)
	if err != nil {
		return fmt.Errorf("record listener state: %w", err)
	}
	return nil
}

func awakeArgs(node string, awake bool, d time.Duration) []any {
	if awake {
		return []any{node, d}
	}
	return []any{node}
}

// heartbeat refreshes seen_at while asleep (recreating the row, not awake,
// if it is gone) and removes rows of listeners
// that have not been seen for a long while (they died without cleaning up,
// and would otherwise keep every writer sending NOTIFY).
func (s *Source) heartbeat(ctx context.Context, conn *pgx.Conn) error {
	// An upsert: another node may have removed this node's row while a
	// long drain kept it from beating; without it writers would skip
	// NOTIFY whenever the other nodes are awake.
	_, err := conn.Exec(ctx, `
		WITH me AS (
		     INSERT INTO pgfeed.listeners (node, awake_until, seen_at) VALUES ($1, '-infinity', now())
		     ON CONFLICT (node) DO UPDATE SET seen_at = excluded.seen_at)
		DELETE FROM pgfeed.listeners WHERE seen_at < now() - $2::interval AND node <> $1`,
		s.cfg.Node, max(time.Minute, 30*s.cfg.Poll))
	if err != nil {
		return fmt.Errorf("listener heartbeat: %w", err)
	}
	return nil
}

// pruneLock keeps two nodes from pruning at once.
const pruneLock int64 = 0x7067666565640002

// prune removes ticks older than the retention period, keeping the newest
// such tick as the base of the next batch, and then the changes older than
// the retention period that no retained batch can contain, in bounded
// batches so that writers are never blocked for long. (Changes written
// before the first tick are in no batch; they stay for the retention period
// all the same, for whoever inspects the log.)
func (s *Source) prune(ctx context.Context, conn *pgx.Conn) error {
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, pruneLock).Scan(&locked); err != nil {
		return err
	}
	if !locked {
		return nil
	}
	defer func() {
		_, _ = conn.Exec(context.Background(), `SELECT pg_advisory_unlock($1)`, pruneLock)
	}()
	// The newest tick past retention stays: it is the base of the next
	// batch. Both deletes go in batches, each its own short transaction.
	if err := deleteInBatches(ctx, conn, `
		DELETE FROM pgfeed.ticks
		 WHERE id = ANY (ARRAY(
		       SELECT t.id FROM pgfeed.ticks t
		        WHERE t.id < (SELECT b.id FROM pgfeed.ticks b
		                       WHERE b.created_at < now() - $1::interval
		                       ORDER BY b.created_at DESC LIMIT 1)
		        ORDER BY t.id LIMIT 5000))`, s.cfg.Retention); err != nil {
		return fmt.Errorf("prune ticks: %w", err)
	}
	if err := deleteInBatches(ctx, conn, `
		DELETE FROM pgfeed.changes
		 WHERE ctid = ANY (ARRAY(
		       SELECT c.ctid FROM pgfeed.changes c
		        WHERE c.txid < (SELECT pg_snapshot_xmin(snapshot) FROM pgfeed.ticks ORDER BY id LIMIT 1)
		          AND c.captured_at < now() - $1::interval
		        LIMIT 5000))`, s.cfg.Retention); err != nil {
		return fmt.Errorf("prune changes: %w", err)
	}
	return nil
}

// deleteInBatches runs a DELETE of at most 5,000 rows until it deletes
// fewer, or ctx ends.
func deleteInBatches(ctx context.Context, conn *pgx.Conn, sql string, args ...any) error {
	for {
		tag, err := conn.Exec(ctx, sql, args...)
		if err != nil {
			return err
		}
		if tag.RowsAffected() < 5000 || ctx.Err() != nil {
			return nil
		}
	}
}

// Oldest returns the oldest cursor still resumable: changes after it can be
// read back. Cursors older than it must be answered with a reset.
func Oldest(ctx context.Context, db Querier) (Cursor, error) {
	var id *int64
	if err := db.QueryRow(ctx, `SELECT min(id) FROM pgfeed.ticks`).Scan(&id); err != nil {
		return Cursor{}, fmt.Errorf("oldest tick: %w", err)
	}
	if id == nil {
		return Cursor{}, nil
	}
	// Batch min(id) needs tick min(id)-1, which is gone: the first readable
	// batch is min(id)+1, so the oldest resumable position is its start.
	return Cursor{Tick: *id + 1}, nil
}

// backoff yields capped exponential delays with full jitter.
type backoff struct {
	base, cap, cur time.Duration
}

func newBackoff(base, cap time.Duration) *backoff {
	return &backoff{base: base, cap: cap, cur: base}
}

func (b *backoff) next() time.Duration {
	d := b.cur/2 + rand.N(b.cur/2+1)
	b.cur = min(b.cur*2, b.cap)
	return d
}

func (b *backoff) reset() { b.cur = b.base }
