package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"syscall"
	"time"
)

// Latency measures end-to-end latency from COMMIT to client receipt.
// Defaults: 100 subscribers, 1,000 changes/s, 20 s measured after a 5 s
// warm-up.
func Latency(ctx context.Context, o Options) (*LiveReport, error) {
	if o.Subscribers == 0 {
		o.Subscribers = 100
	}
	if o.Rate == 0 {
		o.Rate = 1000
	}
	if o.Duration == 0 {
		o.Duration = 20 * time.Second
	}
	return live(ctx, "latency", o)
}

// Fanout measures deliveries per second and latency with many
// subscribers. Defaults: 10,000 subscribers, 100 changes/s (1,000,000
// deliveries/s), 20 s measured after a 5 s warm-up.
func Fanout(ctx context.Context, o Options) (*LiveReport, error) {
	if o.Subscribers == 0 {
		o.Subscribers = 10_000
	}
	if o.Rate == 0 {
		o.Rate = 100
	}
	if o.Duration == 0 {
		o.Duration = 20 * time.Second
	}
	return live(ctx, "fanout", o)
}

// maxTables bounds the memory of the receipt tables of a live run.
const maxTables = 4 << 30

// live runs a load with subscribers and a paced writer. It returns an error
// when the bench could not run; what the run observed going wrong is in
// the report's Problems.
func live(ctx context.Context, name string, o Options) (_ *LiveReport, err error) {
	if err := o.common(); err != nil {
		return nil, err
	}
	if o.Subscribers == 0 || o.Rate == 0 || o.Duration == 0 {
		return nil, errors.New("subscribers, rate and duration must be positive")
	}
	if o.Rate > 1_000_000 {
		return nil, fmt.Errorf("rate %d is beyond what one writer pool can pace", o.Rate)
	}
	// Rows 1..total; the first warmupIDs are the warm-up's.
	total := int64(o.Rate) * int64(o.Warmup+o.Duration) / int64(time.Second)
	warmupIDs := int64(o.Rate) * int64(o.Warmup) / int64(time.Second)
	if total < 1 {
		return nil, fmt.Errorf("%d changes/s for %s make no change at all", o.Rate, o.Warmup+o.Duration)
	}
	// Each subscriber keeps 4 bytes per row, and the analysis 4 more.
	if need := 8 * (total + 1) * int64(o.Subscribers); need > maxTables {
		return nil, fmt.Errorf("%d subscribers x %d changes would need %d MiB of receipt tables, more than the %d MiB allowed: lower the rate, the duration or the subscribers",
			o.Subscribers, total, need>>20, maxTables>>20)
	}
	rep := &LiveReport{
		Bench:            name,
		Subscribers:      o.Subscribers,
		TargetRate:       o.Rate,
		WarmupSeconds:    seconds(o.Warmup),
		DurationSeconds:  seconds(o.Duration),
		Writers:          o.Writers,
		TargetDeliveries: int64(o.Rate) * int64(o.Subscribers),
		Problems:         []string{},
	}
	tb, err := openTestbed(ctx, &o, o.Subscribers)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, tb.close()) }()
	rep.Machine = tb.machine
	db, srv := tb.db, tb.srv
	rep.Server.PID = srv.pid()
	o.logf("server pid %d ready on %s", srv.pid(), srv.addr)

	epoch := time.Now()

	o.logf("opening %d WebSocket subscribers", o.Subscribers)
	connStart := time.Now()
	d, err := newDialer(srv, epoch)
	if err != nil {
		return nil, err
	}
	defer d.stop()
	subs, err := openAll(ctx, d, o.Subscribers, int(total), &o)
	if err != nil {
		if done, how := srv.exited(); done {
			return nil, fmt.Errorf("%w (the server exited: %s; %s)", err, how, srv.logNote())
		}
		return nil, err
	}
	defer closeAll(subs)
	rep.ConnectSeconds = seconds(time.Since(connStart))
	o.logf("%d subscribers subscribed in %.2f s", o.Subscribers, rep.ConnectSeconds)

	o.logf("writing %d changes at %d/s (%s warm-up, then %s measured) from a writer process", total, o.Rate, o.Warmup, o.Duration)
	w, err := startWriter(o.Writer, WriterConfig{DatabaseURL: db.url, Rate: o.Rate, Total: total, Writers: o.Writers}, epoch)
	if err != nil {
		return nil, err
	}
	defer w.stop()
	select {
	case <-w.started:
	case <-w.done:
		if w.err != nil {
			return nil, w.err
		}
		return nil, errors.New("the writer process ended before it started writing")
	case <-ctx.Done():
		return nil, ctx.Err()
	}

	readyz := srv.probe(ctx, srv.readyPath(), time.Second, probeTimeout)
	defer readyz.stop()

	var srvCPU0, cliCPU0 time.Duration
	cpuStart := time.Now()
	warm := time.NewTimer(o.Warmup)
	defer warm.Stop()
	progress := time.NewTicker(5 * time.Second)
	defer progress.Stop()
	crashed := false
	srvDone := srv.done // nil once seen closed
