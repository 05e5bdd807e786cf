package bench

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Options configures one run. Zero values mean the defaults of the bench
// being run (see Latency, Fanout and Idle); only Server is required.
type Options struct {
	// Server is the pgfeed binary run as the server under test, as
	// "<Server> serve". Required (`pgfeed bench` uses its own executable,
	// or the one --server names).
	Server string
	// Writer is the pgfeed binary run as the writer process, as "<Writer>
	// bench writer". Zero: Server.
	Writer string
	// DatabaseURL names an existing database to run against. The bench
	// installs pgfeed's schema there if needed, (re)creates the table
	// public.bench_events, captures it, and drops the table at the end.
	// Empty: a throwaway PostgreSQL is started and removed afterwards.
	DatabaseURL string

	// Subscribers is the number of WebSocket connections, each with one
	// subscription to the whole table (Latency, Fanout).
	Subscribers int
	// Rate is the target number of changes (single-row INSERT
	// transactions) per second (Latency, Fanout).
	Rate int
	// Duration is how long the measured window lasts (Latency, Fanout).
	Duration time.Duration
	// Warmup is how long changes flow before the measured window opens;
	// its changes are checked for loss but not counted in the figures.
	// Negative: no warm-up. Zero: 5 s.
	Warmup time.Duration
	// Writers is the number of writer goroutines, each with its own
	// database connection. Zero: 4.
	Writers int
	// Drain bounds the wait, after the last commit, for the deliveries
	// still on their way. Zero: 30 s.
	Drain time.Duration

	// Connections is the number of idle WebSocket connections (Idle).
	Connections int
	// Settle is how long the server is left alone before each memory
	// sample, for its garbage collector to settle (Idle). Zero: 5 s.
	Settle time.Duration

	// Centrifugo is a Centrifugo binary to measure instead of pgfeed
	// (Latency, Fanout): the same writer, clients and analysis, with the
	// bench table's rows reaching Centrifugo through its PostgreSQL outbox
	// (see centrifugo.go). Server still runs the writer. Empty: pgfeed.
	Centrifugo string

	// Settings are configuration values for the server under test, as
	// PGFEED_* environment variables ("PGFEED_TRIGGER_NOTIFY_BELOW=0").
	Settings []string

	// Dialers is how many connections are opened concurrently. Zero: 64.
	Dialers int
	// Log receives human-readable progress lines. Nil: discard.
	Log io.Writer
}

