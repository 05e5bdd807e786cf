package listener

import (
	"context"

	"github.com/jackc/pgx/v5"
)

// Prune runs one pruning pass, for tests.
func (s *Source) Prune(ctx context.Context, conn *pgx.Conn) error { return s.prune(ctx, conn) }

// ExpandLogRow is expandLogRow, for tests.
var ExpandLogRow = expandLogRow

// CanonicalJSON is canonicalJSON, for tests.
var CanonicalJSON = canonicalJSON