writing:
	for {
		select {
		case <-w.done:
			if w.err != nil && !crashed {
				return nil, fmt.Errorf("write changes: %w", w.err)
			}
			break writing
		case <-warm.C:
			srvCPU0, _ = srv.cpu()
			cliCPU0, _ = procCPU("/proc/self/stat")
			cpuStart = time.Now()
		case <-progress.C:
			o.logf("  %d committed; slowest subscriber has %d", w.committed.Load(), minDistinct(subs))
		case <-srvDone:
			srvDone = nil
			crashed = true
			rep.Problems = append(rep.Problems, fmt.Sprintf("the server exited during the load (%s); %s", srv.exitText(), srv.logNote()))
			_ = w.cmd.Process.Signal(syscall.SIGTERM)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	cpuWindow := time.Since(cpuStart)
	if srvCPU1, err := srv.cpu(); err == nil && srvCPU0 > 0 {
		rep.Server.CPUSeconds = seconds(srvCPU1 - srvCPU0)
		rep.Server.CPUPercent = math.Round(100 * float64(srvCPU1-srvCPU0) / float64(cpuWindow))
	}
	if cliCPU1, err := procCPU("/proc/self/stat"); err == nil && cliCPU0 > 0 {
		rep.ClientCPUSeconds = seconds(cliCPU1 - cliCPU0)
	}
	committed := w.committed.Load()
	o.logf("%d changes committed; waiting up to %s for the deliveries", committed, o.Drain)

	// Drain: wait until every subscriber still connected has every change.
	if !crashed {
		drained := waitDrained(ctx, subs, committed, o.Drain, srv.done)
		if !drained && ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	rep.Readyz = readyz.stop()
	if rep.Readyz.Failed > 0 || rep.Readyz.MaxSeconds > 5 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("GET %s answered slowly or not at all during the load: %d of %d probes failed (allowed %s), %d took over 1 s, the slowest %.1f s",
			srv.readyPath(), rep.Readyz.Failed, rep.Readyz.Probes, probeTimeout, rep.Readyz.Over1s, rep.Readyz.MaxSeconds))
	}
	if !crashed && !srv.centrifugo {
		if m, err := srv.metrics(ctx); err != nil {
			rep.Problems = append(rep.Problems, err.Error())
		} else {
			rep.Server.MetricsRead = true
			rep.Server.SlowConsumers = int64(m["pgfeed_slow_consumers_total"])
			rep.Server.Deliveries = int64(m["pgfeed_deliveries_total"])
		}
	}
	if !crashed {
		if rss, _, err := srv.memory(); err == nil {
			rep.Server.RSSBytes = rss
		}
	}

	// Whoever has ended before SIGTERM was cut off by the server.
	for _, s := range subs {
		if s.ended() {
			if rep.CutOffReasons == nil {
				rep.CutOffReasons = make(map[string]int)
			}
			rep.CutOff++
			rep.CutOffReasons[s.closeReason()]++
		}
	}
	o.logf("stopping the server (SIGTERM)")
	end := time.Duration(time.Now().UnixNano() - epoch.UnixNano())
	exit, took := srv.stop()
	rep.Server.Exit = exit
	rep.Server.ShutdownSeconds = seconds(took)
	if exit != "clean" && !crashed {
		rep.Problems = append(rep.Problems, "server shutdown: the server "+exit)
	}
	waitEnded(subs, 5*time.Second)
	closeAll(subs)

	analyze(rep, w, subs, warmupIDs, w.start+o.Warmup, o.Duration, end)
	return rep, nil
}

