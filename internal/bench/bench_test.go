package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgfeed/pgfeed/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// buildPgfeed builds the pgfeed binary to run as the server under test (the
// test binary itself cannot serve).
func buildPgfeed(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found at %s: %v", root, err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go command is needed to build pgfeed: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "pgfeed")
	cmd := exec.Command(goBin, "build", "-o", bin, "./cmd/pgfeed")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/pgfeed: %v\n%s", err, out)
	}
	return bin
}

// testLog passes progress lines to t.Log.
type testLog struct {
	t  *testing.T
	mu sync.Mutex
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func TestBenches(t *testing.T) {
	bin := buildPgfeed(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	live := func(t *testing.T, run func(context.Context, Options) (*LiveReport, error), subs int, settings ...string) {
		o := Options{
			Server:      bin,
			DatabaseURL: pgtest.NewDB(t),
			Settings:    settings,
			Subscribers: subs,
			Rate:        50,
			Duration:    2 * time.Second,
			Warmup:      500 * time.Millisecond,
			Log:         &testLog{t: t},
		}
		rep, err := run(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		var text bytes.Buffer
		rep.WriteText(&text)
		t.Log("\n" + text.String())
		if len(rep.Problems) > 0 {
			t.Errorf("problems: %q", rep.Problems)
		}
		const committed = 50 * 5 / 2 // 50/s for 2.5 s
		if rep.Committed != committed {
			t.Errorf("committed %d changes, want %d", rep.Committed, committed)
		}
		if rep.ReceivedMin != committed || rep.ReceivedMax != committed {
			t.Errorf("each subscriber received between %d and %d distinct changes, want %d", rep.ReceivedMin, rep.ReceivedMax, committed)
		}
		if rep.Deliveries != committed*int64(subs) || rep.Lost != 0 || rep.Duplicates != 0 || rep.Unexpected != 0 || rep.CutOff != 0 {
			t.Errorf("deliveries %d (want %d), lost %d, duplicates %d, unexpected %d, cut off %d",
				rep.Deliveries, committed*int64(subs), rep.Lost, rep.Duplicates, rep.Unexpected, rep.CutOff)
		}
		if rep.Measured != 100 || rep.Latency.Samples != rep.Measured*int64(subs) {
			t.Errorf("measured %d changes and %d latency samples, want 100 and %d", rep.Measured, rep.Latency.Samples, 100*subs)
		}
		if rep.WriteRate <= 0 || rep.DeliveriesPerSecond <= 0 || rep.Latency.P50 <= 0 || rep.Latency.P99 < rep.Latency.P50 || rep.Latency.Max < rep.Latency.P99 {
			t.Errorf("figures not sane: write rate %v, deliveries/s %v, latency %v", rep.WriteRate, rep.DeliveriesPerSecond, rep.Latency)
		}
		if rep.Server.Exit != "clean" || rep.Server.Deliveries != rep.Deliveries {
			t.Errorf("server exit %q, server deliveries %d (want %d)", rep.Server.Exit, rep.Server.Deliveries, rep.Deliveries)
		}
		if rep.Machine.Cores <= 0 || rep.Machine.PostgreSQL == "" || rep.Machine.GoVersion == "" {
			t.Errorf("machine facts missing: %+v", rep.Machine)
		}
	}
	t.Run("latency", func(t *testing.T) { live(t, Latency, 5) })
	t.Run("fanout", func(t *testing.T) { live(t, Fanout, 20) })
	t.Run("latency-logical", func(t *testing.T) {
		// The bench captures its table for the source the settings
		// choose, and drops the slot the server made in an existing
		// database.
		slot := fmt.Sprintf("bench_%d", time.Now().UnixNano())
		live(t, Latency, 5, "PGFEED_SOURCE=logical", "PGFEED_LOGICAL_SLOT="+slot)
		var left int
		db := pgtest.Connect(t, pgtest.NewDB(t))
		if err := db.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if left != 0 {
			t.Errorf("slot %s left behind", slot)
		}
	})

	t.Run("idle", func(t *testing.T) {
		rep, err := Idle(ctx, Options{
			Server:      bin,
			DatabaseURL: pgtest.NewDB(t),
			Connections: 50,
			Settle:      300 * time.Millisecond,
			Log:         &testLog{t: t},
		})
		if err != nil {
			t.Fatal(err)
		}
		var text bytes.Buffer
		rep.WriteText(&text)
		t.Log("\n" + text.String())
		if len(rep.Problems) > 0 {
			t.Errorf("problems: %q", rep.Problems)
		}
		if rep.ServerConnections != 50 || rep.ServerSubscriptions != 50 {
			t.Errorf("server counts %d connections and %d subscriptions, want 50", rep.ServerConnections, rep.ServerSubscriptions)
		}
		if rep.RSSBeforeBytes <= 0 || rep.RSSAfterBytes <= 0 || rep.RSSPerConnection <= 0 {
			t.Errorf("memory figures not sane: before %d, after %d, per connection %v", rep.RSSBeforeBytes, rep.RSSAfterBytes, rep.RSSPerConnection)
		}
		if rep.Server.Exit != "clean" {
			t.Errorf("server exit %q", rep.Server.Exit)
		}
	})
}

func TestParseID(t *testing.T) {
	tests := []struct {
		msg  string
		id   int64
		want bool
	}{
		{`{"type":"change","sub":"s1","cursor":"x","table":"public.bench_events","op":"insert","key":{"id":42},"new":{"id":42}}`, 42, true},
		{`{"type":"change","key":{"id":1}}`, 1, true},
		{`{"type":"change","key":{"id":"a"}}`, 0, false},
		{`{"type":"change","key":null}`, 0, false},
		{`{"type":"change","key":{"id":1234567890123456789012}}`, 0, false},
	}
	for _, tt := range tests {
		id, ok := parseID([]byte(tt.msg), keyPrefix)
		if id != tt.id || ok != tt.want {
			t.Errorf("parseID(%s) = %d, %v; want %d, %v", tt.msg, id, ok, tt.id, tt.want)
		}
	}
}

// sentFrames is a socket that keeps what is written to it.
type sentFrames struct{ frames [][]byte }

func (s *sentFrames) write(p []byte) error {
	s.frames = append(s.frames, bytes.Clone(p))
	return nil
}

func (s *sentFrames) shutdown() {}

// TestCentrifugoMessages: Centrifugo's replies confirm the subscription,
// its pushes (several lines in one message) count as changes of the row
// their data names, and its ping is answered.
func TestCentrifugoMessages(t *testing.T) {
	sock := &sentFrames{}
	s := &subscriber{centrifugo: true, subscribed: make(chan struct{}), failed: make(chan struct{}), recv: make([]uint32, 10), sock: sock}
	s.message([]byte(`{"id":1,"connect":{"client":"c","version":"0.0.0 OSS","ping":25,"pong":true}}`+"\n"+`{"id":2,"subscribe":{}}`), time.Millisecond)
	select {
	case <-s.subscribed:
	default:
		t.Fatalf("not subscribed; problem %q", s.problem)
	}
	s.message([]byte(`{"push":{"channel":"bench","pub":{"data":{"id": 3, "payload": "p", "created_at": "2026-12-06T05:18:50+00:00"},"offset":1}}}`+"\n"+
		`{"push":{"channel":"bench","pub":{"data":{"id": 7, "payload": "q"}}}}`), 2*time.Millisecond)
	s.message([]byte(`{}`), 3*time.Millisecond)
	if s.problem != "" || s.messages != 2 || s.recv[3] == 0 || s.recv[7] == 0 || s.distinct.Load() != 2 {
		t.Errorf("problem %q, %d messages, receipts of 3 and 7: %d, %d", s.problem, s.messages, s.recv[3], s.recv[7])
	}
	if len(sock.frames) != 1 || !bytes.Equal(sock.frames[0][6:], maskedWith(sock.frames[0][2:6], []byte(`{}`))) {
		t.Errorf("sent %x, want one masked {} (the ping's answer)", sock.frames)
	}
	s.message([]byte(`{"id":3,"error":{"code":103,"message":"permission denied"}}`), 4*time.Millisecond)
	if !strings.Contains(s.problem, "permission denied") {
		t.Errorf("an error reply left problem %q", s.problem)
	}
}

// maskedWith masks p with a WebSocket frame's 4-byte key.
func maskedWith(key, p []byte) []byte {
	out := make([]byte, len(p))
	for i := range p {
		out[i] = p[i] ^ key[i%4]
	}
	return out
}

func FuzzParseID(f *testing.F) {
	f.Add([]byte(`{"type":"change","key":{"id":42}}`))
	f.Add([]byte(`"key":{"id":`))
	f.Fuzz(func(t *testing.T, msg []byte) {
		if id, ok := parseID(msg, keyPrefix); ok && id < 0 {
			t.Fatalf("negative id %d", id)
		}
	})
}

func TestLatencyStats(t *testing.T) {
	us := make([]int32, 0, 1000)
	for i := 1000; i >= 1; i-- {
		us = append(us, int32(i*1000)) // 1..1000 ms
	}
	us = append(us, -500)
	l := latencyStats(us)
	if l.Samples != 1001 || l.Early != 1 || l.Min != -0.5 || l.Max != 1000 || l.P50 != 500 || l.P90 != 900 || l.P99 != 990 {
		t.Errorf("latencyStats = %+v", l)
	}
}

func TestParseMetrics(t *testing.T) {
	m := parseMetrics([]byte("# HELP x y\n# TYPE x gauge\npgfeed_connections 12\npgfeed_slow_consumers_total 3\n"))
	if m["pgfeed_connections"] != 12 || m["pgfeed_slow_consumers_total"] != 3 {
		t.Errorf("parseMetrics = %v", m)
	}
}

// TestAnalyzeLoss checks how missing changes are told apart: a change is
// lost when one sent after its COMMIT returned arrived, and undelivered
// otherwise.
func TestAnalyzeLoss(t *testing.T) {
	ms := time.Millisecond
	w := &writerProc{
		// id:           1      2       3       4
		begins:  []time.Duration{0, 1 * ms, 2 * ms, 10 * ms, 11 * ms},
		commits: []time.Duration{0, 3 * ms, 4 * ms, 12 * ms, 13 * ms},
	}
	recv := func(ids ...int64) *subscriber {
		s := &subscriber{recv: make([]uint32, 5)}
		for _, id := range ids {
			s.recv[id] = uint32(20*ms/time.Microsecond) + 1
			s.messages++
		}
		return s
	}
	subs := []*subscriber{
		recv(1, 2, 3, 4), // everything
		recv(1, 3),       // 2 lost: 3 was sent after 2 committed; 4 undelivered
		recv(1, 2),       // 3 and 4 undelivered
		recv(3, 4),       // 1 and 2 lost
	}
	rep := &LiveReport{Problems: []string{}}
	analyze(rep, w, subs, 0, 0, time.Second, time.Second)
	if rep.Committed != 4 || rep.Lost != 3 || rep.Undelivered != 3 || rep.ReceivedMin != 2 || rep.ReceivedMax != 4 || rep.Latency.Samples != 10 {
		t.Errorf("committed %d, lost %d, undelivered %d, received %d..%d, samples %d; want 4, 3, 3, 2..4, 10",
			rep.Committed, rep.Lost, rep.Undelivered, rep.ReceivedMin, rep.ReceivedMax, rep.Latency.Samples)
	}
	// Every receipt at 20 ms: change 1 committed at 3 ms, 2 at 4 ms, ...
	if f, sp := rep.FirstReceipt, rep.Spread; f.Samples != 4 || f.Min != 7 || f.Max != 17 || sp.Samples != 10 || sp.Max != 0 {
		t.Errorf("first receipt %+v, spread %+v; want 4 samples of 7..17 ms, 10 of 0", f, sp)
	}
	if len(rep.Problems) == 0 || !strings.Contains(rep.Problems[0], "subscriber 2 lacks ids 2") {
		t.Errorf("problems %q", rep.Problems)
	}
}