func (o *Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

// common fills in the defaults every bench shares and checks them.
func (o *Options) common() error {
	if o.Server == "" {
		return errors.New("bench: Options.Server (the pgfeed binary to run) is required")
	}
	if o.Writer == "" {
		o.Writer = o.Server
	}
	if o.Warmup == 0 {
		o.Warmup = 5 * time.Second
	}
	if o.Warmup < 0 {
		o.Warmup = 0
	}
	if o.Writers == 0 {
		o.Writers = 4
	}
	if o.Drain == 0 {
		o.Drain = 30 * time.Second
	}
	if o.Settle == 0 {
		o.Settle = 5 * time.Second
	}
	if o.Dialers == 0 {
		o.Dialers = 64
	}
	switch {
	case o.Subscribers < 0:
		return fmt.Errorf("subscribers must be positive, got %d", o.Subscribers)
	case o.Rate < 0:
		return fmt.Errorf("rate must be positive, got %d", o.Rate)
	case o.Duration < 0:
		return fmt.Errorf("duration must be positive, got %s", o.Duration)
	case o.Connections < 0:
		return fmt.Errorf("connections must be positive, got %d", o.Connections)
	case o.Writers < 0:
		return fmt.Errorf("writers must be positive, got %d", o.Writers)
	case o.Dialers < 0:
		return fmt.Errorf("dialers must be positive, got %d", o.Dialers)
	case o.Drain < 0 || o.Settle < 0:
		return errors.New("drain and settle must not be negative")
	case o.Warmup+o.Duration > time.Hour:
		// Receipt times are kept in microseconds in 32 bits.
		return fmt.Errorf("warm-up plus duration must stay under an hour, got %s", o.Warmup+o.Duration)
	}
	return nil
}

// Machine describes where a bench ran.
type Machine struct {
	Cores      int    `json:"cores"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	CPU        string `json:"cpu,omitempty"`
	MemoryMB   int64  `json:"memory_mb,omitempty"`
	Kernel     string `json:"kernel,omitempty"`
	GoVersion  string `json:"go_version"`
	PostgreSQL string `json:"postgresql"`
	// OpenFiles is the open-files limit of the bench and of the server.
	OpenFiles uint64 `json:"open_files_limit"`
	// LoadAverage is the 1-minute load average when the run started: work
	// other than the bench's own that shares the machine shows up there.
	LoadAverage float64 `json:"load_average"`
}

func machine() Machine {
	m := Machine{Cores: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if kb, ok := procField("/proc/meminfo", "MemTotal"); ok {
		m.MemoryMB = kb / 1024
	}
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil {
		m.OpenFiles = l.Cur
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		_, _ = fmt.Sscan(string(b), &m.LoadAverage)
	}
	return m
}

func (m Machine) String() string {
	s := fmt.Sprintf("%d cores (GOMAXPROCS %d)", m.Cores, m.GOMAXPROCS)
	if m.CPU != "" {
		s += ", " + m.CPU
	}
	if m.MemoryMB > 0 {
		s += fmt.Sprintf(", %d MB RAM", m.MemoryMB)
	}
	if m.Kernel != "" {
		s += ", Linux " + m.Kernel
	}
	return s + fmt.Sprintf(", %s, PostgreSQL %s, open files %d, load average %.2f at the start", m.GoVersion, m.PostgreSQL, m.OpenFiles, m.LoadAverage)
}

// procField reads a "Name:   123 kB" line of a /proc file, in kB.
func procField(path, name string) (int64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	for line := range bytes.Lines(b) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || string(k) != name {
			continue
		}
		var n int64
		if _, err := fmt.Sscan(string(v), &n); err != nil {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

// raiseOpenFiles raises the soft open-files limit to the hard one (the
// server process inherits it) and checks that need files fit.
func raiseOpenFiles(need int) (uint64, error) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return 0, fmt.Errorf("read the open-files limit: %w", err)
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
			return 0, fmt.Errorf("raise the open-files limit to %d: %w", l.Max, err)
		}
	}
	if uint64(need) > l.Cur {
		return l.Cur, fmt.Errorf("%d connections need about %d open files in this process and in the server, but the limit is %d (see ulimit -Hn)", need-fdSlack, need, l.Cur)
	}
	return l.Cur, nil
}

// fdSlack is the files a process needs beside its WebSocket connections.
const fdSlack = 128

// ServerExit describes the server process and how it stopped.
type ServerExit struct {
	PID int `json:"pid"`
	// Exit is "clean" when SIGTERM made it exit 0 within 10 s; otherwise
	// what happened.
	Exit            string  `json:"exit"`
	ShutdownSeconds float64 `json:"shutdown_seconds"`
}

// ServerStats describes the server process during a live run.
type ServerStats struct {
	ServerExit
	// CPUSeconds is the server's user+system CPU time over the measured
	// window; CPUPercent the same per wall second (100 = one core).
	CPUSeconds float64 `json:"cpu_seconds"`
	CPUPercent float64 `json:"cpu_percent"`
	// RSSBytes is the server's VmRSS at the end of the load.
	RSSBytes int64 `json:"rss_bytes"`
	// From /metrics at the end of the load, when MetricsRead.
	MetricsRead   bool  `json:"metrics_read"`
	SlowConsumers int64 `json:"slow_consumers"`
	Deliveries    int64 `json:"deliveries"`
}

// LatencyStats are latencies from COMMIT returning to client receipt, in
// milliseconds.
type LatencyStats struct {
	Samples int64   `json:"samples"`
	Min     float64 `json:"min"`
	Mean    float64 `json:"mean"`
	P50     float64 `json:"p50"`
	P90     float64 `json:"p90"`
	P99     float64 `json:"p99"`
	P999    float64 `json:"p999"`
	Max     float64 `json:"max"`
	// Early counts receipts timed before the writer saw its COMMIT return
	// (possible: a commit is visible before its acknowledgement arrives);
	// they are included, as negative latencies.
	Early int64 `json:"early"`
}

func (l LatencyStats) String() string {
	return fmt.Sprintf("p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.2f ms (min %.2f ms, mean %.2f ms, %d samples)",
		l.P50, l.P90, l.P99, l.P999, l.Max, l.Min, l.Mean, l.Samples)
}

// ProbeStats describes the answers to a periodic probe of an endpoint.
type ProbeStats struct {
	Probes int `json:"probes"`
	// Failed counts probes that got no 200 within the probe timeout, or
	// none before the load ended after waiting over a second.
	Failed int `json:"failed"`
	// Over1s counts probes that took longer than a second.
	Over1s     int     `json:"over_1s"`
	MaxSeconds float64 `json:"max_seconds"`
}

// LiveReport is the result of Latency or Fanout.
type LiveReport struct {
	Bench   string  `json:"bench"`
	Machine Machine `json:"machine"`

	Subscribers     int     `json:"subscribers"`
	TargetRate      int     `json:"target_rate"`
	WarmupSeconds   float64 `json:"warmup_seconds"`
	DurationSeconds float64 `json:"duration_seconds"`
	Writers         int     `json:"writers"`
	// ConnectSeconds is how long opening and subscribing every connection
	// took.
	ConnectSeconds float64 `json:"connect_seconds"`

	// Committed counts every committed change, warm-up included;
	// Measured those committed in the measured window.
	Committed int64 `json:"committed"`
	Measured  int64 `json:"measured"`
	// WriteRate is the achieved rate of the measured window.
	WriteRate float64 `json:"write_rate"`

	// ReceivedMin and ReceivedMax are the fewest and most distinct
	// changes one subscriber received (each should equal Committed).
	ReceivedMin int64 `json:"received_min"`
	ReceivedMax int64 `json:"received_max"`
	// Deliveries counts every change message received, by all subscribers.
	Deliveries int64 `json:"deliveries"`
	// DeliveriesPerSecond counts the deliveries received during the
	// measured window, per second; TargetDeliveries is rate x subscribers.
	DeliveriesPerSecond float64 `json:"deliveries_per_second"`
	TargetDeliveries    int64   `json:"target_deliveries_per_second"`
	// DrainSeconds is the time from the last commit to the last receipt;
	// EndSeconds from the last commit to the end of the run (when the
	// server was told to stop).
	DrainSeconds float64 `json:"drain_seconds"`
	EndSeconds   float64 `json:"end_seconds"`

	// Latency covers the changes of the measured window, every subscriber.
	Latency LatencyStats `json:"latency_ms"`
	// FirstReceipt is, per change of the measured window, the latency of
	// its first receipt by any subscriber: the source's pickup and the
	// server's dispatch. Spread is each receipt's delay after that first
	// one: the fan-out's share of Latency.
	FirstReceipt LatencyStats `json:"first_receipt_ms"`
	Spread       LatencyStats `json:"spread_ms"`

	// Lost is the sum over subscribers of committed changes provably
	// skipped: missing although a change committed after them arrived.
	// Undelivered counts the other missing deliveries: not arrived by the
	// end of the run, perhaps still queued. Duplicates counts changes
	// received more than once; Unexpected changes received that were never
	// committed.
	Lost        int64 `json:"lost"`
	Undelivered int64 `json:"undelivered"`
	Duplicates  int64 `json:"duplicates"`
	Unexpected  int64 `json:"unexpected"`
	// CutOff counts subscribers whose connection ended before the end of
	// the run, by close reason (slow_consumer, ...).
	CutOff        int            `json:"cut_off"`
	CutOffReasons map[string]int `json:"cut_off_reasons,omitempty"`

	// Readyz is how GET /readyz, probed once a second during the load,
	// answered.
	Readyz ProbeStats `json:"readyz"`

	Server ServerStats `json:"server"`
	// ClientCPUSeconds is this process's CPU time over the measured
	// window (subscribers and writers).
	ClientCPUSeconds float64 `json:"client_cpu_seconds"`

	// Problems lists everything that went wrong: loss, duplicates,
	// cut-offs, server errors, an unclean shutdown. Empty on success.
	Problems []string `json:"problems"`
}

// WriteText writes the report as human-readable lines.
func (r *LiveReport) WriteText(w io.Writer) {
	fmt.Fprintf(w, "bench %s: %d WebSocket subscribers on one table, target %d changes/s, %g s measured after %g s warm-up, %d writers\n",
		r.Bench, r.Subscribers, r.TargetRate, r.DurationSeconds, r.WarmupSeconds, r.Writers)
	fmt.Fprintf(w, "  machine:     %s\n", r.Machine)
	fmt.Fprintf(w, "  connect:     %d subscribers subscribed in %.2f s\n", r.Subscribers, r.ConnectSeconds)
	fmt.Fprintf(w, "  writes:      %d committed (%d in the measured window), achieved %.1f changes/s\n", r.Committed, r.Measured, r.WriteRate)
	fmt.Fprintf(w, "  received:    per subscriber min %d, max %d distinct (committed %d); %d deliveries in all\n", r.ReceivedMin, r.ReceivedMax, r.Committed, r.Deliveries)
	fmt.Fprintf(w, "  deliveries:  %.0f/s in the measured window (target %d/s); last receipt %.3f s after the last commit (run ended %.3f s after it)\n",
		r.DeliveriesPerSecond, r.TargetDeliveries, r.DrainSeconds, r.EndSeconds)
	if r.Latency.Samples == 0 {
		fmt.Fprintf(w, "  latency:     no samples: none of the measured window's changes arrived\n")
	} else {
		fmt.Fprintf(w, "  latency:     %s\n", r.Latency)
		fmt.Fprintf(w, "    first:     %s (per change, its first receipt)\n", r.FirstReceipt)
		fmt.Fprintf(w, "    spread:    %s (each receipt after the change's first)\n", r.Spread)
	}
	if r.Latency.Early > 0 {
		fmt.Fprintf(w, "               %d receipts came before the writer saw COMMIT return (counted as negative latency)\n", r.Latency.Early)
	}
	if r.Latency.Min < -1 {
		fmt.Fprintf(w, "               the writer's clock readings were late by up to %.1f ms: the machine (the bench itself or other work) was short of CPU, which inflates the latencies\n", -r.Latency.Min)
	}
	fmt.Fprintf(w, "  correctness: lost %d, undelivered at the end %d, duplicates %d, unexpected %d, cut off %d %v\n",
		r.Lost, r.Undelivered, r.Duplicates, r.Unexpected, r.CutOff, reasons(r.CutOffReasons))
	fmt.Fprintf(w, "  /readyz:     %d probes during the load, slowest %.3f s, %d over 1 s, %d failed\n", r.Readyz.Probes, r.Readyz.MaxSeconds, r.Readyz.Over1s, r.Readyz.Failed)
	metrics := "/metrics unavailable"
	if r.Server.MetricsRead {
		metrics = fmt.Sprintf("/metrics: %d slow consumers, %d deliveries", r.Server.SlowConsumers, r.Server.Deliveries)
	}
	fmt.Fprintf(w, "  server:      pid %d, CPU %.1f s (%.0f%% of one core) in the window, RSS %.1f MiB at the end, %s; exit %s in %.2f s\n",
		r.Server.PID, r.Server.CPUSeconds, r.Server.CPUPercent, mib(r.Server.RSSBytes), metrics, r.Server.Exit, r.Server.ShutdownSeconds)
	fmt.Fprintf(w, "  client:      CPU %.1f s in the window\n", r.ClientCPUSeconds)
	writeProblems(w, r.Problems)
}

// IdleReport is the result of Idle.
type IdleReport struct {
	Bench   string  `json:"bench"`
	Machine Machine `json:"machine"`

	Connections    int     `json:"connections"`
	ConnectSeconds float64 `json:"connect_seconds"`
	SettleSeconds  float64 `json:"settle_seconds"`

	// The server's VmRSS and RssAnon (from /proc/<pid>/status) before the
	// connections were opened and after they settled.
	RSSBeforeBytes  int64 `json:"rss_before_bytes"`
	RSSAfterBytes   int64 `json:"rss_after_bytes"`
	AnonBeforeBytes int64 `json:"anon_before_bytes"`
	AnonAfterBytes  int64 `json:"anon_after_bytes"`
	// RSSPerConnection is (RSSAfter - RSSBefore) / Connections, in bytes;
	// AnonPerConnection the same for anonymous memory only.
	RSSPerConnection  float64 `json:"rss_per_connection_bytes"`
	AnonPerConnection float64 `json:"anon_per_connection_bytes"`

	// What the server's /metrics counted once every connection was open.
	ServerConnections   int64 `json:"server_connections"`
	ServerSubscriptions int64 `json:"server_subscriptions"`

	// Per connection, from the Go runtime's figures on /metrics before the
	// connections were opened and after they settled: where RSS goes.
	GoroutinesPerConnection float64 `json:"goroutines_per_connection"`
	HeapPerConnection       float64 `json:"heap_objects_per_connection_bytes"`
	StackPerConnection      float64 `json:"stack_per_connection_bytes"`

	Server   ServerExit `json:"server"`
	Problems []string   `json:"problems"`
}

// WriteText writes the report as human-readable lines.
func (r *IdleReport) WriteText(w io.Writer) {
	fmt.Fprintf(w, "bench %s: %d idle WebSocket connections, one subscription each\n", r.Bench, r.Connections)
	fmt.Fprintf(w, "  machine:     %s\n", r.Machine)
	fmt.Fprintf(w, "  connect:     %d connections subscribed in %.2f s; server counts %d connections, %d subscriptions\n",
		r.Connections, r.ConnectSeconds, r.ServerConnections, r.ServerSubscriptions)
	fmt.Fprintf(w, "  server RSS:  %.1f MiB before, %.1f MiB after (%g s settle): %.0f bytes (%.1f KiB) per connection\n",
		mib(r.RSSBeforeBytes), mib(r.RSSAfterBytes), r.SettleSeconds, r.RSSPerConnection, r.RSSPerConnection/1024)
	fmt.Fprintf(w, "  server anon: %.1f MiB before, %.1f MiB after: %.0f bytes (%.1f KiB) per connection\n",
		mib(r.AnonBeforeBytes), mib(r.AnonAfterBytes), r.AnonPerConnection, r.AnonPerConnection/1024)
	fmt.Fprintf(w, "  go runtime:  per connection %.2f goroutines, %.0f bytes of stacks, %.0f bytes of heap objects (live or unswept)\n",
		r.GoroutinesPerConnection, r.StackPerConnection, r.HeapPerConnection)
	fmt.Fprintf(w, "  server:      pid %d, exit %s in %.2f s\n", r.Server.PID, r.Server.Exit, r.Server.ShutdownSeconds)
	writeProblems(w, r.Problems)
}

func writeProblems(w io.Writer, problems []string) {
	if len(problems) == 0 {
		fmt.Fprintln(w, "  problems:    none")
		return
	}
	fmt.Fprintf(w, "  problems:    %d\n", len(problems))
	for _, p := range problems {
		fmt.Fprintf(w, "    - %s\n", p)
	}
}

func reasons(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	return fmt.Sprint(m)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// seconds is d in seconds, rounded to the millisecond for the JSON line.
func seconds(d time.Duration) float64 { return float64(d.Milliseconds()) / 1000 }
