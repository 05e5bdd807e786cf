package listener

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// LogicalConfig configures a Logical source. Zero values mean the
// documented defaults.
type LogicalConfig struct {
	// DB runs the source's ordinary queries: the start-up checks, creating
	// the publication and the slot, reading types and primary keys, and
	// measuring the slot's retained WAL. Required; a pool.
	DB Querier
	// Replicate opens a replication connection (replication=database) with
	// the session settings ValueJSON expects; ReplicationConnector makes
	// one. Required.
	Replicate func(ctx context.Context) (*pgconn.PgConn, error)
	// Slot is the persistent replication slot, created when absent. Zero:
	// "pgfeed".
	Slot string
	// Publication is the publication the slot decodes, created (empty)
	// when absent. Zero: "pgfeed".
	Publication string
	// Keep returns the oldest position a restarted pgfeed should still be
	// able to resume clients from: the start of the server's in-memory
	// history (feed.Server.HistoryStart). The slot is confirmed no further
	// than it, within MaxRetainedWAL; a zero cursor (the server has not
	// started) holds the slot where it is. Nil: confirm everything emitted.
	Keep func() Cursor
	// MaxRetainedWAL bounds, in bytes, the WAL the slot keeps for resumes:
	// while running, the source confirms far enough that its confirmed
	// position stays within three quarters of this behind the server's WAL
	// (the slot may keep a little more: its restart point also waits for the
	// oldest transaction running then); when the slot keeps more than
	// MaxRetainedWAL (pgfeed was stopped, or a long transaction holds it
	// back), a warning is logged. Zero: 1 GiB.
	MaxRetainedWAL int64
	// StatusInterval is how often a standby status update is sent (and the
	// slot confirmed). Zero: 10 s.
	StatusInterval time.Duration
	// CheckEvery is how often the slot's retained WAL is measured. Zero:
	// 30 s.
	CheckEvery time.Duration
	// SlotWait is how long Setup waits for a slot in use by another process
	// to be let go before refusing: the walsender of a pgfeed that has just
	// stopped may take a moment to exit. Zero: 10 s.
	SlotWait time.Duration
	// Logger receives the source's logs. Zero: discard.
	Logger *slog.Logger
}

// Logical reads the changes of the tables in a publication from a
// persistent logical replication slot (pgoutput) and emits one Batch per
// transaction, in commit order. Run drives it.
type Logical struct {
	cfg   LogicalConfig
	types Types
	dec   *decoder

	setupMu sync.Mutex // serializes Setup
	setUp   bool       // guarded by setupMu

	ready     chan struct{} // closed once streaming has started
	readyOnce sync.Once
	live      atomic.Bool  // a replication session is streaming now
	retained  atomic.Int64 // the slot's retained WAL in bytes, last measured; -1 unknown

	mu        sync.Mutex
	start     pglogrepl.LSN // guarded by mu: the slot's confirmed position at start-up
	emitted   pglogrepl.LSN // guarded by mu: commit LSN + 1 of the last emitted transaction
	safe      pglogrepl.LSN // guarded by mu: every transaction committed before it has been emitted
	confirmed pglogrepl.LSN // guarded by mu: the flush position last confirmed to the slot
	walEnd    pglogrepl.LSN // guarded by mu: the server's WAL position, last reported
	warnedAt  time.Time     // guarded by mu: the last retained-WAL warning
}

