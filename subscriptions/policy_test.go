package subscriptions

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

var policyTables = map[string]*Table{
	"public.orders": {
		Name:    "public.orders",
		Columns: []Column{{"id", "int8"}, {"status", "text"}, {"total", "numeric"}, {"user_id", "text"}, {"org", "int4"}, {"secret", "text"}},
		Key:     []string{"id"},
	},
	"public.notes": {
		Name:    "public.notes",
		Columns: []Column{{"id", "int8"}, {"body", "text"}},
		Key:     []string{"id"},
	},
}

func mustPolicies(t *testing.T, ps []Policy) *Policies {
	t.Helper()
	p, err := CompilePolicies(ps)
	if err != nil {
		t.Fatalf("CompilePolicies: %v", err)
	}
	if err := p.Check(policyTables); err != nil {
		t.Fatalf("Check: %v", err)
	}
	return p
}

func TestAuthorize(t *testing.T) {
	p := mustPolicies(t, []Policy{
		{Table: "public.orders", Roles: []string{"authenticated"}, Filter: "user_id=eq.{claims.sub}", Columns: []string{"id", "status", "total", "user_id"}},
		{Table: "orders", Roles: []string{"admin", "authenticated"}, Filter: "org=in.({claims.app_metadata.org},0)", RLS: true},
		{Table: "public.notes", Roles: []string{"anon"}},
	})
	user := Identity{Role: "authenticated", Claims: map[string]any{"sub": "u1"}}
	admin := Identity{Role: "admin", Claims: map[string]any{"app_metadata": map[string]any{"org": float64(7)}}}
	anon := Identity{Role: "anon"}

	tests := []struct {
		name   string
		id     Identity
		table  string
		filter string   // the grant's filter
		cols   []string // the grant's columns
		rls    bool
		err    string
	}{
		{name: "placeholder", id: user, table: "public.orders", filter: "user_id=eq.u1", cols: []string{"id", "status", "total", "user_id"}},
		{name: "first policy wins", id: Identity{Role: "authenticated", Claims: map[string]any{"sub": "u2", "app_metadata": map[string]any{"org": 1}}}, table: "public.orders", filter: "user_id=eq.u2", cols: []string{"id", "status", "total", "user_id"}},
		{name: "nested claim, number", id: admin, table: "public.orders", filter: "org=in.(7,0)", rls: true},
		{name: "json.Number claim", id: Identity{Role: "admin", Claims: map[string]any{"app_metadata": map[string]any{"org": json.Number("12")}}}, table: "public.orders", filter: "org=in.(12,0)", rls: true},
		{name: "bool claim", id: Identity{Role: "admin", Claims: map[string]any{"app_metadata": map[string]any{"org": true}}}, table: "public.orders", filter: "org=in.(true,0)", rls: true},
		{name: "anon allowed", id: anon, table: "public.notes", filter: ""},
		{name: "bare table name", id: anon, table: "notes", filter: ""},
		{name: "anon denied", id: anon, table: "public.orders", err: `forbidden: role "anon" may not read public.orders`},
		{name: "role not listed", id: Identity{Role: "authenticated"}, table: "public.notes", err: `role "authenticated" may not read public.notes`},
		{name: "no policy", id: user, table: "public.secrets", err: "forbidden: no policy allows reading public.secrets"},
		{name: "missing claim", id: Identity{Role: "authenticated", Claims: map[string]any{}}, table: "public.orders", err: "claim sub is missing from the token"},
		{name: "nil claims", id: Identity{Role: "authenticated"}, table: "public.orders", err: "claim sub is missing"},
		{name: "missing nested claim", id: Identity{Role: "admin", Claims: map[string]any{"app_metadata": map[string]any{}}}, table: "public.orders", err: "claim app_metadata.org is missing"},
		{name: "parent not an object", id: Identity{Role: "admin", Claims: map[string]any{"app_metadata": "x"}}, table: "public.orders", err: "claim app_metadata.org is missing"},
		{name: "empty claim", id: Identity{Role: "authenticated", Claims: map[string]any{"sub": ""}}, table: "public.orders", err: "claim sub is empty"},
		{name: "object claim", id: Identity{Role: "authenticated", Claims: map[string]any{"sub": map[string]any{}}}, table: "public.orders", err: "claim sub is not a string, number or boolean"},
		{name: "null claim", id: Identity{Role: "authenticated", Claims: map[string]any{"sub": nil}}, table: "public.orders", err: "claim sub is not a string, number or boolean"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, err := p.Authorize(tt.id, tt.table)
			if tt.err != "" {
				if err == nil || !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("Authorize error = %v, want ErrForbidden with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Authorize: %v", err)
			}
			if got := g.Filter.String(); got != tt.filter {
				t.Errorf("filter = %q, want %q", got, tt.filter)
			}
			if !reflect.DeepEqual(g.Columns, tt.cols) {
				t.Errorf("columns = %q, want %q", g.Columns, tt.cols)
			}
			if g.RLS != tt.rls {
				t.Errorf("RLS = %v", g.RLS)
			}
		})
	}

	// Substitution does not leak into the compiled policy or other grants.
	g1, _ := p.Authorize(admin, "public.orders")
	g2, _ := p.Authorize(Identity{Role: "admin", Claims: map[string]any{"app_metadata": map[string]any{"org": "3"}}}, "public.orders")
	if g1.Filter.String() != "org=in.(7,0)" || g2.Filter.String() != "org=in.(3,0)" {
		t.Errorf("grants share state: %q, %q", g1.Filter, g2.Filter)
	}
	// A claim holding filter syntax is a value, never grammar.
	g, err := p.Authorize(Identity{Role: "authenticated", Claims: map[string]any{"sub": "x&status=neq.y"}}, "public.orders")
	if err != nil {
		t.Fatal(err)
	}
	if cs := g.Filter.Conditions(); len(cs) != 1 || cs[0].Value != "x&status=neq.y" {
		t.Errorf("claim injected conditions: %#v", cs)
	}
	var none *Policies
	if _, err := none.Authorize(user, "public.orders"); !errors.Is(err, ErrForbidden) {
		t.Errorf("nil Policies authorized: %v", err)
	}
}