// waitDrained polls until every subscriber that is still connected has
// received committed distinct changes, the timeout passes, ctx ends or
// stop is closed. It reports whether everything arrived.
func waitDrained(ctx context.Context, subs []*subscriber, committed int64, timeout time.Duration, stop <-chan struct{}) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		missing := false
		for _, s := range subs {
			if !s.ended() && s.distinct.Load() < committed {
				missing = true
				break
			}
		}
		if !missing {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return false
		case <-stop:
			return false
		case <-tick.C:
		}
	}
}

func minDistinct(subs []*subscriber) int64 {
	m := int64(math.MaxInt64)
	for _, s := range subs {
		m = min(m, s.distinct.Load())
	}
	return m
}

// analyze computes the figures and the correctness problems once every
// writer and reader has ended. windowStart is the measured window's start
// since epoch, end when the run ended.
//
// A change a subscriber lacks is lost when the subscriber received another
// change whose INSERT was sent after the first one's COMMIT had returned:
// changes arrive in commit order with no gap, so the first should have come
// before. Otherwise it is undelivered: perhaps still queued when the run
// ended.
func analyze(rep *LiveReport, w *writerProc, subs []*subscriber, warmupIDs int64, windowStart, window, end time.Duration) {
	commits, begins := w.commits, w.begins
	var lastCommit time.Duration
	var lastMeasured time.Duration
	for id := int64(1); id < int64(len(commits)); id++ {
		c := commits[id]
		if c == 0 {
			continue
		}
		rep.Committed++
		lastCommit = max(lastCommit, c)
		if id > warmupIDs {
			rep.Measured++
			lastMeasured = max(lastMeasured, c)
		}
	}
	if span := lastMeasured - windowStart; rep.Measured > 0 && span > 0 {
		rep.WriteRate = math.Round(10*float64(rep.Measured)/span.Seconds()) / 10
	}

	windowEnd := windowStart + window
	samples := make([]int32, 0, int(rep.Measured)*len(subs))
	var inWindow int64
	var lastRecv time.Duration
	rep.ReceivedMin = math.MaxInt64
	lossySubs, firstLossy := 0, -1
	var firstLost []int64
	var problems []string
	for i, s := range subs {
		rep.Deliveries += s.messages
		rep.Duplicates += s.dups
		rep.Unexpected += s.unexpected
		if s.problem != "" && !slices.Contains(problems, s.problem) {
			problems = append(problems, s.problem)
		}
		// The latest begin of a change this subscriber received.
		var seen time.Duration
		for id := int64(1); id < int64(len(s.recv)); id++ {
			if s.recv[id] != 0 && commits[id] != 0 {
				seen = max(seen, begins[id])
			}
		}
		var distinct, lost int64
		for id := int64(1); id < int64(len(s.recv)); id++ {
			r := s.recv[id]
			c := commits[id]
			switch {
			case r == 0 && c != 0 && c < seen:
				lost++
				if firstLossy < 0 {
					firstLossy = i
				}
				if firstLossy == i && len(firstLost) < 10 {
					firstLost = append(firstLost, id)
				}
				continue
			case r == 0 && c != 0:
				rep.Undelivered++
				continue
			case r == 0:
				continue
			case c == 0:
				rep.Unexpected++ // received, but its INSERT never returned
				continue
			}
			distinct++
			at := time.Duration(r-1) * time.Microsecond
			lastRecv = max(lastRecv, at)
			if at >= windowStart && at < windowEnd {
				inWindow++
			}
			if id > warmupIDs {
				samples = append(samples, clampInt32(int64((at-c)/time.Microsecond)))
			}
		}
		rep.ReceivedMin = min(rep.ReceivedMin, distinct)
		rep.ReceivedMax = max(rep.ReceivedMax, distinct)
		rep.Lost += lost
		if lost > 0 {
			lossySubs++
		}
	}
	if len(subs) == 0 {
		rep.ReceivedMin = 0
	}
	if window > 0 {
		rep.DeliveriesPerSecond = math.Round(float64(inWindow) / window.Seconds())
	}
	if lastRecv > lastCommit {
		rep.DrainSeconds = seconds(lastRecv - lastCommit)
	}
	rep.EndSeconds = seconds(end - lastCommit)
	rep.Latency = latencyStats(samples)
	rep.FirstReceipt, rep.Spread = splitLatency(commits, subs, warmupIDs)

	if rep.Lost > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d changes lost (missing although a later-committed change arrived): %d of %d subscribers; subscriber %d lacks ids %s",
			rep.Lost, lossySubs, len(subs), firstLossy+1, joinIDs(firstLost)))
	}
	if rep.Undelivered > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d deliveries (%.1f%% of %d) had not arrived when the run ended, %.0f s after the last commit: the server fell behind",
			rep.Undelivered, 100*float64(rep.Undelivered)/float64(rep.Committed*int64(len(subs))), rep.Committed*int64(len(subs)), rep.EndSeconds))
	}
	if rep.Latency.Samples < rep.Measured*int64(len(subs)) {
		rep.Problems = append(rep.Problems, fmt.Sprintf("the latency figures cover only the %d of %d measured deliveries that arrived", rep.Latency.Samples, rep.Measured*int64(len(subs))))
	}
	if rep.Duplicates > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d changes received more than once", rep.Duplicates))
	}
	if rep.Unexpected > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d change messages for rows never committed (or unreadable)", rep.Unexpected))
	}
	if rep.CutOff > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d of %d subscribers were disconnected by the server before the end: %v", rep.CutOff, len(subs), rep.CutOffReasons))
	}
	if rep.Server.SlowConsumers > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("the server counted %d slow consumers", rep.Server.SlowConsumers))
	}
	for _, p := range problems {
		rep.Problems = append(rep.Problems, "a subscriber got "+p)
	}
	if rep.Measured > 0 && rep.WriteRate < 0.95*float64(rep.TargetRate) {
		rep.Problems = append(rep.Problems, fmt.Sprintf("the writers achieved %.1f changes/s, under the target %d/s: the figures are not at the requested load", rep.WriteRate, rep.TargetRate))
	}
}

