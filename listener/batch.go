package listener

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is what reading the trigger log needs: *pgx.Conn, *pgxpool.Pool
// and pgx.Tx satisfy it.
type Querier interface {
	Begin(ctx context.Context) (pgx.Tx, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Cursor is a position in the ordered stream: the change at index Pos (from
// 1) of tick Tick's batch. Pos 0 means "before the batch's first change", so
// Cursor{Tick: n} is the position right after tick n-1's batch.
type Cursor struct {
	Tick int64
	Pos  int
}

// ErrBadCursor is returned for a cursor string this package did not make.
var ErrBadCursor = errors.New("malformed cursor")

// String renders the cursor as clients see it: opaque, and the same on every
// node reading the same database.
func (c Cursor) String() string {
	return "t" + strconv.FormatInt(c.Tick, 10) + "-" + strconv.Itoa(c.Pos)
}

// ParseCursor reads a cursor made by Cursor.String.
func ParseCursor(s string) (Cursor, error) {
	rest, ok := strings.CutPrefix(s, "t")
	if !ok {
		return Cursor{}, fmt.Errorf("%w: %q", ErrBadCursor, s)
	}
	ts, ps, ok := strings.Cut(rest, "-")
	if !ok {
		return Cursor{}, fmt.Errorf("%w: %q", ErrBadCursor, s)
	}
	tick, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || tick < 1 || ts != strconv.FormatInt(tick, 10) {
		return Cursor{}, fmt.Errorf("%w: %q", ErrBadCursor, s)
	}
	pos, err := strconv.Atoi(ps)
	if err != nil || pos < 0 || ps != strconv.Itoa(pos) {
		return Cursor{}, fmt.Errorf("%w: %q", ErrBadCursor, s)
	}
	return Cursor{Tick: tick, Pos: pos}, nil
}

// Less orders cursors as the stream does.
func (c Cursor) Less(d Cursor) bool {
	return c.Tick < d.Tick || c.Tick == d.Tick && c.Pos < d.Pos
}

// Change is one captured row change, as read from pgfeed.changes.
type Change struct {
	Cursor Cursor
	TxID   uint64
	// Seq is the log row's sequence value; the rows of one statement
	// logged as one chunk share it.
	Seq    int64
	Schema string
	Table  string
	Op     string // insert, update, delete or truncate
	Key    json.RawMessage
	New    json.RawMessage
	Old    json.RawMessage
	// CommitTime is the time of the tick that first saw the transaction
	// committed: at most the tick interval after the real commit. From the
	// logical source it is the commit's own time.
	CommitTime time.Time
	// Unchanged names the columns of an update that the logical source
	// left out of New because their TOASTed value did not change and the
	// table's replica identity did not carry it (see doc.go). Always nil
	// from the trigger source.
	Unchanged []string
}

// Tick is a stream position recorded in pgfeed.ticks.
type Tick struct {
	ID       int64
	Snapshot string // pg_snapshot text form, xmin:xmax:xip,...
	Time     time.Time
}

// Batch is the changes of the transactions that committed between tick
// ID-1 and tick ID, in order: transactions in commit order as far as it can
// be observed (see ReadBatch), the changes of one transaction together.
type Batch struct {
	Tick Tick
	// From is the position the batch follows: the end of the batch the
	// source emitted before it, or where the source started. Cursors
	// between From and the batch's first change name the same place. (From
	// the trigger source, whose ticks follow one another, it is the
	// batch's own start; from the logical source it may be lower.)
	From    Cursor
	Changes []Change
	// Behind is a hint: the source holds more of the stream already (the
	// logical source: the next messages are buffered), so more batches
	// follow at once. The feed then hands its writes to a goroutine of
	// their own, where the batches that come meanwhile go out together.
	Behind bool
}

// CreateTick records a new tick when a transaction has committed changes
// since the newest tick (or when there is no tick yet), and returns the
// newest tick either way. created reports whether it made one. It is one
// round trip: pgfeed.tick() takes the tick lock and cuts the tick.
func CreateTick(ctx context.Context, db Querier) (t Tick, created bool, err error) {
	return scanTick(db.QueryRow(ctx, tickSQL))
}

const tickSQL = `SELECT id, snapshot, created_at, created FROM pgfeed.tick()`

func scanTick(r pgx.Row) (t Tick, created bool, err error) {
	if err := r.Scan(&t.ID, &t.Snapshot, &t.Time, &created); err != nil {
		return Tick{}, false, fmt.Errorf("create tick: %w", err)
	}
	return t, created, nil
}

// nextBatch is CreateTick followed by ReadBatch of tick after+1, in one
// round trip (a pipeline: one implicit transaction, in which the read sees
// the tick just cut). ok reports whether b is tick after+1's batch: false
// when no tick was cut past after, or with ErrTickGone when after+1 was
// pruned. Nothing is returned before the transaction has committed, so a
// tick is never used unless it is durable.
func nextBatch(ctx context.Context, conn *pgx.Conn, after int64) (t Tick, b Batch, ok bool, err error) {
	var q pgx.Batch
	q.Queue(tickSQL)
	q.Queue(readBatchSQL, after+1)
	res := conn.SendBatch(ctx, &q)
	defer res.Close()
	t, _, err = scanTick(res.QueryRow())
	if err != nil {
		return Tick{}, Batch{}, false, err
	}
	rows, err := res.Query()
	if err != nil {
		return Tick{}, Batch{}, false, fmt.Errorf("read batch %d: %w", after+1, err)
	}
	b, berr := scanBatch(rows, after+1)
	if err := res.Close(); err != nil {
		return Tick{}, Batch{}, false, fmt.Errorf("cut tick and read batch %d: %w", after+1, err)
	}
	if t.ID < after {
		return t, Batch{}, false, fmt.Errorf("%w: the newest tick is %d, this node has read up to %d", ErrTicksWentBack, t.ID, after)
	}
	if t.ID == after {
		return t, Batch{}, false, nil
	}
	return t, b, berr == nil, berr
}

// ErrTicksWentBack is returned when the newest tick is older than one
// already read: pgfeed.ticks was emptied or the schema rolled back and
// migrated again. Cursors given out before then now name other changes.
var ErrTicksWentBack = errors.New("pgfeed.ticks went back")

// ErrTickGone is returned when a tick (or the one before it) has been pruned.
var ErrTickGone = errors.New("tick no longer retained")

// ReadBatch reads the batch of tick id: the changes of every transaction
// visible in its snapshot and not in the previous tick's.
//
// Order: within the batch, transactions are ordered by their largest seq,
// and a transaction's changes by seq. Two transactions that changed the same
// row keep their commit order: the later one could only write the row after
// the earlier committed, so all of the earlier one's seqs are smaller.
func ReadBatch(ctx context.Context, db Querier, id int64) (Batch, error) {
	rows, err := db.Query(ctx, readBatchSQL, id)
	if err != nil {
		return Batch{}, fmt.Errorf("read batch %d: %w", id, err)
	}
	return scanBatch(rows, id)
}

// readBatchSQL reads the batch of tick $1 (see ReadBatch): one row per log
// row, or one row of NULL changes when the batch is empty, or none when the
// tick is gone.
//
// The batch's transactions are those that started after the previous tick
// (txid from its xmax) or were running at it (its xip list), and are visible
// in this one. Two index probes: asking for txid >= the previous tick's xmin
// instead would scan every change written since the oldest transaction still
// open, on every read, for as long as it stays open. The running ones are
// also bounded by the previous tick's xmin and xmax, which changes nothing
// but the plan: "= ANY (array)" alone, planned while the log was nearly
// empty (a generic plan, cached for the connection's life), was a
// sequential scan, and each read then cost more as the log grew.
const readBatchSQL = `
		WITH t AS (
		     SELECT cur.id, cur.snapshot AS cs, cur.created_at, prev.snapshot AS ps
		       FROM pgfeed.ticks cur JOIN pgfeed.ticks prev ON prev.id = cur.id - 1
		      WHERE cur.id = $1),
		c AS (
		     SELECT c.seq, c.txid, c.schema_name, c.table_name, c.op, c.key_columns, c.new, c.old
		       FROM pgfeed.changes c
		      WHERE c.txid >= (SELECT pg_snapshot_xmax(ps) FROM t)
		        AND c.txid < (SELECT pg_snapshot_xmax(cs) FROM t)
		        AND pg_visible_in_snapshot(c.txid, (SELECT cs FROM t))
		     UNION ALL
		     SELECT c.seq, c.txid, c.schema_name, c.table_name, c.op, c.key_columns, c.new, c.old
		       FROM pgfeed.changes c
		      WHERE c.txid = ANY (ARRAY(SELECT pg_snapshot_xip(ps) FROM t))
		        AND c.txid >= (SELECT pg_snapshot_xmin(ps) FROM t)
		        AND c.txid < (SELECT pg_snapshot_xmax(ps) FROM t)
		        AND pg_visible_in_snapshot(c.txid, (SELECT cs FROM t)))
		SELECT t.id, t.cs::text, t.created_at,
		       c.seq, c.txid::text, c.schema_name, c.table_name, c.op, c.key_columns, c.new, c.old
		  FROM t LEFT JOIN c ON true`

// scanBatch reads the rows of readBatchSQL for tick id and closes them.
func scanBatch(rows pgx.Rows, id int64) (Batch, error) {
	b := Batch{From: Cursor{Tick: id}}
	found := false
	for rows.Next() {
		found = true
		var (
			seq               *int64
			txid              *string
			schema, table, op *string
			keyCols           []string
			newRow, oldRow    []byte
		)
		if err := rows.Scan(&b.Tick.ID, &b.Tick.Snapshot, &b.Tick.Time, &seq, &txid, &schema, &table, &op, &keyCols, &newRow, &oldRow); err != nil {
			rows.Close()
			return b, fmt.Errorf("read batch %d: %w", id, err)
		}
		if seq == nil { // the LEFT JOIN's row for an empty batch
			continue
		}
		x, err := strconv.ParseUint(*txid, 10, 64)
		if err != nil {
			rows.Close()
			return b, fmt.Errorf("read batch %d: txid %q: %w", id, *txid, err)
		}
		base := Change{TxID: x, Seq: *seq, Schema: *schema, Table: *table, Op: *op, CommitTime: b.Tick.Time}
		if b.Changes, err = expandLogRow(b.Changes, base, keyCols, newRow, oldRow); err != nil {
			rows.Close()
			return b, fmt.Errorf("read batch %d: change %d: %w", id, *seq, err)
		}
	}
	if err := rows.Err(); err != nil {
		return b, fmt.Errorf("read batch %d: %w", id, err)
	}
	if !found {
		return b, fmt.Errorf("read batch %d: %w", id, ErrTickGone)
	}
	order(b.Changes)
	for i := range b.Changes {
		b.Changes[i].Cursor = Cursor{Tick: id, Pos: i + 1}
	}
	return b, nil
}

// order sorts a batch's changes: transactions by their largest seq, then
// each transaction's changes by seq. The changes of one log row (a chunk of
// one statement's rows) share a seq and keep their order, so every node
// numbers a batch alike.
func order(cs []Change) {
	last := make(map[uint64]int64)
	for _, c := range cs {
		if c.Seq > last[c.TxID] {
			last[c.TxID] = c.Seq
		}
	}
	slices.SortStableFunc(cs, func(a, b Change) int {
		if r := cmp.Compare(last[a.TxID], last[b.TxID]); r != 0 {
			return r
		}
		return cmp.Compare(a.Seq, b.Seq)
	})
}