func TestGrantApply(t *testing.T) {
	p := mustPolicies(t, []Policy{
		{Table: "public.orders", Roles: []string{"authenticated"}, Filter: "user_id=eq.{claims.sub}", Columns: []string{"id", "status", "total", "user_id"}},
		{Table: "public.notes", Roles: []string{"authenticated"}},
	})
	user := Identity{Role: "authenticated", Claims: map[string]any{"sub": "u1"}}
	g, err := p.Authorize(user, "public.orders")
	if err != nil {
		t.Fatal(err)
	}
	tbl := policyTables["public.orders"]
	sel, _ := ParseSelect("status", tbl)
	f, cols, err := g.Apply(mustFilter(t, "id=eq.42"), sel)
	if err != nil {
		t.Fatal(err)
	}
	if f.String() != "id=eq.42&user_id=eq.u1" || !reflect.DeepEqual(cols, []string{"id", "status"}) {
		t.Errorf("Apply = %q, %q", f, cols)
	}
	_, cols, _ = g.Apply(Filter{}, nil)
	if !reflect.DeepEqual(cols, []string{"id", "status", "total", "user_id"}) {
		t.Errorf("Apply without select: columns %q", cols)
	}
	if _, _, err := g.Apply(mustFilter(t, "secret=eq.x"), nil); !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "column secret may not be read") {
		t.Errorf("filter on a withheld column: %v", err)
	}
	sel, _ = ParseSelect("secret", tbl)
	if _, _, err := g.Apply(Filter{}, sel); !errors.Is(err, ErrForbidden) {
		t.Errorf("select of a withheld column: %v", err)
	}

	// The policy filter ANDed with the subscription's: both must hold.
	s := &Sub{Table: "public.orders", Events: AllEvents}
	s.Filter, _, _ = g.Apply(mustFilter(t, "status=eq.open"), nil)
	for js, want := range map[string]bool{
		`{"id":1,"status":"open","user_id":"u1"}`:   true,
		`{"id":1,"status":"open","user_id":"u2"}`:   false,
		`{"id":1,"status":"closed","user_id":"u1"}`: false,
	} {
		if got := s.Matches(&Change{Table: "public.orders", Op: "insert", New: row(t, js)}); got != want {
			t.Errorf("%s: match = %v, want %v", js, got, want)
		}
	}

	g, _ = p.Authorize(user, "public.notes")
	f, cols, err = g.Apply(mustFilter(t, "body=eq.x"), nil)
	if err != nil || cols != nil || f.String() != "body=eq.x" {
		t.Errorf("Apply with an unrestricted grant = %q, %q, %v", f, cols, err)
	}
}

