package subscriptions

import (
	"errors"
	"fmt"
)

// Row is a decoded to_jsonb row: column name to value, as encoding/json
// decodes with UseNumber (json.Number, string, bool, nil, []any,
// map[string]any). A column missing from a Row counts as null.
type Row map[string]any

// DecodeRow decodes a to_jsonb row. Empty input and JSON null give a nil
// Row; anything but an object is an error.
func DecodeRow(raw []byte) (Row, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	v, err := decodeJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("decode row: %w", err)
	}
	switch v := v.(type) {
	case nil:
		return nil, nil
	case map[string]any:
		return Row(v), nil
	}
	return nil, errors.New("decode row: not a JSON object")
}

// Change is one row change, as the index matches it.
type Change struct {
	Table string // schema.table
	Op    string // insert, update, delete or truncate
	New   Row    // nil on delete and truncate
	Old   Row    // nil on insert and truncate
}

// Sub is one subscription as the index sees it. The index reads Table,
// Filter and Events when the Sub is added; change them only by adding the
// Sub again.
type Sub struct {
	Table  string
	Filter Filter // the subscription's own filter, with the policy's ANDed in
	Events Events // the operations wanted; 0 gets nothing (ParseEvents gives AllEvents by default)
	Value  any    // the caller's payload (its subscription object); untouched
}

// Matches reports whether s gets change c: an insert when New matches the
// filter, a delete when Old does, an update when New or Old does (so a row
// leaving the filter is seen leaving), a truncate always; in every case
// only if s's Events hold the operation. A row the change does not carry
// (nil) matches only an empty filter. It is what Index.Match decides for
// one subscription, for callers holding a single one (replay on resume).
func (s *Sub) Matches(c *Change) bool {
	bit := eventOf(c.Op)
	return c.Table == s.Table && s.Events&bit != 0 && matchChange(s.Filter.conds, bit, c)
}

// matchChange applies the delivery rules to a filter's conditions.
func matchChange(conds []cond, bit Events, c *Change) bool {
	switch bit {
	case Insert:
		return matchRow(conds, c.New)
	case Delete:
		return matchRow(conds, c.Old)
	case Update:
		return matchRow(conds, c.New) || matchRow(conds, c.Old)
	case Truncate:
		return true
	}
	return false
}

// matchRow reports whether row satisfies every condition. A nil row (a
// row the change does not carry) satisfies only the empty filter: its
// columns are unknown, not null.
func matchRow(conds []cond, row Row) bool {
	if row == nil {
		return len(conds) == 0
	}
	for i := range conds {
		if !conds[i].match(row) {
			return false
		}
	}
	return true
}
