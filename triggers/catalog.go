package triggers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfeed/pgfeed/subscriptions"
)

// Catalog describes captured tables for subscriptions: their columns, types
// and key. Descriptions are cached for TTL, so a column added to a table is
// subscribable at most TTL later. Safe for concurrent use.
type Catalog struct {
	db  DB
	ttl time.Duration
	// publication, when set, makes a table captured when it is in this
	// publication (the logical source) rather than when it has pgfeed's
	// triggers.
	publication string

	mu    sync.Mutex
	cache map[string]cached // guarded by mu
}

type cached struct {
	table *subscriptions.Table
	err   error
	at    time.Time
}

// NewCatalog returns a Catalog reading db. A zero ttl means 5 s.
func NewCatalog(db DB, ttl time.Duration) *Catalog {
	if ttl <= 0 {
		ttl = 5 * time.Second
	}
	return &Catalog{db: db, ttl: ttl, cache: make(map[string]cached)}
}

// NewPublicationCatalog is NewCatalog for the logical source: the captured
// tables are those of the publication.
func NewPublicationCatalog(db DB, publication string, ttl time.Duration) *Catalog {
	c := NewCatalog(db, ttl)
	c.publication = Publication{Name: publication}.name()
	return c
}

// Table describes the captured table named "schema.table" as events name it
// (unquoted; the schema is everything before the first dot). A table that
// does not exist or is not captured gives an error wrapping
// subscriptions.ErrUnknownTable.
func (c *Catalog) Table(ctx context.Context, name string) (*subscriptions.Table, error) {
	c.mu.Lock()
	e, ok := c.cache[name]
	c.mu.Unlock()
	if ok && time.Since(e.at) < c.ttl {
		return e.table, e.err
	}
	t, err := c.describe(ctx, name)
	if err != nil && !errors.Is(err, subscriptions.ErrUnknownTable) {
		return nil, err // not cached: the database may be back soon
	}
	c.mu.Lock()
	c.cache[name] = cached{table: t, err: err, at: time.Now()}
	c.mu.Unlock()
	return t, err
}

func (c *Catalog) describe(ctx context.Context, name string) (*subscriptions.Table, error) {
	schema, rel, ok := strings.Cut(name, ".")
	if !ok {
		return nil, fmt.Errorf("table %q: %w", name, subscriptions.ErrUnknownTable)
	}
	var oid uint32
	err := c.db.QueryRow(ctx, `
		SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		 WHERE n.nspname = $1 AND c.relname = $2
		   AND CASE WHEN $3 = '' THEN EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = 'pgfeed_capture_insert')
		            ELSE EXISTS (SELECT 1 FROM pg_publication_tables t WHERE t.pubname = $3 AND t.schemaname = n.nspname AND t.tablename = c.relname) END`,
		schema, rel, c.publication).Scan(&oid)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("table %q: %w", name, subscriptions.ErrUnknownTable)
	}
	if err != nil {
		return nil, fmt.Errorf("describe table %q: %w", name, err)
	}
	rows, err := c.db.Query(ctx, `
		SELECT a.attname, t.typname,
		       coalesce(a.attnum = ANY (i.indkey::int2[]), false),
		       coalesce(array_position(i.indkey::int2[], a.attnum), 0)
		  FROM pg_attribute a
		  JOIN pg_type t ON t.oid = a.atttypid
		  LEFT JOIN pg_index i ON i.indrelid = a.attrelid AND i.indisprimary
		 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
		 ORDER BY a.attnum`, oid)
	if err != nil {
		return nil, fmt.Errorf("describe table %q: %w", name, err)
	}
	t := &subscriptions.Table{Name: name}
	keyPos := map[string]int{}
	for rows.Next() {
		var col subscriptions.Column
		var isKey bool
		var pos int
		if err := rows.Scan(&col.Name, &col.Type, &isKey, &pos); err != nil {
			rows.Close()
			return nil, fmt.Errorf("describe table %q: %w", name, err)
		}
		t.Columns = append(t.Columns, col)
		if isKey {
			keyPos[col.Name] = pos
			t.Key = append(t.Key, col.Name)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("describe table %q: %w", name, err)
	}
	// Key columns in key order.
	for i := 1; i < len(t.Key); i++ {
		for j := i; j > 0 && keyPos[t.Key[j]] < keyPos[t.Key[j-1]]; j-- {
			t.Key[j], t.Key[j-1] = t.Key[j-1], t.Key[j]
		}
	}
	return t, nil
}
