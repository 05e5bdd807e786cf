package subscriptions

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// RLS asks PostgreSQL whether a subscriber may see a row, for policies
// with rls: true: it reads the row by its key as the subscriber would
// through PostgREST (SET LOCAL ROLE to the role claim, request.jwt.claims
// set to the claims), in a read-only transaction with a time limit, so the
// table's row-level security policies decide. This is the one place where
// this package does I/O; callers batch it per (role, claims) group.
type RLS struct {
	// Pool runs the checks; its size bounds how many run at once.
	Pool *pgxpool.Pool
	// Timeout bounds one check. Zero: 2 s.
	Timeout time.Duration

	mu      sync.Mutex
	queries map[string]string // guarded by mu: table -> its visibility query
}

// GroupKey identifies the subscribers that see the same rows under RLS: the
// same role and the same claims, leaving out the claims that differ from
// one token of a user to the next (exp, iat, nbf, jti, auth_time), so that
// a user's refreshed token and their other sessions share one group. An
// RLS policy must not depend on those.
func GroupKey(id Identity) string {
	claims := make(map[string]any, len(id.Claims))
	for k, v := range id.Claims {
		switch k {
		case "exp", "iat", "nbf", "jti", "auth_time":
		default:
			claims[k] = v
		}
	}
	b, _ := json.Marshal(claims) // map keys are sorted: canonical
	return id.Role + "\x00" + string(b)
}

// Visible reports, for each key (a JSON object of t's key columns), whether
// that row of t is visible to id: one query for all of them. An error means
// the check failed (a policy that raises, a missing privilege, a timeout);
// the caller must treat the rows as not visible.
func (r *RLS) Visible(ctx context.Context, id Identity, t *Table, keys [][]byte) ([]bool, error) {
	timeout := r.Timeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	claims, err := json.Marshal(id.Claims)
	if err != nil {
		return nil, fmt.Errorf("rls: claims: %w", err)
	}
	query, err := r.query(t)
	if err != nil {
		return nil, err
	}
	args := make([]string, len(keys))
	for i, k := range keys {
		args[i] = string(k)
	}
	var visible []bool
	err = pgx.BeginTxFunc(ctx, r.Pool, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		// The role comes from a policy's roles list (Authorize checked the
		// claim against it), and is quoted as an identifier all the same.
		b.Queue("SET LOCAL ROLE " + pgx.Identifier{id.Role}.Sanitize())
		b.Queue(`SELECT set_config('request.jwt.claims', $1, true), set_config('statement_timeout', $2, true)`,
			string(claims), fmt.Sprintf("%dms", timeout.Milliseconds()))
		b.Queue(query, args).QueryRow(func(row pgx.Row) error { return row.Scan(&visible) })
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return nil, fmt.Errorf("rls check on %s as role %q: %w", t.Name, id.Role, err)
	}
	if len(visible) != len(keys) {
		return nil, fmt.Errorf("rls check on %s: %d answers for %d rows", t.Name, len(visible), len(keys))
	}
	return visible, nil
}

// query builds (once per table) the statement that reads rows by key: each
// key's JSON is turned into the table's row type, so the comparison uses
// the columns' own types and the primary key index; the answer is one
// boolean per key, in order.
func (r *RLS) query(t *Table) (string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if q, ok := r.queries[t.Name]; ok {
		return q, nil
	}
	schema, name, ok := strings.Cut(t.Name, ".")
	if !ok || len(t.Key) == 0 {
		return "", fmt.Errorf("rls: table %q has no schema or no key", t.Name)
	}
	tbl := pgx.Identifier{schema, name}.Sanitize()
	conds := make([]string, len(t.Key))
	for i, k := range t.Key {
		col := pgx.Identifier{k}.Sanitize()
		conds[i] = "t." + col + " = k." + col
	}
	q := "SELECT coalesce(array_agg((SELECT EXISTS (SELECT 1 FROM " + tbl + " t, jsonb_populate_record(NULL::" + tbl + ", x.j) k WHERE " +
		strings.Join(conds, " AND ") + ")) ORDER BY x.n), '{}') FROM unnest($1::jsonb[]) WITH ORDINALITY AS x(j, n)"
	if r.queries == nil {
		r.queries = map[string]string{}
	}
	r.queries[t.Name] = q
	return q, nil
}
