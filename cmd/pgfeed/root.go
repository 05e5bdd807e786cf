package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"
)

// version is pgfeed's version, set at build time with
// -ldflags "-X main.version=v1.2.3".
var version = "dev"

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the command ran and failed (database unreachable, a refused table, ...)
	exitUsage   = 2 // bad command line or bad configuration
)

// usageError is a bad command line: an unknown command or flag, a missing
// argument. It makes pgfeed exit with code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// commandError marks an error returned by a command's own work, as opposed to
// cobra's reading of the command line. It makes pgfeed exit with code 1
// unless it wraps a usageError or configError.
type commandError struct{ err error }

func (e *commandError) Error() string { return e.err.Error() }
func (e *commandError) Unwrap() error { return e.err }

// exitCode maps an error returned by the root command to the exit code.
func exitCode(err error) int {
	var (
		ue *usageError
		ce *configError
		me *commandError
	)
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue), errors.As(err, &ce):
		return exitUsage
	case errors.As(err, &me):
		return exitFailure
	default:
		return exitUsage // cobra's own errors are about the command line
	}
}

// run is pgfeed's main: it runs the command named by args and returns the
// exit code. Command output goes to stdout; errors, as one line each, and
// logs go to stderr. Cancelling ctx (SIGINT/SIGTERM) stops long-running
// commands.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (code int) {
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	a := &app{stdout: stdout, stderr: stderr, log: logger}
	root := a.rootCmd()
	if args == nil {
		args = []string{} // cobra would read os.Args
	}
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	defer func() {
		// The contract promises no stack traces, even for our own bugs.
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "pgfeed: internal error: %s (this is a bug in pgfeed, please report it)\n", oneLine(fmt.Sprint(r)))
			code = exitFailure
		}
	}()
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	msg := oneLine(err.Error())
	var ue *usageError
	var me *commandError
	if !errors.As(err, &ue) && !errors.As(err, &me) {
		// cobra's own complaint about the command line.
		msg += fmt.Sprintf(" (see %q)", cmd.CommandPath()+" --help")
	}
	fmt.Fprintf(stderr, "pgfeed: %s\n", msg)
	return exitCode(err)
}

// app holds what every command shares.
type app struct {
	stdout io.Writer
	stderr io.Writer
	log    *slog.Logger
}

// action adapts a command's work for cobra, marking its errors as the
// command's own (see commandError).
func action(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := fn(cmd, args); err != nil {
			return &commandError{err: err}
		}
		return nil
	}
}

// rootCmd builds a fresh command tree.
func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "pgfeed",
		Short: "pgfeed streams PostgreSQL row changes to clients",
		Long: `pgfeed captures the row changes of chosen PostgreSQL tables and serves them
to clients as a change feed.

Configuration comes from a config file (--config FILE, or ./config.yaml when
present), then PGFEED_* environment variables (PGFEED_DATABASE_URL, ...), then
flags.`,
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.ArbitraryArgs,
		RunE:          unknownSubcommand,
	}
	root.SetVersionTemplate("pgfeed {{.Version}}\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{msg: fmt.Sprintf("%s (see %q)", err, cmd.CommandPath()+" --help")}
	})
	pf := root.PersistentFlags()
	pf.String("config", "", "configuration file (default ./config.yaml when present)")
	pf.String("database-url", "", "PostgreSQL connection URL (overrides database.url and PGFEED_DATABASE_URL)")
	pf.String("listen", "", "HTTP listen address host:port (overrides http.listen and PGFEED_HTTP_LISTEN)")

	root.AddCommand(
		a.serveCmd(),
		a.migrateCmd(),
		a.triggersCmd(),
		a.devCmd(),
		a.benchCmd(),
		a.versionCmd(),
	)
	return root
}

// unknownSubcommand is the RunE of commands that only group subcommands
// (and of the root): reaching it means the subcommand is missing or unknown.
func unknownSubcommand(cmd *cobra.Command, args []string) error {
	var names []string
	for _, c := range cmd.Commands() {
		if c.IsAvailableCommand() && c.Name() != "help" && c.Name() != "completion" {
			names = append(names, c.Name())
		}
	}
	if len(args) == 0 {
		return &usageError{msg: fmt.Sprintf("missing command after %q: one of %s (see %q)", cmd.CommandPath(), strings.Join(names, ", "), cmd.CommandPath()+" --help")}
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2 // what cobra uses for the root
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	} else {
		msg += fmt.Sprintf(" (known commands: %s)", strings.Join(names, ", "))
	}
	return &usageError{msg: msg}
}

// noArgs rejects positional arguments with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return &usageError{msg: fmt.Sprintf("%q takes no arguments, got %q", cmd.CommandPath(), args[0])}
	}
	return nil
}

func (a *app) versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  noArgs,
		RunE: action(func(*cobra.Command, []string) error {
			_, err := fmt.Fprintf(a.stdout, "pgfeed %s\n", version)
			return err
		}),
	}
}

func (a *app) benchCmd() *cobra.Command {
	return a.newBenchCmd()
}

// oneLine folds a possibly multi-line message into one line.
func oneLine(s string) string {
	lines := strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' })
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	var b strings.Builder
	for _, l := range lines {
		switch {
		case l == "":
			continue
		case b.Len() == 0:
		case strings.HasSuffix(b.String(), ":"):
			b.WriteString(" ")
		default:
			b.WriteString("; ")
		}
		b.WriteString(l)
	}
	return b.String()
}
