package pgtemp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoBinaries is returned when initdb or postgres cannot be found.
var ErrNoBinaries = errors.New("PostgreSQL server binaries (initdb, postgres) not found on PATH or under /usr/lib/postgresql/*/bin")

// Options tunes a throwaway server. The zero value is ready to use.
type Options struct {
	// BinDir is where initdb and postgres live. Empty: search PATH, then the
	// newest /usr/lib/postgresql/*/bin.
	BinDir string
	// Settings are extra server settings (name -> value), added after the
	// defaults and so overriding them.
	Settings map[string]string
	// StartTimeout bounds how long Start waits for the server to accept
	// connections. Zero means 60 seconds.
	StartTimeout time.Duration
}

// Server is a running throwaway PostgreSQL server.
type Server struct {
	dir      string // temporary directory: data/, the socket, the log
	port     int
	binDir   string
	cred     *syscall.Credential
	settings map[string]string

	mu   sync.Mutex
	proc *process // guarded by mu: the running postgres

	stopOnce sync.Once
	stopErr  error
}

// process is one run of the postgres binary.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it has exited
	err  error         // its exit status; read only after done is closed
}

// defaultSettings favour speed and logical decoding; durability is not a goal.
var defaultSettings = map[string]string{
	"wal_level":             "logical",
	"fsync":                 "off",
	"synchronous_commit":    "off",
	"full_page_writes":      "off",
	"max_connections":       "300",
	"max_replication_slots": "20",
	"max_wal_senders":       "20",
	"shared_buffers":        "128MB",
	"listen_addresses":      "127.0.0.1",
	"log_min_messages":      "warning",
}

// FindBinDir returns the directory holding initdb and postgres.
func FindBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		// initdb on PATH is often a symlink into the real bin directory,
		// which is where postgres lives too.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dir := filepath.Dir(real)
			if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
				return dir, nil
			}
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	sort.Slice(matches, func(i, j int) bool { return versionOf(matches[i]) > versionOf(matches[j]) })
	for _, m := range matches {
		dir := filepath.Dir(m)
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	return "", ErrNoBinaries
}

func versionOf(path string) int {
	// /usr/lib/postgresql/15/bin/postgres -> 15
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(path))))
	return v
}

// Start creates a fresh cluster and starts postgres on a free loopback port.
func Start(ctx context.Context, opts Options) (_ *Server, err error) {
	binDir := opts.BinDir
	if binDir == "" {
		if binDir, err = FindBinDir(); err != nil {
			return nil, err
		}
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	base := ""
	if cred != nil {
		// The postgres user must be able to reach the directory; root's
		// TMPDIR may not be reachable, /tmp always is.
		base = "/tmp"
	}
	dir, err := os.MkdirTemp(base, "pgfeed-pg-")
	if err != nil {
		return nil, fmt.Errorf("create temporary directory: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("hand %s to the postgres user: %w", dir, err)
		}
	}

	initdb := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"),
		"-D", filepath.Join(dir, "data"), "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	initdb.Dir = dir
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %w: %s", err, bytes.TrimSpace(out))
	}

	timeout := opts.StartTimeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	// A free port can be taken by someone else between our probe and
	// postgres binding it; try a few ports before giving up.
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		s, err := launch(ctx, binDir, dir, port, cred, opts.Settings, timeout)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if !errors.Is(err, errPortInUse) {
			break
		}
	}
	return nil, lastErr
}

var errPortInUse = errors.New("port in use")

func launch(ctx context.Context, binDir, dir string, port int, cred *syscall.Credential, extra map[string]string, timeout time.Duration) (*Server, error) {
	s := &Server{dir: dir, port: port, binDir: binDir, cred: cred, settings: extra}
	if err := s.startProcess(ctx, timeout); err != nil {
		return nil, err
	}
	return s, nil
}

// startProcess starts postgres on s's directory and port and waits until it
// accepts connections.
func (s *Server) startProcess(ctx context.Context, timeout time.Duration) error {
	args := []string{"-D", filepath.Join(s.dir, "data"), "-p", strconv.Itoa(s.port), "-k", s.dir}
	settings := make(map[string]string, len(defaultSettings)+len(s.settings))
	for k, v := range defaultSettings {
		settings[k] = v
	}
	for k, v := range s.settings {
		settings[k] = v
	}
	names := make([]string, 0, len(settings))
	for k := range settings {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		args = append(args, "-c", k+"="+settings[k])
	}
	logPath := filepath.Join(s.dir, "postgres.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("create server log: %w", err)
	}
	defer logFile.Close()
	if s.cred != nil {
		if err := logFile.Chown(int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			return fmt.Errorf("hand the server log to the postgres user: %w", err)
		}
	}
	// Not CommandContext: the server must outlive the start-up context;
	// Stop owns its end.
	cmd := exec.Command(filepath.Join(s.binDir, "postgres"), args...)
	cmd.Dir = s.dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: s.cred,
		Setpgid:    true,
		// If the Go process dies, postgres gets SIGQUIT (immediate shutdown).
		Pdeathsig: syscall.SIGQUIT,
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()

	waitCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := s.waitReady(waitCtx, p); err != nil {
		stop(p)
		logText, _ := os.ReadFile(logPath)
		if bytes.Contains(logText, []byte("could not bind")) || bytes.Contains(logText, []byte("Address already in use")) {
			_ = os.RemoveAll(filepath.Join(s.dir, "postgres.log"))
			return fmt.Errorf("start postgres on port %d: %w", s.port, errPortInUse)
		}
		return fmt.Errorf("start postgres: %w; server log:\n%s", err, lastLines(string(logText), 20))
	}
	return nil
}

func (s *Server) waitReady(ctx context.Context, p *process) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case <-p.done:
			return fmt.Errorf("postgres exited during start-up: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("postgres not accepting connections: %w (last error: %v)", ctx.Err(), err)
		case <-tick.C:
		}
	}
}

// URL returns a connection URL for database dbname as the superuser
// "postgres", over TCP on the loopback port.
func (s *Server) URL(dbname string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Path:     "/" + dbname,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// Port is the server's TCP port on 127.0.0.1.
func (s *Server) Port() int { return s.port }

// SocketDir is the directory holding the server's Unix socket.
func (s *Server) SocketDir() string { return s.dir }

// Stop shuts the server down (fast shutdown, then immediate after 10 s) and
// removes its directory. It is safe to call more than once.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		p := s.proc
		s.mu.Unlock()
		if p != nil {
			stop(p)
		}
		if err := os.RemoveAll(s.dir); err != nil {
			s.stopErr = fmt.Errorf("remove %s: %w", s.dir, err)
		}
	})
	return s.stopErr
}

// Restart stops postgres (fast shutdown: connections are terminated) and
// starts it again on the same port and data, for tests of reconnection.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	stop(p)
	return s.startProcess(ctx, 60*time.Second)
}

// stop asks p for a fast shutdown, then an immediate one after 10 s, and
// waits for it to exit.
func stop(p *process) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		<-p.done
	}
}

// serverCredential returns the credential postgres must run under: nil when
// the current user is not root, the "postgres" user's when it is.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, and PostgreSQL refuses root: a \"postgres\" system user is needed to run the server (install the postgresql package): %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres user uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("postgres user gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
