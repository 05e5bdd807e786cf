package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pgfeed/pgfeed/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// result is what one pgfeed invocation did.
type result struct {
	code           int
	stdout, stderr string
}

// pgfeed runs the command line args in-process, like the binary would.
func pgfeed(t *testing.T, args ...string) result {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr)
	r := result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	checkStderr(t, r.stderr)
	return r
}

// checkStderr fails on anything that looks like a Go crash.
func checkStderr(t *testing.T, stderr string) {
	t.Helper()
	for _, bad := range []string{"panic", "goroutine ", ".go:"} {
		if strings.Contains(stderr, bad) {
			t.Errorf("stderr contains %q:\n%s", bad, stderr)
		}
	}
}

// wantCode checks the exit code and, for failures, that stderr is exactly
// one line starting with "pgfeed: ".
func (r result) wantCode(t *testing.T, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	if code != 0 {
		if !strings.HasPrefix(r.stderr, "pgfeed: ") || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("stderr is not one line starting with \"pgfeed: \":\n%s", r.stderr)
		}
	}
}

// resolve returns the configuration the command named in args would see,
// through the same flag parsing and loadConfig as the real command.
func resolve(t *testing.T, args ...string) (*Config, error) {
	t.Helper()
	a := &app{stdout: io.Discard, stderr: io.Discard, log: slog.New(slog.DiscardHandler)}
	cmd, rest, err := a.rootCmd().Find(args)
	if err != nil {
		t.Fatalf("find command %q: %v", args, err)
	}
	if err := cmd.ParseFlags(rest); err != nil {
		t.Fatalf("parse flags %q: %v", rest, err)
	}
	return loadConfig(cmd.Flags())
}

// cleanEnv unsets every PGFEED_ configuration variable for the test (viper,
// like loadConfig, treats an empty variable as unset).
func cleanEnv(t *testing.T) {
	t.Helper()
	for _, k := range configKeys() {
		t.Setenv(envName(k.name), "")
	}
}

// writeFile writes content to a new file in a temporary directory.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// syncBuffer is a buffer safe for one writer and concurrent readers, which
// signals when the output first contains a marker.
type syncBuffer struct {
	mu     sync.Mutex
	buf    bytes.Buffer // guarded by mu
	marker string
	seen   chan struct{} // closed once buf contains marker
	closed bool          // guarded by mu
}

func newSyncBuffer(marker string) *syncBuffer {
	return &syncBuffer{marker: marker, seen: make(chan struct{})}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	if !b.closed && strings.Contains(b.buf.String(), b.marker) {
		b.closed = true
		close(b.seen)
	}
	return n, err
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