func joinIDs(ids []int64) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	out := strings.Join(s, ", ")
	if len(ids) == 10 {
		out += ", ..."
	}
	return out
}

// latencyStats summarizes latencies in microseconds, in milliseconds.
// splitLatency splits the latency of the changes after the warm-up in two:
// from COMMIT to the change's first receipt by any subscriber (the source's
// pickup and the server's dispatch), and from that first receipt to each
// receipt (the fan-out's spread, 0 for the first subscriber).
func splitLatency(commits []time.Duration, subs []*subscriber, warmupIDs int64) (first, spread LatencyStats) {
	var firsts, spreads []int32
	for id := warmupIDs + 1; id < int64(len(commits)); id++ {
		if commits[id] == 0 {
			continue
		}
		earliest := int64(math.MaxInt64) // microseconds since the epoch
		for _, s := range subs {
			if id < int64(len(s.recv)) && s.recv[id] != 0 {
				earliest = min(earliest, int64(s.recv[id])-1)
			}
		}
		if earliest == math.MaxInt64 {
			continue
		}
		firsts = append(firsts, clampInt32(earliest-int64(commits[id]/time.Microsecond)))
		for _, s := range subs {
			if id < int64(len(s.recv)) && s.recv[id] != 0 {
				spreads = append(spreads, clampInt32(int64(s.recv[id])-1-earliest))
			}
		}
	}
	return latencyStats(firsts), latencyStats(spreads)
}

func clampInt32(v int64) int32 { return int32(max(min(v, math.MaxInt32), math.MinInt32)) }

func latencyStats(us []int32) LatencyStats {
	var l LatencyStats
	if len(us) == 0 {
		return l
	}
	slices.Sort(us)
	var sum int64
	for _, v := range us {
		sum += int64(v)
		if v < 0 {
			l.Early++
		}
	}
	ms := func(v int32) float64 { return math.Round(float64(v)) / 1000 }
	rank := func(p float64) int32 {
		i := int(math.Ceil(p*float64(len(us)))) - 1
		return us[max(0, min(i, len(us)-1))]
	}
	l.Samples = int64(len(us))
	l.Mean = math.Round(float64(sum)/float64(len(us))) / 1000
	l.P50 = ms(rank(0.50))
	l.P90 = ms(rank(0.90))
	l.P99 = ms(rank(0.99))
	l.P999 = ms(rank(0.999))
	l.Min = ms(us[0])
	l.Max = ms(us[len(us)-1])
	return l
}
