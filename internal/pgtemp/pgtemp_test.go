package pgtemp_test

import (
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgfeed/pgfeed/internal/pgtemp"
)

// TestStartStop starts a real server, checks the settings change capture
// relies on and the user it runs as, and checks Stop leaves nothing behind.
func TestStartStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := s.SocketDir()
	t.Cleanup(func() { _ = s.Stop() })

	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	var walLevel, fsync string
	if err := conn.QueryRow(ctx, "SELECT current_setting('wal_level'), current_setting('fsync')").Scan(&walLevel, &fsync); err != nil {
		t.Fatal(err)
	}
	if walLevel != "logical" || fsync != "off" {
		t.Errorf("wal_level=%s fsync=%s, want logical and off", walLevel, fsync)
	}
	// As root, the cluster must belong to another user: postgres refuses
	// to run as root.
	st, err := os.Stat(dir + "/data")
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 && st.Sys().(*syscall.Stat_t).Uid == 0 {
		t.Errorf("data directory owned by root; the server must run as postgres")
	}
	conn.Close(ctx)

	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("directory %s still exists after Stop (err=%v)", dir, err)
	}
	if _, err := pgx.Connect(ctx, s.URL("postgres")); err == nil {
		t.Errorf("server still accepts connections after Stop")
	}
}

// TestRestart restarts the server on the same port with its data kept.
func TestRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s, err := pgtemp.Start(ctx, pgtemp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	conn, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `CREATE TABLE kept (id int)`); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Error("a connection survived the restart")
	}
	conn, err = pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO kept VALUES (1)`); err != nil {
		t.Fatalf("data lost across the restart: %v", err)
	}
}
