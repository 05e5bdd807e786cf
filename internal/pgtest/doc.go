// Package pgtest gives each test its own fresh PostgreSQL database.
//
// One throwaway server (internal/pgtemp) is started per test binary, on the
// first call to NewDB, and stopped by Main after the tests have run. When
// PGFEED_TEST_DATABASE_URL is set, that server is used instead and nothing is
// started. Each NewDB creates a new database and drops it when the test ends.
//
// Lifecycle: the server is owned by the test binary: Main stops it after
// m.Run. Databases are owned by the tests that create them and dropped in
// their cleanup (WITH (FORCE), so a leftover connection cannot keep one).
// Replication slots are global to the server and block DROP DATABASE:
// Slot names one per test and drops it in a cleanup that runs before the
// database's (it waits, up to 30 s, for the process streaming from it to
// let it go).
package pgtest