// NewLogical returns a Logical source; call Setup (or just Run) to start
// it.
func NewLogical(cfg LogicalConfig) *Logical {
	if cfg.Slot == "" {
		cfg.Slot = "pgfeed"
	}
	if cfg.Publication == "" {
		cfg.Publication = "pgfeed"
	}
	if cfg.MaxRetainedWAL <= 0 {
		cfg.MaxRetainedWAL = 1 << 30
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 10 * time.Second
	}
	if cfg.CheckEvery <= 0 {
		cfg.CheckEvery = 30 * time.Second
	}
	if cfg.SlotWait <= 0 {
		cfg.SlotWait = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	l := &Logical{cfg: cfg, ready: make(chan struct{})}
	l.retained.Store(-1)
	l.dec = newDecoder(l.describe, func(msg string, args ...any) { l.cfg.Logger.Warn(msg, args...) })
	return l
}

// ReplicationConnector returns a Replicate function for the database at
// connString: a replication=database connection whose session renders
// values as ValueJSON expects (DateStyle ISO, TimeZone UTC, IntervalStyle
// postgres, extra_float_digits 3).
func ReplicationConnector(connString string) (func(ctx context.Context) (*pgconn.PgConn, error), error) {
	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	for k, v := range ReplicationSettings() {
		cfg.RuntimeParams[k] = v
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "pgfeed-logical"
	}
	return func(ctx context.Context) (*pgconn.PgConn, error) {
		return pgconn.ConnectConfig(ctx, cfg.Copy())
	}, nil
}

// ReplicationSettings are the run-time parameters of a replication
// connection for a Logical source.
func ReplicationSettings() map[string]string {
	return map[string]string{
		"replication":        "database",
		"DateStyle":          "ISO",
		"TimeZone":           "UTC",
		"IntervalStyle":      "postgres",
		"extra_float_digits": "3",
	}
}

// ErrRefused is wrapped by the errors of a start-up check that failed: the
// server or the role is not set up for logical replication, or the slot is
// taken. The message is one sentence that says what to change.
var ErrRefused = errors.New("refused")

type refusal struct{ msg string }

func (r *refusal) Error() string        { return r.msg }
func (r *refusal) Is(target error) bool { return target == ErrRefused }

func refused(format string, args ...any) error {
	return &refusal{msg: fmt.Sprintf(format, args...)}
}

// CheckWALLevel refuses a server whose wal_level is not logical.
func CheckWALLevel(level string) error {
	if level != "logical" {
		return refused("source: logical needs wal_level = logical, and this server has wal_level = %s: set wal_level = logical in postgresql.conf (ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL, or use source: trigger", level)
	}
	return nil
}

// CheckRole refuses a role that may not use replication.
func CheckRole(role string, superuser, replication bool) error {
	if !superuser && !replication {
		return refused("source: logical needs a role with the REPLICATION attribute, and role %q lacks it: run ALTER ROLE %s REPLICATION as a superuser, or use source: trigger", role, pgx.Identifier{role}.Sanitize())
	}
	return nil
}

// Setup checks that logical replication can run (wal_level, the role's
// REPLICATION attribute, the slot not in use elsewhere), creates the
// publication and the slot when absent, and reads where the slot stands.
// Its refusals wrap ErrRefused. Run calls it when it has not been called.
func (l *Logical) Setup(ctx context.Context) error {
	l.setupMu.Lock()
	defer l.setupMu.Unlock()
	if l.setUp {
		return nil
	}
	db := l.cfg.DB
	if db == nil || l.cfg.Replicate == nil {
		return errors.New("listener: LogicalConfig.DB and Replicate are required")
	}
	var level string
	if err := db.QueryRow(ctx, `SELECT current_setting('wal_level')`).Scan(&level); err != nil {
		return fmt.Errorf("read wal_level: %w", err)
	}
	if err := CheckWALLevel(level); err != nil {
		return err
	}
	var (
		role              string
		super, replicator bool
	)
	if err := db.QueryRow(ctx, `SELECT rolname, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user`).Scan(&role, &super, &replicator); err != nil {
		return fmt.Errorf("read role attributes: %w", err)
	}
	if err := CheckRole(role, super, replicator); err != nil {
		return err
	}
	if err := l.ensurePublication(ctx); err != nil {
		return err
	}
	lsn, err := l.ensureSlot(ctx)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.start, l.emitted, l.safe, l.confirmed = lsn, lsn, lsn, lsn
	l.mu.Unlock()
	l.setUp = true
	l.measure(ctx, true)
	return nil
}

// ensurePublication creates the publication, empty, when it is absent;
// `pgfeed triggers enable` adds tables to it.
func (l *Logical) ensurePublication(ctx context.Context) error {
	var exists bool
	if err := l.cfg.DB.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, l.cfg.Publication).Scan(&exists); err != nil {
		return fmt.Errorf("look for publication %q: %w", l.cfg.Publication, err)
	}
	if exists {
		return nil
	}
	_, err := l.cfg.DB.Exec(ctx, "CREATE PUBLICATION "+pgx.Identifier{l.cfg.Publication}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42710" { // created meanwhile by another node
		return nil
	}
	if errors.As(err, &pgErr) && pgErr.Code == "42501" {
		return refused("publication %q does not exist and this role may not create it (%s): create it as the database owner (CREATE PUBLICATION %s) or grant CREATE on the database", l.cfg.Publication, pgErr.Message, pgx.Identifier{l.cfg.Publication}.Sanitize())
	}
	if err != nil {
		return fmt.Errorf("create publication %q: %w", l.cfg.Publication, err)
	}
	l.cfg.Logger.Info("created publication", "publication", l.cfg.Publication)
	return nil
}

