package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pgfeed/pgfeed/internal/bench"
)

// newBenchCmd is `pgfeed bench`: the benchmark suite of the live feed.
func (a *app) newBenchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Run the benchmark suite against a real server and PostgreSQL",
		Long: `bench measures the live feed: it runs "pgfeed serve" (this binary) as a
separate process on a free loopback port, with real WebSocket clients and a
real PostgreSQL, and prints human-readable results followed by one JSON line.

Without --database-url, a throwaway PostgreSQL is started from the server
binaries on PATH (or under /usr/lib/postgresql/*/bin) and removed afterwards.
With --database-url, the bench installs pgfeed's schema there, (re)creates
the table public.bench_events and drops it at the end. database.url from a
config file or PGFEED_DATABASE_URL is not used: only the flag points the
bench at a database.

The exit code is 1 when the run observed a problem (a lost or duplicated
change, a subscriber cut off, an unclean server shutdown, ...).`,
		Args: cobra.ArbitraryArgs,
		RunE: unknownSubcommand,
	}
	cmd.AddCommand(
		a.benchLiveCmd("latency", "End-to-end latency from COMMIT to WebSocket receipt",
			"latency measures the time from a single-row INSERT's COMMIT returning to its\nreceipt by each WebSocket subscriber (each subscribed to the whole table),\nat a paced write rate: p50/p90/p99/max, the achieved write rate, and that\nevery subscriber received every change exactly once.",
			100, 1000, bench.Latency),
		a.benchLiveCmd("fanout", "Deliveries per second with many WebSocket subscribers",
			"fanout measures deliveries per second and latency with many WebSocket\nsubscribers on one table, and whether the server cut any of them off as a\nslow consumer.",
			10_000, 100, bench.Fanout),
		a.benchIdleCmd(),
		a.benchWriterCmd(),
	)
	return cmd
}

type liveBench func(ctx context.Context, o bench.Options) (*bench.LiveReport, error)

func (a *app) benchLiveCmd(name, short, long string, subs, rate int, run liveBench) *cobra.Command {
	var o bench.Options
	cmd := &cobra.Command{
		Use:   name,
		Short: short,
		Long:  long,
		Args:  noArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			if err := benchCommon(cmd, &o, a.stdout); err != nil {
				return err
			}
			rep, err := run(cmd.Context(), o)
			if err != nil {
				return fmt.Errorf("bench %s: %w", name, err)
			}
			rep.WriteText(a.stdout)
			return a.benchResult(name, rep, rep.Problems)
		}),
	}
	f := cmd.Flags()
	f.IntVar(&o.Subscribers, "subscribers", subs, "WebSocket subscribers, each subscribed to the whole table")
	f.IntVar(&o.Rate, "rate", rate, "changes (single-row INSERT transactions) per second")
	f.DurationVar(&o.Duration, "duration", 20*time.Second, "measured window")
	f.DurationVar(&o.Warmup, "warmup", 5*time.Second, "changes flowing before the measured window")
	f.IntVar(&o.Writers, "writers", 4, "writer connections committing the changes")
	f.DurationVar(&o.Drain, "drain", 30*time.Second, "longest wait, after the last commit, for deliveries still on their way")
	f.IntVar(&o.Dialers, "dialers", 64, "connections opened concurrently")
	f.StringArray("set", nil, "a configuration value for the server under test, KEY=VALUE (e.g. trigger.notify_below=0); repeatable")
	f.String("server", "", "another pgfeed binary to run as the server under test, to compare builds with the same clients (default: this one)")
	f.String("centrifugo", "", "a Centrifugo binary to measure instead of pgfeed, fed through its PostgreSQL outbox, with the same writer and clients")
	return cmd
}

func (a *app) benchIdleCmd() *cobra.Command {
	var o bench.Options
	cmd := &cobra.Command{
		Use:   "idle",
		Short: "Server memory per idle WebSocket connection",
		Long: `idle measures the server's resident memory per idle WebSocket connection,
each with one subscription to the whole table and no changes flowing:
(VmRSS after - VmRSS before) / connections, read from /proc/<pid>/status,
each sample taken after the server was left alone for --settle.`,
		Args: noArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			if err := benchCommon(cmd, &o, a.stdout); err != nil {
				return err
			}
			rep, err := bench.Idle(cmd.Context(), o)
			if err != nil {
				return fmt.Errorf("bench idle: %w", err)
			}
			rep.WriteText(a.stdout)
			return a.benchResult("idle", rep, rep.Problems)
		}),
	}
	f := cmd.Flags()
	f.IntVar(&o.Connections, "connections", 10_000, "idle WebSocket connections, one subscription each")
	f.StringArray("set", nil, "a configuration value for the server under test, KEY=VALUE; repeatable")
	f.String("server", "", "another pgfeed binary to run as the server under test, to compare builds with the same clients (default: this one)")
	f.DurationVar(&o.Settle, "settle", 5*time.Second, "time the server is left alone before each memory sample")
	f.IntVar(&o.Dialers, "dialers", 64, "connections opened concurrently")
	return cmd
}

