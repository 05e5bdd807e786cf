package subscriptions

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// ErrForbidden is wrapped by the errors of Authorize and Grant.Apply: the
// identity may not read the table, the column, or the token lacks a claim a
// policy needs.
var ErrForbidden = errors.New("forbidden")

// Policy allows some roles to read one table (one entry of the policies
// configuration).
type Policy struct {
	Table   string   // schema.table; public when no schema is given
	Roles   []string // values of the token's role claim; "anon" for no token
	Filter  string   // ANDed with every subscription's filter; may hold {claims.path} placeholders
	Columns []string // the only columns that leave the server; nil or empty: all
	RLS     bool     // let PostgreSQL's row-level security decide, as the subscriber
}

// Identity is who subscribes: the token's role and claims.
type Identity struct {
	Role   string         // "anon" when there is no token
	Claims map[string]any // the token's claims, as decoded JSON
}

// Grant is what a policy allows one identity on one table.
type Grant struct {
	Filter  Filter   // ANDed with the subscription's filter, placeholders substituted
	Columns []string // the columns that may be sent; nil: all
	RLS     bool     // row-level security must also allow each row
}

// Policies are compiled policies, ready to authorize identities. They are
// immutable and safe for concurrent use.
type Policies struct {
	list    []*policy
	byTable map[string][]*policy // in configuration order
}

type policy struct {
	index   int
	table   string
	roles   []string
	filter  Filter
	holes   []hole // the filter's values with placeholders
	columns []string
	rls     bool
}

// hole is a filter value that holds placeholders.
type hole struct {
	cond  int // index in filter.conds
	item  int // index in the cond's in list; -1 for its value
	parts []part
}

// part is a piece of a value with placeholders: literal text, or a claim.
type part struct {
	text  string   // the literal text, or the placeholder's path ("app_metadata.org")
	claim []string // the claim's path; nil for literal text
}

const placeholderPrefix = "{claims."

// CompilePolicies parses the policies' filters and checks their syntax. A
// filter value may hold placeholders {claims.path}, a path of claim names
// separated by dots ({claims.sub}, {claims.app_metadata.org}), replaced by
// Authorize with the identity's claims.
func CompilePolicies(ps []Policy) (*Policies, error) {
	p := &Policies{byTable: make(map[string][]*policy)}
	for i, in := range ps {
		where := fmt.Sprintf("policies[%d]", i)
		table := normalizeTable(in.Table)
		if table == "" {
			return nil, fmt.Errorf("%s.table: must name a table (schema.table)", where)
		}
		if len(in.Roles) == 0 {
			return nil, fmt.Errorf("%s.roles: must name at least one role for table %s", where, table)
		}
		for _, r := range in.Roles {
			if r == "" {
				return nil, fmt.Errorf("%s.roles: empty role name", where)
			}
		}
		for _, c := range in.Columns {
			if c == "" {
				return nil, fmt.Errorf("%s.columns: empty column name", where)
			}
		}
		f, err := ParseFilter(in.Filter)
		if err != nil {
			return nil, fmt.Errorf("%s.filter: %w", where, err)
		}
		pol := &policy{index: i, table: table, roles: slices.Clone(in.Roles), filter: f, rls: in.RLS}
		if len(in.Columns) > 0 {
			pol.columns = slices.Clone(in.Columns)
		}
		for ci := range f.conds {
			c := &f.conds[ci]
			if c.op == opIn {
				for j := range c.list {
					if err := pol.addHole(ci, j, c); err != nil {
						return nil, fmt.Errorf("%s.filter: %w", where, err)
					}
				}
			} else if err := pol.addHole(ci, -1, c); err != nil {
				return nil, fmt.Errorf("%s.filter: %w", where, err)
			}
		}
		p.list = append(p.list, pol)
		p.byTable[table] = append(p.byTable[table], pol)
	}
	return p, nil
}

// normalizeTable returns schema.table, with public for a bare name.
func normalizeTable(t string) string {
	t = strings.TrimSpace(t)
	if t != "" && !strings.Contains(t, ".") {
		t = "public." + t
	}
	return t
}

// addHole records the placeholders of one value of condition c, if any.
func (p *policy) addHole(ci, item int, c *cond) error {
	raw := c.v.raw
	if item >= 0 {
		raw = c.list[item].raw
	}
	parts, err := splitPlaceholders(raw)
	if err != nil {
		return badCond(c.text(), "%v", err)
	}
	if parts != nil {
		p.holes = append(p.holes, hole{cond: ci, item: item, parts: parts})
	}
	return nil
}

// splitPlaceholders splits s into literal text and placeholders; nil when
// s holds none.
func splitPlaceholders(s string) ([]part, error) {
	if !strings.Contains(s, placeholderPrefix) {
		return nil, nil
	}
	var parts []part
	for s != "" {
		i := strings.Index(s, placeholderPrefix)
		if i < 0 {
			parts = append(parts, part{text: s})
			break
		}
		if i > 0 {
			parts = append(parts, part{text: s[:i]})
		}
		rest := s[i+len(placeholderPrefix):]
		j := strings.IndexByte(rest, '}')
		if j < 0 {
			return nil, fmt.Errorf("unterminated placeholder %q (want {claims.name})", s[i:])
		}
		path := rest[:j]
		names := strings.Split(path, ".")
		if slices.Contains(names, "") {
			return nil, fmt.Errorf("bad placeholder %q (want {claims.name} or {claims.name.name})", s[i:i+len(placeholderPrefix)+j+1])
		}
		parts = append(parts, part{text: path, claim: names})
		s = rest[j+1:]
	}
	return parts, nil
}