// ensureSlot creates the slot when it is absent, refuses one that does not
// suit (another plugin, another database, in use), and returns its
// confirmed position.
func (l *Logical) ensureSlot(ctx context.Context) (pglogrepl.LSN, error) {
	waitUntil := time.Now().Add(l.cfg.SlotWait)
	for attempt := 0; ; attempt++ {
		var (
			plugin, slotType, database *string
			active                     *int32
			confirmed, walStatus       *string
			here                       string
		)
		err := l.cfg.DB.QueryRow(ctx, `
			SELECT s.plugin::text, s.slot_type, s.database::text, s.active_pid, s.confirmed_flush_lsn::text, s.wal_status, current_database()::text
			  FROM (SELECT 1) one LEFT JOIN pg_replication_slots s ON s.slot_name = $1`, l.cfg.Slot).
			Scan(&plugin, &slotType, &database, &active, &confirmed, &walStatus, &here)
		if err != nil {
			return 0, fmt.Errorf("look for replication slot %q: %w", l.cfg.Slot, err)
		}
		if slotType != nil {
			switch {
			case *slotType != "logical" || plugin == nil || *plugin != "pgoutput":
				return 0, refused("replication slot %q exists but is not a logical slot of the pgoutput plugin: set logical.slot to another name, or drop the slot", l.cfg.Slot)
			case database == nil || *database != here:
				return 0, refused("replication slot %q belongs to database %q, not %q: set logical.slot to a name unique to this database", l.cfg.Slot, deref(database), here)
			case active != nil && time.Now().Before(waitUntil):
				t := time.NewTimer(50 * time.Millisecond)
				select {
				case <-ctx.Done():
					t.Stop()
					return 0, ctx.Err()
				case <-t.C:
				}
				continue
			case active != nil:
				return 0, refused("replication slot %q is in use by another process (pid %d), perhaps another pgfeed node: give each node its own logical.slot, or stop the other process", l.cfg.Slot, *active)
			case walStatus != nil && *walStatus == "lost":
				return 0, l.lost()
			case confirmed == nil:
				return 0, fmt.Errorf("replication slot %q has no confirmed position", l.cfg.Slot)
			}
			return pglogrepl.ParseLSN(*confirmed)
		}
		var lsn string
		err = l.cfg.DB.QueryRow(ctx, `SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')`, l.cfg.Slot).Scan(&lsn)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42710" && attempt < 100 {
			continue // created meanwhile: look again
		}
		if err != nil {
			return 0, fmt.Errorf("create replication slot %q: %w", l.cfg.Slot, err)
		}
		l.cfg.Logger.Info("created replication slot", "slot", l.cfg.Slot, "lsn", lsn)
		return pglogrepl.ParseLSN(lsn)
	}
}

