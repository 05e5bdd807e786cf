// Package bench is pgfeed's benchmark suite for the live feed. Each bench
// measures a real pgfeed server, run as a separate process (`pgfeed serve`,
// so that its memory and CPU are its own), fed by a real PostgreSQL, with
// real WebSocket clients over loopback:
//
//   - Latency: end-to-end latency from COMMIT to client receipt, with
//     subscribers that each subscribe to the whole table while a paced
//     writer commits single-row INSERT transactions (defaults: 1,000
//     changes/s, 100 subscribers, 20 s after a 5 s warm-up).
//   - Fanout: the same measurement at many subscribers (defaults: 10,000
//     subscribers at 100 changes/s, a target of 1,000,000 deliveries/s),
//     reporting deliveries per second and slow-consumer cut-offs.
//   - Idle: the server's resident memory per idle WebSocket connection with
//     one subscription each (default 10,000 connections).
//
// Every run prepares its own database (a throwaway one from internal/pgtemp
// unless Options.DatabaseURL names one): pgfeed's migrations, the table
// public.bench_events, capture on it. It then starts the server with a
// generated configuration on a free loopback port, waits for /readyz, runs
// the load, stops the server with SIGTERM while its clients are still
// connected (it must exit 0 within 10 s) and removes everything it created.
//
// Latency and Fanout can measure Centrifugo instead (Options.Centrifugo),
// fed by a trigger through its PostgreSQL outbox consumer, with the same
// writer, subscribers and analysis: a peer's figures taken on the same
// machine, beside pgfeed's.
//
// Method of the live benches: row ids are 1, 2, 3, ... A writer process
// (the same binary, `pgfeed bench writer`, see RunWriter) hands ids out at
// the target rate (a ticker, catching up when ticks are late) to writer
// goroutines, each with its own connection, and reports for each id the
// wall-clock time just before its INSERT was sent and right after its
// COMMIT returned. Each subscriber records the wall-clock time it received
// each id; latency = receipt - commit return, both read from the same
// machine clock. The writer runs in its own process because in the
// subscribers' process thousands of runnable reader goroutines delay the
// writers' clock readings by milliseconds.
//
// Every subscriber must receive every committed id exactly once. A missing
// change is "lost" when the subscriber received a change whose INSERT was
// sent after the missing one's COMMIT returned (changes arrive in commit
// order with no gap), and "undelivered" otherwise (still queued when the
// run ended). Losses, undelivered changes, duplicates, ids never committed,
// subscribers cut off by the server, a crash, a /readyz that stops
// answering and an unclean shutdown are all reported in Problems, never
// hidden.
//
// Goroutines: a bench starts one reader goroutine per WebSocket connection,
// a waiter for each child process (server, writer) that also reads the
// writer's output, and a /readyz prober; it waits for all of them before
// returning. A reader is the only writer of its subscriber's receipt table,
// the writer's waiter the only writer of the commit table; both are read
// by the analysis only after those goroutines have ended.
//
// The package is Linux-only: it reads /proc for memory and CPU and raises
// RLIMIT_NOFILE for its many connections (the server process inherits the
// raised limit).
package bench
