package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgfeed/pgfeed/internal/pgtemp"
)

// Table is the table every bench writes to and subscribes to.
const Table = "public.bench_events"

// serverConfig is the configuration file given to the server under test:
// anonymous clients may read the bench table. Database and listen address
// come from the environment.
const serverConfig = `# written by pgfeed bench
policies:
  - table: ` + Table + `
    roles: [anon]
`

// shutdownTimeout is how long the server has to exit after SIGTERM.
const shutdownTimeout = 10 * time.Second

// server is a running `pgfeed serve` process.
type server struct {
	cmd        *exec.Cmd
	addr       string // host:port it serves on
	centrifugo bool   // Centrifugo, not pgfeed
	logPath    string
	http       *http.Client

	done    chan struct{} // closed when the process has exited
	waitErr error         // its exit status; read only after done is closed
}

// startServer starts `bin serve` (or, with centrifugo, Centrifugo's bin)
// on a free loopback port against dbURL, with its configuration, log and
// working directory in dir.
func startServer(bin, dbURL, dir string, settings []string, centrifugo bool) (*server, error) {
	port, err := pgtemp.FreePort()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	var args []string
	if centrifugo {
		if args, err = writeCentrifugoConfig(dir, port, dbURL); err != nil {
			return nil, err
		}
	} else {
		cfgPath := filepath.Join(dir, "pgfeed-bench.yaml")
		if err := os.WriteFile(cfgPath, []byte(serverConfig), 0o600); err != nil {
			return nil, fmt.Errorf("write server configuration: %w", err)
		}
		args = []string{"serve", "--config", cfgPath}
	}
	logPath := filepath.Join(dir, "server.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create server log: %w", err)
	}
	defer logFile.Close()

	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	// Only our settings: a PGFEED_* variable of the caller's environment
	// must not change the server under test.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PGFEED_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env,
		"PGFEED_DATABASE_URL="+dbURL,
		"PGFEED_HTTP_LISTEN="+addr,
		"PGFEED_AUTH_ANONYMOUS=true",
	)
	cmd.Env = append(cmd.Env, settings...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group, so that a Ctrl-C reaches the bench, which
		// then stops the server; and stopped with us if we die.
		Setpgid:   true,
		Pdeathsig: syscall.SIGTERM,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s := &server{
		cmd:        cmd,
		addr:       addr,
		centrifugo: centrifugo,
		logPath:    logPath,
		http: &http.Client{
			Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		},
		done: make(chan struct{}),
	}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// readyPath is the server's readiness check.
func (s *server) readyPath() string {
	if s.centrifugo {
		return "/health"
	}
	return "/readyz"
}

// exited reports whether the process has ended, and how.
func (s *server) exited() (bool, string) {
	select {
	case <-s.done:
		return true, s.exitText()
	default:
		return false, ""
	}
}

func (s *server) exitText() string {
	if s.waitErr == nil {
		return "exit status 0"
	}
	return s.waitErr.Error()
}

// logNote describes the server's log for an error message: it keeps a
// copy outside the run's temporary directory (which is removed) and quotes
// the first line of a Go crash, or else the last lines.
func (s *server) logNote() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return "its log could not be read: " + err.Error()
	}
	where := "its log"
	if f, err := os.CreateTemp("", fmt.Sprintf("pgfeed-bench-server-%d-*.log", s.pid())); err == nil {
		_, werr := f.Write(b)
		if cerr := f.Close(); werr == nil && cerr == nil {
			where = "its log (kept at " + f.Name() + ")"
		} else {
			_ = os.Remove(f.Name())
		}
	}
	for line := range strings.Lines(string(b)) {
		for _, p := range []string{"panic:", "fatal error:", "SIGQUIT:", "SIGSEGV:", "SIGABRT:"} {
			if strings.HasPrefix(line, p) {
				return where + " reports: " + strings.TrimSpace(line)
			}
		}
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	lines = lines[max(0, len(lines)-15):]
	return where + " ends with:\n" + strings.Join(lines, "\n")
}

// waitReady polls readyPath until it answers 200, the process exits or the
// timeout passes.
func (s *server) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		last = s.get(actx, s.readyPath(), io.Discard)
		acancel()
		if last == nil {
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("the server exited during start-up (%s); %s", s.exitText(), s.logNote())
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("the server was not ready after %s (last %s: %v); %s", timeout, s.readyPath(), last, s.logNote())
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// get fetches path from the server into w; a status other than 200 is an
// error.
func (s *server) get(ctx context.Context, path string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.addr+path, nil)
	if err != nil {
		return err
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(b))
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

// metricsTimeout bounds a read of /metrics.
const metricsTimeout = 30 * time.Second

// metrics reads the server's /metrics: sample name -> value.
func (s *server) metrics(ctx context.Context) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, metricsTimeout)
	defer cancel()
	var buf bytes.Buffer
	if err := s.get(ctx, "/metrics", &buf); err != nil {
		return nil, fmt.Errorf("read the server's /metrics (allowed %s): %w", metricsTimeout, err)
	}
	return parseMetrics(buf.Bytes()), nil
}

// prober GETs a path periodically and times the answers.
type prober struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the probing goroutine has ended
	stats  ProbeStats    // written by the goroutine; read after done
}

