// Package pgtemp starts and stops a throwaway PostgreSQL server from the
// binaries installed on the machine. It is used by the test suites (through
// internal/pgtest) and by `pgfeed dev`.
//
// A Server owns one postgres child process, a temporary directory holding its
// data directory and Unix socket, and a free loopback TCP port. The server is
// configured for change capture (wal_level=logical) and for speed over
// durability (fsync=off): it exists only for tests and demos.
//
// PostgreSQL refuses to run as root. When the calling process is root, initdb
// and postgres run as the "postgres" system user and the temporary directory is
// handed to that user.
//
// Lifecycle: Start returns a running, connectable server; Stop (idempotent)
// asks postgres for a fast shutdown, waits for it and removes the directory.
// The child is started with a parent-death signal, so a crashed test binary
// does not leave a server behind.
package pgtemp
