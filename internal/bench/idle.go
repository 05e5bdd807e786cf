package bench

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Idle measures the server's resident memory per idle WebSocket
// connection, each with one subscription to the whole table and no changes
// flowing: (VmRSS after - VmRSS before) / Connections, each sampled after
// Settle. Default: 10,000 connections.
func Idle(ctx context.Context, o Options) (_ *IdleReport, err error) {
	if o.Connections == 0 {
		o.Connections = 10_000
	}
	if err := o.common(); err != nil {
		return nil, err
	}
	rep := &IdleReport{
		Bench:         "idle",
		Connections:   o.Connections,
		SettleSeconds: seconds(o.Settle),
		Problems:      []string{},
	}
	tb, err := openTestbed(ctx, &o, o.Connections)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, tb.close()) }()
	rep.Machine = tb.machine
	srv := tb.srv
	rep.Server.PID = srv.pid()
	o.logf("server pid %d ready on %s; letting it settle for %s", srv.pid(), srv.addr, o.Settle)

	if err := settle(ctx, o.Settle, srv); err != nil {
		return nil, err
	}
	if rep.RSSBeforeBytes, rep.AnonBeforeBytes, err = srv.memory(); err != nil {
		return nil, err
	}

	before, err := srv.metrics(ctx)
	if err != nil {
		return nil, err
	}
	o.logf("opening %d WebSocket connections with one subscription each", o.Connections)
	start := time.Now()
	d, err := newDialer(srv, start)
	if err != nil {
		return nil, err
	}
	defer d.stop()
	subs, err := openAll(ctx, d, o.Connections, 0, &o)
	if err != nil {
		if done, how := srv.exited(); done {
			return nil, fmt.Errorf("%w (the server exited: %s; %s)", err, how, srv.logNote())
		}
		return nil, err
	}
	defer closeAll(subs)
	rep.ConnectSeconds = seconds(time.Since(start))
	m, err := srv.metrics(ctx)
	if err != nil {
		return nil, err
	}
	rep.ServerConnections = int64(m["pgfeed_connections"])
	rep.ServerSubscriptions = int64(m["pgfeed_subscriptions"])
	o.logf("%d connections subscribed in %.2f s; letting the server settle for %s", o.Connections, rep.ConnectSeconds, o.Settle)

	if err := settle(ctx, o.Settle, srv); err != nil {
		return nil, err
	}
	if rep.RSSAfterBytes, rep.AnonAfterBytes, err = srv.memory(); err != nil {
		return nil, err
	}
	after, err := srv.metrics(ctx)
	if err != nil {
		return nil, err
	}
	n := float64(o.Connections)
	rep.GoroutinesPerConnection = (after["go_goroutines"] - before["go_goroutines"]) / n
	rep.StackPerConnection = (after["go_stack_bytes"] - before["go_stack_bytes"]) / n
	rep.HeapPerConnection = (after["go_heap_objects_bytes"] - before["go_heap_objects_bytes"]) / n
	rep.RSSPerConnection = float64(rep.RSSAfterBytes-rep.RSSBeforeBytes) / n
	rep.AnonPerConnection = float64(rep.AnonAfterBytes-rep.AnonBeforeBytes) / n

	if rep.ServerConnections != int64(o.Connections) || rep.ServerSubscriptions != int64(o.Connections) {
		rep.Problems = append(rep.Problems, fmt.Sprintf("the server's metrics count %d connections and %d subscriptions, not %d",
			rep.ServerConnections, rep.ServerSubscriptions, o.Connections))
	}
	ended := 0
	var reasons []string
	for _, s := range subs {
		if s.ended() {
			ended++
			if len(reasons) < 3 {
				reasons = append(reasons, s.closeReason())
			}
		}
	}
	if ended > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d of %d idle connections were closed by the server before the end (%v)", ended, o.Connections, reasons))
	}

	o.logf("stopping the server (SIGTERM) with %d connections open", o.Connections)
	exit, took := srv.stop()
	rep.Server.Exit = exit
	rep.Server.ShutdownSeconds = seconds(took)
	if exit != "clean" {
		rep.Problems = append(rep.Problems, "server shutdown: the server "+exit)
	}
	waitEnded(subs, 5*time.Second)
	closeAll(subs)
	var changes int64
	var problems []string
	for _, s := range subs {
		changes += s.messages
		if s.problem != "" && len(problems) < 3 {
			problems = append(problems, s.problem)
		}
	}
	if changes > 0 {
		rep.Problems = append(rep.Problems, fmt.Sprintf("%d change messages arrived although nothing was written", changes))
	}
	for _, p := range problems {
		rep.Problems = append(rep.Problems, "a connection got "+p)
	}
	return rep, nil
}

// settle leaves the server alone for d before a memory sample: a delay
// for its garbage collector and scavenger, not a synchronization. It fails
// when the server exits meanwhile.
func settle(ctx context.Context, d time.Duration, srv *server) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-srv.done:
		return fmt.Errorf("the server exited (%s); %s", srv.exitText(), srv.logNote())
	}
}