// probe GETs path every interval, each under timeout, until stop is
// called. A probe cut short by stop counts only when it had waited more
// than a second, as failed.
func (s *server) probe(ctx context.Context, path string, interval, timeout time.Duration) *prober {
	ctx, cancel := context.WithCancel(ctx)
	p := &prober{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		st := &p.stats
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			pctx, cancel := context.WithTimeout(ctx, timeout)
			start := time.Now()
			err := s.get(pctx, path, io.Discard)
			took := time.Since(start)
			cancel()
			if ctx.Err() != nil {
				if took > time.Second {
					// Still unanswered after a second when probing stopped.
					st.Probes++
					st.Failed++
					st.Over1s++
					st.MaxSeconds = max(st.MaxSeconds, seconds(took))
				}
				return
			}
			st.Probes++
			if err != nil {
				st.Failed++
			}
			if took > time.Second {
				st.Over1s++
			}
			st.MaxSeconds = max(st.MaxSeconds, seconds(took))
		}
	}()
	return p
}

// stop ends the probing and returns how it went. Idempotent.
func (p *prober) stop() ProbeStats {
	p.cancel()
	<-p.done
	return p.stats
}

// probeTimeout bounds one probe of /readyz during a load.
const probeTimeout = 30 * time.Second

// parseMetrics reads the samples of a Prometheus text exposition, without
// labels.
func parseMetrics(b []byte) map[string]float64 {
	m := make(map[string]float64)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		if v, err := strconv.ParseFloat(f[1], 64); err == nil {
			m[f[0]] = v
		}
	}
	return m
}

// memory returns the process's VmRSS and RssAnon, in bytes.
func (s *server) memory() (rss, anon int64, err error) {
	path := fmt.Sprintf("/proc/%d/status", s.pid())
	rssKB, ok1 := procField(path, "VmRSS")
	anonKB, ok2 := procField(path, "RssAnon")
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("read VmRSS and RssAnon from %s", path)
	}
	return rssKB * 1024, anonKB * 1024, nil
}

// clockTicks is the kernel's USER_HZ, the unit of CPU times in /proc: 100
// on every Linux architecture Go supports.
const clockTicks = 100

// cpu returns the process's user+system CPU time so far.
func (s *server) cpu() (time.Duration, error) {
	return procCPU(fmt.Sprintf("/proc/%d/stat", s.pid()))
}

func procCPU(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read CPU time: %w", err)
	}
	// pid (comm) state ppid ...: comm may hold spaces, so split after ")".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("read CPU time: %s is malformed", path)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("read CPU time: %s is malformed", path)
	}
	// Fields 14 (utime) and 15 (stime) of the line; f[0] is field 3.
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("read CPU time: %s is malformed", path)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// stop sends SIGTERM and waits up to shutdownTimeout for the process to
// exit. It returns "clean" when it exited with status 0 in time, and
// otherwise says what happened (a process that does not exit is killed).
func (s *server) stop() (exit string, took time.Duration) {
	start := time.Now()
	if done, how := s.exited(); done {
		return "had already exited before SIGTERM: " + how, 0
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return "could not be sent SIGTERM: " + err.Error(), 0
	}
	t := time.NewTimer(shutdownTimeout)
	defer t.Stop()
	select {
	case <-s.done:
		took = time.Since(start)
		if s.waitErr != nil {
			return fmt.Sprintf("exited with %s after SIGTERM; %s", s.exitText(), s.logNote()), took
		}
		return "clean", took
	case <-t.C:
		_ = s.cmd.Process.Kill()
		<-s.done
		return fmt.Sprintf("did not exit within %s of SIGTERM and was killed; %s", shutdownTimeout, s.logNote()), time.Since(start)
	}
}

// kill ends the process at once, for error paths. Idempotent.
func (s *server) kill() {
	if done, _ := s.exited(); !done {
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}

// testbed is what every bench runs on: a database prepared for it and the
// server under test, ready, and the machine's facts.
type testbed struct {
	dir     string
	db      *database
	srv     *server
	machine Machine
}

// openTestbed raises the open-files limit for fds connections, prepares the
// database and starts the server; close undoes all of it.
func openTestbed(ctx context.Context, o *Options, fds int) (_ *testbed, err error) {
	if _, err := raiseOpenFiles(fds + fdSlack); err != nil {
		return nil, err
	}
	tb := &testbed{machine: machine()}
	defer func() {
		if err != nil {
			err = errors.Join(err, tb.close())
		}
	}()
	if tb.dir, err = os.MkdirTemp("", "pgfeed-bench-"); err != nil {
		return nil, fmt.Errorf("create temporary directory: %w", err)
	}
	if tb.db, err = openDatabase(ctx, o.DatabaseURL, o); err != nil {
		return nil, err
	}
	tb.machine.PostgreSQL = tb.db.version
	bin := o.Server
	if o.Centrifugo != "" {
		bin = o.Centrifugo
	}
	o.logf("starting the server under test: %s", bin)
	if tb.srv, err = startServer(bin, tb.db.url, tb.dir, o.Settings, o.Centrifugo != ""); err != nil {
		return nil, err
	}
	if err := tb.srv.waitReady(ctx, time.Minute); err != nil {
		return nil, err
	}
	return tb, nil
}

// close stops the server if it still runs, and removes the database and
// the temporary directory. Safe on a partly opened testbed.
func (tb *testbed) close() error {
	if tb.srv != nil {
		tb.srv.kill()
	}
	var err error
	if tb.db != nil {
		err = tb.db.close()
	}
	if tb.dir != "" {
		err = errors.Join(err, os.RemoveAll(tb.dir))
	}
	return err
}
