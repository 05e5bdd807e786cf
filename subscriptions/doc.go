// Package subscriptions owns what a client asks for and what it may see:
// the PostgREST-style filter grammar (ParseFilter, FilterFromQuery), the
// events and select lists (ParseEvents, ParseSelect, Project), policies and
// authorization from token claims (CompilePolicies, Policies.Authorize),
// and the index that maps a change to the subscriptions it matches without
// scanning all of them (Index).
//
// It is in-memory logic: no goroutines, no package-level mutable state,
// and no I/O except the opt-in row-level security check (RLS.Visible),
// which reads the row as the subscriber; a Grant says when it is required,
// and the caller batches it per group of subscribers (GroupKey).
//
// # Filters
//
// A filter is column=op.value conditions joined by '&', all of which must
// hold; ops are eq neq lt lte gt gte in is. Values are compared by the
// kind of the row's JSON value, as to_jsonb renders it: numbers exactly as
// decimals (9007199254740993 differs from 9007199254740992, 0.1 is 0.1),
// strings as text in byte order (timestamps too: compare them in the form
// the server renders), booleans with false < true, JSON objects and
// arrays by canonical JSON text (eq and neq only). A value of another kind
// than the row's (eq.open against a number) never matches. Null follows
// SQL: only is.null matches it (a missing column is null), so neq.x does
// not match null. Filter.Check validates a filter against a table's
// columns and types at subscribe time.
//
// # Delivery rules
//
// An insert goes to a subscription when its new row matches, a delete when
// its old row matches, an update when the new or the old row matches (a row
// leaving the filter is seen leaving), a truncate to every subscription on
// the table; always only when the subscription's Events hold the
// operation. A row the change does not carry matches only the empty filter.
//
// # Concurrency
//
// Filters, Policies and Grants are immutable once built and safe to share.
// Index has one lock, Index.mu (a sync.RWMutex): Add and Remove hold it
// for writing, Match and Len for reading. Match calls its callback with the
// read lock held, so the callback must not call Add or Remove and should
// not block. There is no other lock, hence no lock order.
//
// # Invariants
//
//   - A subscription gets a change at most once: Index.Match calls its
//     callback once per matching subscription, even when the new and old
//     rows both lead to it.
//   - Index.Match delivers exactly what Sub.Matches decides, and costs in
//     proportion to the candidate subscriptions (those filed under the
//     change's values, plus the table's subscriptions without eq or in),
//     not to all subscriptions.
//   - Default deny: a table with no policy listing the identity's role is
//     forbidden, and a policy placeholder whose claim is missing or empty
//     denies rather than matching every row.
//   - The filter and select list never reveal a column a policy withholds
//     (Grant.Apply refuses them).
package subscriptions