// lost is the refusal of a slot PostgreSQL has invalidated.
func (l *Logical) lost() error {
	return refused("replication slot %q has lost WAL it needed (max_slot_wal_keep_size let PostgreSQL remove it while pgfeed was stopped or behind), so changes were missed: drop the slot (SELECT pg_drop_replication_slot('%s')) and start pgfeed again; resuming clients will get a reset", l.cfg.Slot, l.cfg.Slot)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// Ready is closed once the source streams from the slot: every transaction
// that commits afterwards will be emitted.
func (l *Logical) Ready() <-chan struct{} { return l.ready }

// Live reports whether a replication session is streaming now (false
// while the source reconnects).
func (l *Logical) Live() bool { return l.live.Load() }

// Position is the cursor right after the last emitted transaction (at
// first, the slot's confirmed position): where a client that subscribes now
// starts.
func (l *Logical) Position() Cursor {
	l.mu.Lock()
	defer l.mu.Unlock()
	return Cursor{Tick: int64(l.emitted)}
}

// RetainedWAL is the WAL the slot keeps, in bytes, as last measured
// (-1 before the first measure).
func (l *Logical) RetainedWAL() int64 { return l.retained.Load() }

// Confirmed is the flush position last confirmed to the slot.
func (l *Logical) Confirmed() pglogrepl.LSN {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.confirmed
}

// Run streams from the slot until ctx is cancelled or emit fails,
// reconnecting with capped, jittered backoff when the connection is lost.
// It calls emit with one batch per transaction, in commit order, from one
// goroutine; a batch counts as delivered when emit returns nil. It returns
// nil on cancellation, and otherwise emit's error, a refusal of Setup, or
// the error that makes streaming impossible (the slot or the publication
// was dropped).
func (l *Logical) Run(ctx context.Context, emit func(Batch) error) error {
	if err := l.Setup(ctx); err != nil {
		return err
	}
	defer beside(ctx, l.watch)()
	return runSessions(ctx, l.cfg.Logger, "replication stream lost; reconnecting",
		func(connected func()) error { return l.session(ctx, emit, connected) })
}

// session is one replication connection's life.
func (l *Logical) session(ctx context.Context, emit func(Batch) error, connected func()) error {
	conn, err := l.cfg.Replicate(ctx)
	if err != nil {
		return fmt.Errorf("connect for replication: %w", err)
	}
	defer func() {
		// Confirm what was delivered before leaving, on a fresh context:
		// ctx may be cancelled.
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if !conn.IsClosed() {
			if err := l.confirmAndWait(cctx, conn); err != nil {
				l.cfg.Logger.Warn("confirm the slot's position before disconnecting", "slot", l.cfg.Slot, "err", err)
			}
		}
		_ = conn.Close(cctx)
	}()
	l.mu.Lock()
	start := max(l.safe, l.confirmed)
	l.mu.Unlock()
	l.dec.reset()
	err = pglogrepl.StartReplication(ctx, conn, pgx.Identifier{l.cfg.Slot}.Sanitize(), start, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{
			"proto_version '1'",
			"publication_names " + quoteLiteral(pgx.Identifier{l.cfg.Publication}.Sanitize()),
		},
	})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42704" { // the slot or the publication is gone
			return &endError{err: fmt.Errorf("start replication from slot %q: %s", l.cfg.Slot, pgErr.Message)}
		}
		if errors.As(err, &pgErr) && pgErr.Code == "55000" && strings.Contains(pgErr.Message, "can no longer get changes") {
			return &endError{err: l.lost()} // invalidated by max_slot_wal_keep_size
		}
		return fmt.Errorf("start replication from slot %q: %w", l.cfg.Slot, err)
	}
	connected()
	l.live.Store(true)
	defer l.live.Store(false)
	l.readyOnce.Do(func() { close(l.ready) })

	nextStatus := time.Now().Add(l.cfg.StatusInterval)
	for {
		if !time.Now().Before(nextStatus) {
			if err := l.sendStatus(conn); err != nil {
				return err
			}
			nextStatus = time.Now().Add(l.cfg.StatusInterval)
		}
		rctx, cancel := context.WithDeadline(ctx, nextStatus)
		msg, err := conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue // time for a status update
			}
			return fmt.Errorf("receive from replication stream: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := l.handleCopyData(ctx, conn, msg.Data, emit); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			pgErr := pgconn.ErrorResponseToPgError(msg)
			if pgErr.Code == "42704" {
				return &endError{err: fmt.Errorf("replication from slot %q: %s", l.cfg.Slot, pgErr.Message)}
			}
			return fmt.Errorf("replication stream: %w", pgErr)
		case *pgproto3.CopyDone:
			return errors.New("replication stream ended by the server")
		default:
			// Notices and parameter changes: nothing to do.
		}
	}
}

