package listener_test

import (
	"testing"

	"github.com/pgfeed/pgfeed/listener"
)

// FuzzParseCursor: any string parses to a cursor that prints back as the
// same string, or is refused; never a panic.
func FuzzParseCursor(f *testing.F) {
	for _, s := range []string{"t1-0", "t42-7", "t-1-0", "t01-1", "t9223372036854775807-2147483647", "", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := listener.ParseCursor(s)
		if err != nil {
			return
		}
		if c.String() != s {
			t.Fatalf("ParseCursor(%q) = %v, prints as %q", s, c, c.String())
		}
		if c.Tick < 1 || c.Pos < 0 {
			t.Fatalf("ParseCursor(%q) = %v: out of range", s, c)
		}
	})
}
