package listener

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/pgfeed/pgfeed/internal/pgtest"
)

func TestParseSnapshot(t *testing.T) {
	s, err := parseSnapshot("10:20:12,15")
	if err != nil {
		t.Fatal(err)
	}
	for x, want := range map[uint64]bool{1: true, 9: true, 10: true, 11: true, 12: false, 15: false, 19: true, 20: false, 99: false} {
		if got := s.visible(x); got != want {
			t.Errorf("visible(%d) = %v, want %v", x, got, want)
		}
	}
	for _, bad := range []string{"", "1", "1:2", "a:2:", "1:b:", "3:2:", "1:5:7", "1:5:0", "1:5:2,", "1:5:x"} {
		if _, err := parseSnapshot(bad); err == nil {
			t.Errorf("parseSnapshot(%q) succeeded", bad)
		}
	}
	if (snapshot{}).visible(0) || (snapshot{}).visible(5) {
		t.Error("the zero snapshot sees a transaction")
	}
}

// FuzzParseSnapshot: a parsed snapshot prints back to what it was read from
// and never sees a transaction it listed as running or one at xmax or later.
func FuzzParseSnapshot(f *testing.F) {
	for _, s := range []string{"10:20:12,15", "5:5:", "1:2:1", "0:0:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		s, err := parseSnapshot(text)
		if err != nil {
			return
		}
		for _, x := range s.xip {
			if s.visible(x) {
				t.Fatalf("%q: running %d visible", text, x)
			}
		}
		if s.visible(s.xmax) {
			t.Fatalf("%q: xmax visible", text)
		}
		if s.xmin > 0 && !s.visible(s.xmin-1) {
			t.Fatalf("%q: below xmin not visible", text)
		}
		again := strconv.FormatUint(s.xmin, 10) + ":" + strconv.FormatUint(s.xmax, 10) + ":"
		for i, x := range s.xip {
			if i > 0 {
				again += ","
			}
			again += strconv.FormatUint(x, 10)
		}
		if s2, err := parseSnapshot(again); err != nil || s2.xmin != s.xmin || s2.xmax != s.xmax || len(s2.xip) != len(s.xip) {
			t.Fatalf("%q: printed as %q, read back as %+v, %v", text, again, s2, err)
		}
	})
}

// TestStaleWakeUpSkipped: a NOTIFY from a transaction the last emitted
// tick already saw does not wake the reader; any other does.
func TestStaleWakeUpSkipped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.NewMigratedDB(t)
	conn := pgtest.Connect(t, url)
	if _, err := conn.Exec(ctx, `LISTEN pgfeed`); err != nil {
		t.Fatal(err)
	}
	notifier := pgtest.Connect(t, url)
	s := New(Config{})
	s.setLast(Tick{ID: 1, Snapshot: "100:110:105"})
	for _, c := range []struct {
		payload string
		woken   bool
	}{
		{"99", false}, {"104", false}, {"100", false}, {"105", true}, {"110", true}, {"", true}, {"x", true},
	} {
		if _, err := notifier.Exec(ctx, `SELECT pg_notify('pgfeed', $1)`, c.payload); err != nil {
			t.Fatal(err)
		}
		// Wait long for a wake-up, briefly for the lack of one: a skipped
		// notification has arrived once the wait is over.
		d := 10 * time.Second
		if !c.woken {
			d = 200 * time.Millisecond
		}
		woken, err := s.notified(ctx, conn, d)
		if err != nil {
			t.Fatal(err)
		}
		if woken != c.woken {
			t.Errorf("NOTIFY %q: woken %v, want %v", c.payload, woken, c.woken)
		}
	}
}
