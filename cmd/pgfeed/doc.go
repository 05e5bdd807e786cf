// Command pgfeed is the pgfeed binary: it reads the configuration and runs
// one command (serve, migrate, triggers, dev, bench, version).
//
// This package owns the command line and the configuration. The
// configuration is resolved by loadConfig, with one viper instance per call,
// from the config file (--config FILE, or ./config.yaml when present), then
// the PGFEED_* environment variables, then the --database-url and --listen
// flags, and is validated into a Config before any command touches the
// database; unknown keys are rejected. The other packages never see viper:
// they take plain values from Config.
//
// main only builds a signal-cancelled context and calls run, which holds
// everything else and returns the exit code, so that the commands run
// in-process in the tests. Exit codes: 0 success, 1 the command failed at
// run time (database unreachable, a table refused), 2 bad command line or
// bad configuration. Every error is printed to stderr as one line starting
// with "pgfeed: "; command output goes to stdout; logs go to stderr through
// one slog.Logger built in run.
//
// Lifecycle: every command runs in the calling goroutine and starts no
// goroutine of its own. pgfeed dev, when it starts a throwaway PostgreSQL,
// blocks until the context is cancelled (SIGINT/SIGTERM) and then stops and
// removes the server before returning.
package main