// handleCopyData handles one message of the replication stream.
func (l *Logical) handleCopyData(ctx context.Context, conn *pgconn.PgConn, data []byte, emit func(Batch) error) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		l.mu.Lock()
		l.walEnd = max(l.walEnd, k.ServerWALEnd)
		if !l.dec.inTx {
			// The walsender reports the position it has decoded up to:
			// every transaction that committed before it has been sent,
			// and, outside a transaction, handled.
			l.safe = max(l.safe, k.ServerWALEnd)
		}
		l.mu.Unlock()
		if k.ReplyRequested {
			return l.sendStatus(conn)
		}
	case pglogrepl.XLogDataByteID:
		x, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse WAL data: %w", err)
		}
		l.mu.Lock()
		l.walEnd = max(l.walEnd, x.ServerWALEnd)
		l.mu.Unlock()
		b, done, err := l.dec.handle(ctx, x.WALData)
		if err != nil {
			return err
		}
		if !done {
			return nil
		}
		commit := pglogrepl.LSN(b.Tick.ID)
		l.mu.Lock()
		dup := commit < l.emitted
		b.From = Cursor{Tick: int64(l.emitted)}
		l.mu.Unlock()
		if len(b.Changes) > 0 && !dup {
			b.Behind = conn.Frontend().ReadBufferLen() > 0
			if err := emit(b); err != nil {
				return &endError{err: fmt.Errorf("emit transaction %s: %w", commit, err)}
			}
		}
		l.mu.Lock()
		if !dup && len(b.Changes) > 0 {
			l.emitted = commit + 1
		}
		l.safe = max(l.safe, commit+1)
		l.mu.Unlock()
	}
	return nil
}

// confirmTarget is the flush position to confirm: everything emitted, but
// no further than Keep asks (so that a restarted node re-decodes its
// history window from the slot), unless that would keep more than three
// quarters of MaxRetainedWAL (the rest is margin, so that a running pgfeed
// does not set off its own warning); never backwards.
func (l *Logical) confirmTarget() pglogrepl.LSN {
	keep := pglogrepl.LSN(1<<64 - 1)
	if l.cfg.Keep != nil {
		keep = pglogrepl.LSN(max(l.cfg.Keep().Tick, 0))
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	target := min(l.safe, keep)
	if bound := pglogrepl.LSN(l.cfg.MaxRetainedWAL / 4 * 3); l.walEnd > bound && target < l.walEnd-bound {
		target = min(l.safe, l.walEnd-bound)
	}
	return max(target, l.confirmed)
}

// confirmAndWait sends a last status update and waits (until ctx ends) for
// the server's reply, so that the position is recorded before the
// connection goes: a restarted node starts from it.
func (l *Logical) confirmAndWait(ctx context.Context, conn *pgconn.PgConn) error {
	if err := l.sendStatusReply(conn, true); err != nil {
		return err
	}
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return fmt.Errorf("wait for the reply to the last status update: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			// The reply is a keepalive; data sent meanwhile is dropped (it
			// was not emitted, so not confirmed: it will be sent again).
			if len(msg.Data) > 0 && msg.Data[0] == pglogrepl.PrimaryKeepaliveMessageByteID {
				return nil
			}
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		}
	}
}

// sendStatus sends a standby status update confirming confirmTarget.
func (l *Logical) sendStatus(conn *pgconn.PgConn) error { return l.sendStatusReply(conn, false) }

