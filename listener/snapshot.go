package listener

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// snapshot is a parsed pg_snapshot: which transactions had finished when it
// was taken. The zero snapshot sees none.
type snapshot struct {
	xmin, xmax uint64
	xip        []uint64 // running at the time, each in [xmin, xmax)
}

// parseSnapshot reads pg_snapshot's text form, "xmin:xmax:xip,xip,...".
func parseSnapshot(text string) (snapshot, error) {
	var s snapshot
	xmin, rest, ok1 := strings.Cut(text, ":")
	xmax, xip, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 {
		return snapshot{}, fmt.Errorf("snapshot %q: want xmin:xmax:xip", text)
	}
	var err error
	if s.xmin, err = strconv.ParseUint(xmin, 10, 64); err != nil {
		return snapshot{}, fmt.Errorf("snapshot %q: xmin: %w", text, err)
	}
	if s.xmax, err = strconv.ParseUint(xmax, 10, 64); err != nil {
		return snapshot{}, fmt.Errorf("snapshot %q: xmax: %w", text, err)
	}
	if s.xmin > s.xmax {
		return snapshot{}, fmt.Errorf("snapshot %q: xmin after xmax", text)
	}
	if xip == "" {
		return s, nil
	}
	for one := range strings.SplitSeq(xip, ",") {
		x, err := strconv.ParseUint(one, 10, 64)
		if err != nil {
			return snapshot{}, fmt.Errorf("snapshot %q: running transaction: %w", text, err)
		}
		if x < s.xmin || x >= s.xmax {
			return snapshot{}, fmt.Errorf("snapshot %q: running transaction %d outside [xmin, xmax)", text, x)
		}
		s.xip = append(s.xip, x)
	}
	return s, nil
}

// visible reports whether transaction x had finished when s was taken, as
// pg_visible_in_snapshot does for a committed x.
func (s snapshot) visible(x uint64) bool {
	switch {
	case x < s.xmin:
		return true
	case x >= s.xmax:
		return false
	default:
		return !slices.Contains(s.xip, x)
	}
}
