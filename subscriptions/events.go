package subscriptions

import (
	"errors"
	"fmt"
	"strings"
)

// Events is a set of change operations a subscription wants.
type Events uint8

// The operations, as bits of Events.
const (
	Insert Events = 1 << iota
	Update
	Delete
	Truncate

	AllEvents = Insert | Update | Delete | Truncate
)

var eventNames = [...]struct {
	e    Events
	name string
}{{Insert, "insert"}, {Update, "update"}, {Delete, "delete"}, {Truncate, "truncate"}}

// ErrBadEvents is wrapped by ParseEvents' errors.
var ErrBadEvents = errors.New("bad events")

// eventOf returns the bit of an operation name, 0 for an unknown one.
func eventOf(op string) Events {
	for _, n := range eventNames {
		if n.name == op {
			return n.e
		}
	}
	return 0
}

// ParseEvents reads a set of operations: insert, update, delete, truncate.
// An element may itself be a comma-separated list (as in the SSE query
// parameter events=insert,update); blanks around names and empty names are
// ignored. No name at all means every operation.
func ParseEvents(names []string) (Events, error) {
	var e Events
	for _, list := range names {
		for name := range strings.SplitSeq(list, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				continue
			}
			bit := eventOf(name)
			if bit == 0 {
				return 0, fmt.Errorf("%w: unknown event %q (want insert, update, delete or truncate)", ErrBadEvents, name)
			}
			e |= bit
		}
	}
	if e == 0 {
		return AllEvents, nil
	}
	return e, nil
}

// Has reports whether e holds the operation named op.
func (e Events) Has(op string) bool {
	bit := eventOf(op)
	return bit != 0 && e&bit != 0
}

// String lists the operations of e, comma-separated.
func (e Events) String() string {
	var names []string
	for _, n := range eventNames {
		if e&n.e != 0 {
			names = append(names, n.name)
		}
	}
	return strings.Join(names, ",")
}

// ParseSelect reads a select list, "id,status": the columns of t to send.
// Blanks around names and empty names are ignored; "" and "*" mean every
// column (nil). The key columns are always added. The columns are returned
// once each, in table order. A column t lacks is an error wrapping
// ErrUnknownColumn.
func ParseSelect(s string, t *Table) ([]string, error) {
	if strings.TrimSpace(s) == "" || strings.TrimSpace(s) == "*" {
		return nil, nil
	}
	want := make(map[string]bool)
	for name := range strings.SplitSeq(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if t.column(name) == nil {
			return nil, fmt.Errorf("select %q: %w: table %s has no column %s", s, ErrUnknownColumn, t.Name, name)
		}
		want[name] = true
	}
	if len(want) == 0 {
		return nil, nil
	}
	for _, k := range t.Key {
		want[k] = true
	}
	cols := make([]string, 0, len(want))
	for _, c := range t.Columns {
		if want[c.Name] {
			cols = append(cols, c.Name)
		}
	}
	return cols, nil
}

// Project returns row with only the columns cols; nil cols returns row
// itself. It never modifies row.
func Project(row Row, cols []string) Row {
	if cols == nil || row == nil {
		return row
	}
	out := make(Row, len(cols))
	for _, c := range cols {
		if v, ok := row[c]; ok {
			out[c] = v
		}
	}
	return out
}