// sendStatusReply is sendStatus, asking the server to answer when reply is
// set.
func (l *Logical) sendStatusReply(conn *pgconn.PgConn, reply bool) error {
	target := l.confirmTarget()
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: target, WALFlushPosition: target, WALApplyPosition: target, ReplyRequested: reply,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	l.mu.Lock()
	l.confirmed = target
	l.mu.Unlock()
	return nil
}

// watch measures the slot's retained WAL every CheckEvery until ctx ends.
func (l *Logical) watch(ctx context.Context) {
	t := time.NewTicker(l.cfg.CheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.measure(ctx, false)
		}
	}
}

// measure reads how much WAL the slot keeps and warns when it is more than
// MaxRetainedWAL: at start-up (a slot left inactive while pgfeed was down)
// and, while it stays above, every 10 minutes.
func (l *Logical) measure(ctx context.Context, startup bool) {
	var bytes *int64
	err := l.cfg.DB.QueryRow(ctx, `
		SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1`, l.cfg.Slot).Scan(&bytes)
	if err != nil {
		if ctx.Err() == nil {
			l.cfg.Logger.Warn("measure the slot's retained WAL", "slot", l.cfg.Slot, "err", err)
		}
		return
	}
	if bytes == nil {
		return
	}
	prev := l.retained.Swap(*bytes)
	if *bytes <= l.cfg.MaxRetainedWAL {
		return
	}
	if startup || prev <= l.cfg.MaxRetainedWAL || time.Since(l.lastWarn()) >= 10*time.Minute {
		l.setLastWarn(time.Now())
		l.cfg.Logger.Warn("the replication slot keeps more WAL than logical.max_retained_wal: PostgreSQL cannot remove it while the slot needs it",
			"slot", l.cfg.Slot, "retained_bytes", *bytes, "max_retained_wal", l.cfg.MaxRetainedWAL,
			"hint", "a slot whose pgfeed is stopped keeps WAL until the disk fills: restart pgfeed, or drop the slot with pg_drop_replication_slot if the node is gone for good")
	}
}

func (l *Logical) lastWarn() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.warnedAt
}

func (l *Logical) setLastWarn(t time.Time) {
	l.mu.Lock()
	l.warnedAt = t
	l.mu.Unlock()
}

// describe completes a Relation message from the catalog: the column
// types and the primary key.
func (l *Logical) describe(ctx context.Context, m *pglogrepl.RelationMessage) (*relation, error) {
	types := make([]*Type, len(m.Columns))
	for i, c := range m.Columns {
		t, err := l.types.Type(ctx, l.cfg.DB, c.DataType)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			l.cfg.Logger.Warn("describe column type; its values are sent as text", "table", m.Namespace+"."+m.RelationName, "column", c.Name, "err", err)
			t = &Type{OID: c.DataType, Kind: kindText}
		}
		types[i] = t
	}
	rows, err := l.cfg.DB.Query(ctx, `
		SELECT a.attname::text
		  FROM pg_index i
		  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
		  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		 WHERE i.indrelid = $1 AND i.indisprimary
		 ORDER BY k.ord`, m.RelationID)
	if err != nil {
		return nil, fmt.Errorf("read primary key of %s.%s: %w", m.Namespace, m.RelationName, err)
	}
	pk, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read primary key of %s.%s: %w", m.Namespace, m.RelationName, err)
	}
	return newRelation(m, types, pk), nil
}

// quoteLiteral renders s as an SQL string literal.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// Newest is the newest position any node reading this database may have
// handed out: the server's current WAL position (a transaction committed
// so far has its commit record before it). feed.Config.Newest takes it.
func (l *Logical) Newest(ctx context.Context) (Cursor, error) {
	var lsn string
	if err := l.cfg.DB.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		return Cursor{}, fmt.Errorf("read the WAL position: %w", err)
	}
	p, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		return Cursor{}, fmt.Errorf("read the WAL position: %w", err)
	}
	return Cursor{Tick: int64(p)}, nil
}