// benchWriterCmd is the writer process the live benches start (the same
// binary as the server under test); it is not meant to be run by hand.
func (a *app) benchWriterCmd() *cobra.Command {
	var cfg bench.WriterConfig
	cmd := &cobra.Command{
		Use:    "writer",
		Short:  "The writer process of the live benches (internal)",
		Hidden: true,
		Args:   noArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			cfg.DatabaseURL, _ = cmd.Flags().GetString("database-url")
			return bench.RunWriter(cmd.Context(), cfg, a.stdout)
		}),
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Rate, "rate", 0, "rows committed per second")
	f.Int64Var(&cfg.Total, "total", 0, "rows to commit (ids 1..total)")
	f.IntVar(&cfg.Writers, "writers", 4, "writer connections")
	return cmd
}

// benchSettingKey is what a configuration key looks like.
var benchSettingKey = regexp.MustCompile(`^[a-z_]+(\.[a-z_]+)*$`)

// benchCommon fills in what every bench takes from the command line and
// refuses the global flags that do not apply.
func benchCommon(cmd *cobra.Command, o *bench.Options, out io.Writer) error {
	var bad error
	cmd.Flags().Visit(func(f *pflag.Flag) {
		switch f.Name {
		case "config", "listen":
			if bad == nil {
				bad = &usageError{msg: fmt.Sprintf("--%s does not apply to %q: the server under test gets its own configuration and a free loopback port", f.Name, cmd.CommandPath())}
			}
		case "subscribers", "rate", "connections", "writers", "dialers":
			if v, _ := cmd.Flags().GetInt(f.Name); v <= 0 && bad == nil {
				bad = &usageError{msg: fmt.Sprintf("--%s must be a positive number, got %d", f.Name, v)}
			}
		case "duration", "settle", "drain":
			if v, _ := cmd.Flags().GetDuration(f.Name); v <= 0 && bad == nil {
				bad = &usageError{msg: fmt.Sprintf("--%s must be a positive duration, got %s", f.Name, v)}
			}
		case "warmup":
			if v, _ := cmd.Flags().GetDuration(f.Name); v < 0 && bad == nil {
				bad = &usageError{msg: fmt.Sprintf("--warmup must not be negative, got %s", v)}
			}
		}
	})
	if bad != nil {
		return bad
	}
	if o.Warmup == 0 {
		o.Warmup = -1 // --warmup 0: none
	}
	if sets, err := cmd.Flags().GetStringArray("set"); err == nil {
		for _, kv := range sets {
			key, value, ok := strings.Cut(kv, "=")
			if !ok || !benchSettingKey.MatchString(key) || key == "database.url" || key == "http.listen" {
				return &usageError{msg: fmt.Sprintf("--set %q: want KEY=VALUE with a configuration key such as trigger.notify_below (not database.url or http.listen)", kv)}
			}
			o.Settings = append(o.Settings, "PGFEED_"+strings.ToUpper(strings.ReplaceAll(key, ".", "_"))+"="+value)
		}
	}
	o.DatabaseURL, _ = cmd.Flags().GetString("database-url")
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the pgfeed executable to run as the server: %w", err)
	}
	o.Server, o.Writer = exe, exe
	if bin, _ := cmd.Flags().GetString("server"); bin != "" {
		if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return &usageError{msg: fmt.Sprintf("--server %q: not an executable file", bin)}
		}
		o.Server = bin
	}
	if bin, _ := cmd.Flags().GetString("centrifugo"); bin != "" {
		if fi, err := os.Stat(bin); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return &usageError{msg: fmt.Sprintf("--centrifugo %q: not an executable file", bin)}
		}
		if len(o.Settings) > 0 || cmd.Flags().Changed("server") {
			return &usageError{msg: "--centrifugo measures Centrifugo: --set and --server, which configure the pgfeed server, do not apply"}
		}
		o.Centrifugo = bin
	}
	o.Log = out
	return nil
}

// benchResult prints the report's JSON line and turns problems into the
// command's failure.
func (a *app) benchResult(name string, rep any, problems []string) error {
	line, err := json.Marshal(rep)
	if err != nil {
		return fmt.Errorf("encode the %s report: %w", name, err)
	}
	if _, err := fmt.Fprintf(a.stdout, "%s\n", line); err != nil {
		return err
	}
	if len(problems) > 0 {
		return fmt.Errorf("bench %s observed %d problem(s), the first: %s", name, len(problems), oneLine(problems[0]))
	}
	return nil
}