// Check checks the policies against the captured tables: each policy's
// table exists, and so do its columns and its filter's columns (values
// with placeholders are checked once substituted: one that does not fit
// its column then never matches). Columns must include the table's key,
// since the key is always sent. Errors name the policy as
// policies[i].field.
func (p *Policies) Check(tables map[string]*Table) error {
	for _, pol := range p.list {
		where := fmt.Sprintf("policies[%d]", pol.index)
		t := tables[pol.table]
		if t == nil {
			return fmt.Errorf("%s.table: %s is not a captured table", where, pol.table)
		}
		for _, c := range pol.columns {
			if t.column(c) == nil {
				return fmt.Errorf("%s.columns: %w: table %s has no column %s", where, ErrUnknownColumn, t.Name, c)
			}
		}
		if pol.columns != nil {
			for _, k := range t.Key {
				if !slices.Contains(pol.columns, k) {
					return fmt.Errorf("%s.columns: must include %s, a key column of %s (the key is always sent)", where, k, t.Name)
				}
			}
		}
		holey := func(raw string) bool { return strings.Contains(raw, placeholderPrefix) }
		if err := pol.filter.check(t, holey); err != nil {
			return fmt.Errorf("%s.filter: %w", where, err)
		}
	}
	return nil
}

// Authorize returns what id may read of table. Default deny: when no
// policy for the table lists id.Role, the error wraps ErrForbidden. When
// several do, the first in configuration order wins. The policy's
// placeholders are replaced with id's claims (strings, numbers and
// booleans); a claim that is missing, empty or of another kind denies too
// (ErrForbidden, naming the claim), so a placeholder can never match every
// row.
func (p *Policies) Authorize(id Identity, table string) (Grant, error) {
	table = normalizeTable(table)
	if p == nil || len(p.byTable[table]) == 0 {
		return Grant{}, fmt.Errorf("%w: no policy allows reading %s", ErrForbidden, table)
	}
	for _, pol := range p.byTable[table] {
		if slices.Contains(pol.roles, id.Role) {
			f, err := pol.substitute(id.Claims)
			if err != nil {
				return Grant{}, fmt.Errorf("%w: policies[%d] for %s: %v", ErrForbidden, pol.index, table, err)
			}
			return Grant{Filter: f, Columns: slices.Clone(pol.columns), RLS: pol.rls}, nil
		}
	}
	return Grant{}, fmt.Errorf("%w: role %q may not read %s", ErrForbidden, id.Role, table)
}

// substitute returns the policy's filter with its placeholders replaced.
func (p *policy) substitute(claims map[string]any) (Filter, error) {
	if len(p.holes) == 0 {
		return p.filter, nil
	}
	conds := slices.Clone(p.filter.conds)
	cloned := make(map[int]bool)
	for _, h := range p.holes {
		var b strings.Builder
		for _, pt := range h.parts {
			if pt.claim == nil {
				b.WriteString(pt.text)
				continue
			}
			v, err := claimText(claims, pt.claim)
			if err != nil {
				return Filter{}, fmt.Errorf("claim %s %v", pt.text, err)
			}
			b.WriteString(v)
		}
		c := &conds[h.cond]
		if h.item < 0 {
			c.v = newOperand(b.String())
			continue
		}
		if !cloned[h.cond] {
			c.list = slices.Clone(c.list)
			cloned[h.cond] = true
		}
		c.list[h.item] = newOperand(b.String())
	}
	return Filter{conds: conds}, nil
}

// claimText returns the claim at path as text.
func claimText(claims map[string]any, path []string) (string, error) {
	var v any = claims
	for _, name := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return "", errors.New("is missing from the token")
		}
		if v, ok = m[name]; !ok {
			return "", errors.New("is missing from the token")
		}
	}
	var s string
	switch v := v.(type) {
	case string:
		s = v
	case bool:
		s = strconv.FormatBool(v)
	case float64:
		if math.IsInf(v, 0) || math.IsNaN(v) {
			return "", errors.New("is not a finite number")
		}
		s = strconv.FormatFloat(v, 'f', -1, 64)
	case json.Number:
		s = string(v)
	default:
		n, ok := numberText(v)
		if !ok {
			return "", errors.New("is not a string, number or boolean")
		}
		s = n
	}
	if s == "" {
		return "", errors.New("is empty")
	}
	return s, nil
}

// Apply combines a subscription's filter and select list (nil: all
// columns) with the grant: the filter to index (the subscription's
// conditions, then the policy's) and the columns to send (nil: all). When
// the grant limits columns, the subscription may neither select nor filter
// on others (that would reveal them): the error wraps ErrForbidden.
func (g Grant) Apply(f Filter, sel []string) (Filter, []string, error) {
	cols := sel
	if g.Columns != nil {
		for i := range f.conds {
			if c := &f.conds[i]; !slices.Contains(g.Columns, c.col) {
				return Filter{}, nil, fmt.Errorf("%w: filter %q: column %s may not be read", ErrForbidden, c.text(), c.col)
			}
		}
		for _, c := range sel {
			if !slices.Contains(g.Columns, c) {
				return Filter{}, nil, fmt.Errorf("%w: select: column %s may not be read", ErrForbidden, c)
			}
		}
		if sel == nil {
			cols = slices.Clone(g.Columns)
		}
	}
	return f.And(g.Filter), cols, nil
}
