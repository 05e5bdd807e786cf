package listener

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pglogrepl"
)

// This file turns pgoutput's messages (protocol version 1) into Changes
// that read exactly as the trigger source's: rows as to_json renders them,
// members in the table's column order, values as to_jsonb renders them;
// keys from the primary key, in its column order.

// relation is what the decoder knows of a published table, from its latest
// Relation message and the catalog.
type relation struct {
	schema, name string
	cols         []column
	// key holds the indexes in cols of the primary key columns, in key
	// order. Empty when the table has no primary key (then the replica
	// identity columns stand in).
	key []int
}

type column struct {
	name     string
	qname    []byte // name as a JSON string
	typ      *Type
	identity bool // part of the replica identity (flag 1 of the Relation message)
}

// describeFunc completes a Relation message with the catalog: each column's
// type and the primary key.
type describeFunc func(ctx context.Context, m *pglogrepl.RelationMessage) (*relation, error)

// decoder assembles transactions from pgoutput messages. It is used by one
// goroutine.
type decoder struct {
	describe  describeFunc
	relations map[uint32]*relation

	inTx    bool
	changes []Change // the open transaction's changes, cursors unset
	// warn is called for values that did not convert (they are sent as
	// JSON strings of their text instead), once per column: warned holds
	// the columns ("schema.table.column") already reported.
	warn   func(msg string, args ...any)
	warned map[string]bool
}

func newDecoder(describe describeFunc, warn func(string, ...any)) *decoder {
	return &decoder{describe: describe, relations: map[uint32]*relation{}, warn: warn, warned: map[string]bool{}}
}

// errProtocol marks a message the decoder cannot make sense of.
var errProtocol = errors.New("unexpected logical replication message")

// handle decodes one pgoutput message. At a commit it returns the
// transaction's batch (done true); the batch may hold no change.
func (d *decoder) handle(ctx context.Context, data []byte) (b Batch, done bool, err error) {
	msg, err := parse(data)
	if err != nil {
		return b, false, err
	}
	switch m := msg.(type) {
	case *pglogrepl.BeginMessage:
		d.inTx = true
		d.changes = d.changes[:0]
	case *pglogrepl.RelationMessage:
		r, err := d.describe(ctx, m)
		if err != nil {
			return b, false, err
		}
		d.relations[m.RelationID] = r
	case *pglogrepl.InsertMessage:
		r, err := d.relation(m.RelationID)
		if err != nil {
			return b, false, err
		}
		vals := d.values(r, m.Tuple, nil)
		d.changes = append(d.changes, Change{
			Schema: r.schema, Table: r.name, Op: "insert",
			Key: r.keyJSON(vals), New: r.rowJSON(vals, false),
		})
	case *pglogrepl.UpdateMessage:
		r, err := d.relation(m.RelationID)
		if err != nil {
			return b, false, err
		}
		var old [][]byte
		if m.OldTuple != nil {
			old = d.values(r, m.OldTuple, nil)
		}
		vals := d.values(r, m.NewTuple, old)
		c := Change{Schema: r.schema, Table: r.name, Op: "update", Key: r.keyJSON(vals), New: r.rowJSON(vals, false)}
		switch m.OldTupleType {
		case pglogrepl.UpdateMessageTupleTypeOld: // REPLICA IDENTITY FULL
			c.Old = r.rowJSON(old, false)
		case pglogrepl.UpdateMessageTupleTypeKey: // the identity key changed
			c.Old = r.rowJSON(old, true)
		default: // the key did not change: the old key is the new one
			c.Old = r.rowJSON(vals, true)
		}
		for i := range r.cols {
			if vals[i] == nil {
				c.Unchanged = append(c.Unchanged, r.cols[i].name)
			}
		}
		d.changes = append(d.changes, c)
	case *pglogrepl.DeleteMessage:
		r, err := d.relation(m.RelationID)
		if err != nil {
			return b, false, err
		}
		old := d.values(r, m.OldTuple, nil)
		c := Change{Schema: r.schema, Table: r.name, Op: "delete", Key: r.keyJSON(old)}
		c.Old = r.rowJSON(old, m.OldTupleType != pglogrepl.DeleteMessageTupleTypeOld)
		d.changes = append(d.changes, c)
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			r, err := d.relation(id)
			if err != nil {
				return b, false, err
			}
			d.changes = append(d.changes, Change{Schema: r.schema, Table: r.name, Op: "truncate"})
		}
	case *pglogrepl.CommitMessage:
		if !d.inTx {
			return b, false, fmt.Errorf("%w: commit outside a transaction", errProtocol)
		}
		d.inTx = false
		tick := int64(m.CommitLSN)
		b.Tick = Tick{ID: tick, Time: m.CommitTime.UTC()}
		if len(d.changes) > 0 {
			b.Changes = make([]Change, len(d.changes))
			copy(b.Changes, d.changes)
			clear(d.changes)
			d.changes = d.changes[:0]
			for i := range b.Changes {
				b.Changes[i].Cursor = Cursor{Tick: tick, Pos: i + 1}
				b.Changes[i].Seq = int64(i + 1)
				b.Changes[i].CommitTime = b.Tick.Time
			}
		}
		return b, true, nil
	case *pglogrepl.TypeMessage, *pglogrepl.OriginMessage, *pglogrepl.LogicalDecodingMessage:
		// Types are read from the catalog; origins and messages do not
		// concern the feed.
	default:
		return b, false, fmt.Errorf("%w: %T", errProtocol, msg)
	}
	return b, false, nil
}