func TestCompilePoliciesErrors(t *testing.T) {
	tests := []struct {
		p   Policy
		err string
	}{
		{Policy{Table: " ", Roles: []string{"a"}}, "policies[0].table: must name a table"},
		{Policy{Table: "t"}, "policies[0].roles: must name at least one role for table public.t"},
		{Policy{Table: "t", Roles: []string{""}}, "policies[0].roles: empty role name"},
		{Policy{Table: "t", Roles: []string{"a"}, Columns: []string{""}}, "policies[0].columns: empty column name"},
		{Policy{Table: "t", Roles: []string{"a"}, Filter: "user_id=like.x"}, `policies[0].filter: filter "user_id=like.x": unknown operator`},
		{Policy{Table: "t", Roles: []string{"a"}, Filter: "user_id=eq.{claims.sub"}, `unterminated placeholder "{claims.sub"`},
		{Policy{Table: "t", Roles: []string{"a"}, Filter: "user_id=eq.{claims.}"}, `bad placeholder "{claims.}"`},
		{Policy{Table: "t", Roles: []string{"a"}, Filter: "user_id=in.(a,{claims.x..y})"}, `bad placeholder "{claims.x..y}"`},
		{Policy{Table: "t", Roles: []string{"a"}, Filter: "user_id=is.{claims.sub}"}, "is takes null, true or false"},
	}
	for _, tt := range tests {
		_, err := CompilePolicies([]Policy{tt.p})
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("CompilePolicies(%+v) error = %v, want %q", tt.p, err, tt.err)
		}
	}
	// Literal braces that are not placeholders are plain text.
	if _, err := CompilePolicies([]Policy{{Table: "t", Roles: []string{"a"}, Filter: "x=eq.{notaclaim}"}}); err != nil {
		t.Errorf("literal braces: %v", err)
	}
}

func TestPoliciesCheck(t *testing.T) {
	tests := []struct {
		p       Policy
		err     string
		unknown bool
	}{
		{p: Policy{Table: "public.orders", Roles: []string{"a"}, Filter: "org=eq.{claims.org}&status=neq.x&user_id=eq.u-{claims.sub}", Columns: []string{"id", "status"}}},
		{p: Policy{Table: "public.missing", Roles: []string{"a"}}, err: "policies[1].table: public.missing is not a captured table"},
		{p: Policy{Table: "public.orders", Roles: []string{"a"}, Columns: []string{"id", "nope"}}, err: "policies[1].columns: unknown column: table public.orders has no column nope", unknown: true},
		{p: Policy{Table: "public.orders", Roles: []string{"a"}, Columns: []string{"status"}}, err: "policies[1].columns: must include id, a key column of public.orders"},
		{p: Policy{Table: "public.orders", Roles: []string{"a"}, Filter: "nope=eq.1"}, err: `policies[1].filter: filter "nope=eq.1": table public.orders has no column nope`, unknown: true},
		{p: Policy{Table: "public.orders", Roles: []string{"a"}, Filter: "org=eq.x"}, err: `policies[1].filter: filter "org=eq.x": org is int4, "x" is not a number`},
	}
	for _, tt := range tests {
		p, err := CompilePolicies([]Policy{{Table: "notes", Roles: []string{"anon"}}, tt.p})
		if err != nil {
			t.Fatalf("CompilePolicies: %v", err)
		}
		err = p.Check(policyTables)
		if tt.err == "" {
			if err != nil {
				t.Errorf("Check(%+v): %v", tt.p, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("Check(%+v) error = %v, want %q", tt.p, err, tt.err)
		}
		if errors.Is(err, ErrUnknownColumn) != tt.unknown {
			t.Errorf("Check(%+v): errors.Is(ErrUnknownColumn) = %v", tt.p, !tt.unknown)
		}
	}
}