// parse is pglogrepl.Parse, with a malformed message (which it may index
// past the end of) an error rather than a panic.
func parse(data []byte) (msg pglogrepl.Message, err error) {
	defer func() {
		if r := recover(); r != nil {
			msg, err = nil, fmt.Errorf("%w: malformed message: %v", errProtocol, r)
		}
	}()
	if err := checkLengths(data); err != nil {
		return nil, err
	}
	msg, err = pglogrepl.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errProtocol, err)
	}
	return msg, nil
}

// checkLengths checks that the tuples of an insert, update or delete
// message, and the relations of a truncate, fit in it, before pglogrepl
// allocates what their counts and lengths claim.
func checkLengths(data []byte) error {
	if len(data) == 0 {
		return fmt.Errorf("%w: empty message", errProtocol)
	}
	switch data[0] {
	case 'I', 'U', 'D':
	case 'T':
		if len(data) < 6 || uint64(binary.BigEndian.Uint32(data[1:]))*4 != uint64(len(data)-6) {
			return fmt.Errorf("%w: malformed T message", errProtocol)
		}
		return nil
	default:
		return nil
	}
	bad := fmt.Errorf("%w: malformed %c message", errProtocol, data[0])
	i := 5 // type and relation id
	for i < len(data) {
		switch data[i] {
		case 'K', 'O', 'N':
		default:
			return bad
		}
		i++
		if i+2 > len(data) {
			return bad
		}
		n := int(binary.BigEndian.Uint16(data[i:]))
		i += 2
		for range n {
			if i >= len(data) {
				return bad
			}
			kind := data[i]
			i++
			if kind == 't' || kind == 'b' {
				if i+4 > len(data) {
					return bad
				}
				l := int(binary.BigEndian.Uint32(data[i:]))
				i += 4
				if l > len(data)-i {
					return bad
				}
				i += l
			}
		}
	}
	if i != len(data) {
		return bad
	}
	return nil
}

// reset forgets the open transaction and the relations: a new replication
// session sends its Relation messages again.
func (d *decoder) reset() {
	d.inTx = false
	clear(d.changes)
	d.changes = d.changes[:0]
	clear(d.relations)
}

func (d *decoder) relation(id uint32) (*relation, error) {
	r, ok := d.relations[id]
	if !ok {
		return nil, fmt.Errorf("%w: change of relation %d before its Relation message", errProtocol, id)
	}
	return r, nil
}

// values converts a tuple to one JSON value per column: "null" for NULL,
// nil for an unchanged TOAST value that fill (the old row, when the
// replica identity carries it) does not supply.
func (d *decoder) values(r *relation, t *pglogrepl.TupleData, fill [][]byte) [][]byte {
	vals := make([][]byte, len(r.cols))
	if t == nil {
		return vals
	}
	for i, c := range t.Columns {
		if i >= len(r.cols) {
			break
		}
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull:
			vals[i] = []byte("null")
		case pglogrepl.TupleDataTypeToast:
			if fill != nil && fill[i] != nil {
				vals[i] = fill[i]
			}
		case pglogrepl.TupleDataTypeText:
			v, err := ValueJSON(nil, c.Data, r.cols[i].typ)
			if err != nil {
				// Never stop the stream for one value: send its text, and
				// say so once per column (this is the hot path).
				if col := r.schema + "." + r.name + "." + r.cols[i].name; !d.warned[col] {
					d.warned[col] = true
					d.warn("value not converted as to_jsonb would; sent as text (further values of this column are not logged)",
						"table", r.schema+"."+r.name, "column", r.cols[i].name, "err", err)
				}
				v = appendJSONString(nil, c.Data)
			}
			vals[i] = v
		default: // binary: not requested
			vals[i] = appendJSONString(nil, c.Data)
		}
	}
	return vals
}

// rowJSON renders the columns with a value as a JSON object in column
// order (as to_json, and so the trigger source, writes a row); keyOnly keeps only the replica identity columns (what a key-only
// old tuple carries).
func (r *relation) rowJSON(vals [][]byte, keyOnly bool) []byte {
	b := make([]byte, 0, 64)
	b = append(b, '{')
	first := true
	for i := range r.cols {
		if vals[i] == nil || keyOnly && !r.cols[i].identity {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, r.cols[i].qname...)
		b = append(b, ':')
		b = append(b, vals[i]...)
	}
	return append(b, '}')
}

// keyJSON renders the primary key columns of a row in key order, as the
// trigger source does.
func (r *relation) keyJSON(vals [][]byte) []byte {
	key := r.key
	if len(key) == 0 {
		for i, c := range r.cols {
			if c.identity {
				key = append(key, i)
			}
		}
	}
	idx := key
	b := make([]byte, 0, 32)
	b = append(b, '{')
	for n, i := range idx {
		if n > 0 {
			b = append(b, ',')
		}
		b = append(b, r.cols[i].qname...)
		b = append(b, ':')
		if vals[i] == nil {
			b = append(b, "null"...)
		} else {
			b = append(b, vals[i]...)
		}
	}
	return append(b, '}')
}

// newRelation builds a relation from a Relation message, the column types
// and the primary key column names.
func newRelation(m *pglogrepl.RelationMessage, types []*Type, pk []string) *relation {
	r := &relation{schema: m.Namespace, name: m.RelationName}
	for i, c := range m.Columns {
		r.cols = append(r.cols, column{name: c.Name, qname: appendJSONString(nil, []byte(c.Name)), typ: types[i], identity: c.Flags&1 != 0})
	}
	for _, k := range pk {
		if i := slices.IndexFunc(r.cols, func(c column) bool { return c.name == k }); i >= 0 {
			r.key = append(r.key, i)
		}
	}
	if len(r.key) != len(pk) {
		r.key = nil // a key column is not published: fall back to the identity
	}
	return r
}
