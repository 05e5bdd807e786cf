package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/pgfeed/pgfeed/feed"
	"github.com/pgfeed/pgfeed/internal/token"
	"github.com/pgfeed/pgfeed/listener"
	"github.com/pgfeed/pgfeed/migrations"
	"github.com/pgfeed/pgfeed/subscriptions"
	"github.com/pgfeed/pgfeed/triggers"
)

func (a *app) serveCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the change-feed server until SIGINT or SIGTERM",
		Args:  noArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadConfig(cmd.Flags())
			if err != nil {
				return err
			}
			return a.serve(cmd.Context(), cfg, nil)
		}),
	}
}

// changeSource is what serve needs of a listener, of either source.
type changeSource interface {
	Run(ctx context.Context, emit func(listener.Batch) error) error
	Ready() <-chan struct{}
	Position() listener.Cursor
	Live() bool
}

// serve runs the change-feed server: the listener reading the trigger log
// (or the logical replication slot) and the HTTP server fanning it out. It
// returns nil after a clean shutdown (ctx cancelled). ready, when set, is
// called with the listening address once clients can connect.
func (a *app) serve(ctx context.Context, cfg *Config, ready func(addr string)) error {
	pool, err := pgxpool.New(ctx, cfg.Database.URL)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}

	var (
		cat     *triggers.Catalog
		src     changeSource
		logical *listener.Logical
		srv     *feed.Server // set once made; the logical source asks it how far to confirm
	)
	switch cfg.Source {
	case "logical":
		// pgfeed's own schema is not used: the slot is the log.
		repl, err := listener.ReplicationConnector(cfg.Database.URL)
		if err != nil {
			return fmt.Errorf("connect to database: %w", err)
		}
		logical = listener.NewLogical(listener.LogicalConfig{
			DB:             pool,
			Replicate:      repl,
			Slot:           cfg.Logical.Slot,
			Publication:    cfg.Logical.Publication,
			Keep:           func() listener.Cursor { return srv.HistoryStart() },
			MaxRetainedWAL: cfg.Logical.MaxRetainedWALBytes,
			Logger:         a.log.With("component", "listener"),
		})
		if err := logical.Setup(ctx); err != nil {
			if errors.Is(err, listener.ErrRefused) {
				return &configError{msg: err.Error()}
			}
			return fmt.Errorf("set up logical replication: %w", err)
		}
		cat = triggers.NewPublicationCatalog(pool, cfg.Logical.Publication, 0)
		src = logical
	default:
		db, err := openSQL(ctx, cfg.Database.URL)
		if err != nil {
			return err
		}
		pending, err := migrations.Pending(ctx, db)
		db.Close()
		if err != nil {
			return err
		}
		if pending > 0 {
			return fmt.Errorf("pgfeed's schema is %d migration(s) behind: run \"pgfeed migrate up\" first", pending)
		}
		cat = triggers.NewCatalog(pool, 0)
		src = listener.New(listener.Config{
			Connect: func(ctx context.Context) (*pgx.Conn, error) {
				return pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
			},
			Retention:   cfg.Retention,
			NotifyBelow: notifyBelow(cfg.Trigger.NotifyBelow),
			Logger:      a.log.With("component", "listener"),
		})
	}

	policies, err := a.policies(ctx, cfg, cat)
	if err != nil {
		return err
	}
	var verifier feed.Verifier
	if j := cfg.Auth.JWT; j.Secret != "" || j.JWKSURL != "" || j.JWKSFile != "" {
		v, err := token.New(token.Config{Secret: j.Secret, JWKSURL: j.JWKSURL, JWKSFile: j.JWKSFile, Audience: j.Audience, Issuer: j.Issuer})
		if err != nil {
			return &configError{msg: fmt.Sprintf("auth.jwt: %v", err)}
		}
		if err := v.Prefetch(ctx); err != nil {
			// Not fatal: the keys are fetched again when a token needs them.
			a.log.Warn("fetch JWKS", "url", j.JWKSURL, "err", err)
		}
		verifier = v
	}
	var rls feed.RLSChecker
	for _, p := range cfg.Policies {
		if p.RLS {
			// Row-level security checks get their own small pool, so that
			// they can never starve the rest of pgfeed of connections.
			rcfg := pool.Config().Copy()
			rcfg.MaxConns = 4
			rpool, err := pgxpool.NewWithConfig(ctx, rcfg)
			if err != nil {
				return fmt.Errorf("connect to database: %w", err)
			}
			defer rpool.Close()
			rls = &subscriptions.RLS{Pool: rpool}
			break
		}
	}
	fcfg := feed.Config{
		RLS:              rls,
		Listen:           cfg.HTTP.Listen,
		AllowedOrigins:   cfg.HTTP.AllowedOrigins,
		Anonymous:        cfg.Auth.Anonymous,
		Verifier:         verifier,
		MaxConnections:   cfg.Limits.Connections,
		MaxSubscriptions: cfg.Limits.Subscriptions,
		SubscribeRate:    cfg.Limits.SubscribesPerSecond,
		Policies:         policies,
		Catalog:          cat,
		Ready: func(ctx context.Context) error {
			if err := pool.Ping(ctx); err != nil {
				return fmt.Errorf("database unreachable: %w", err)
			}
			if !src.Live() {
				return errors.New("the change listener is reconnecting")
			}
			return nil
		},
		Logger: a.log.With("component", "feed"),
	}
	if logical != nil {
		// No change log: resumes come from memory, and a cursor beyond
		// this node's position is checked against the WAL.
		fcfg.Newest = logical.Newest
		fcfg.Metrics = func(w io.Writer) { writeSlotMetrics(w, logical) }
	} else {
		fcfg.Store = listener.Log{DB: pool}
	}
	srv, err = feed.New(fcfg)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.HTTP.Listen)
	if errors.Is(err, syscall.EADDRINUSE) {
		// The configuration is right; another process holds the port.
		return fmt.Errorf("http.listen: %s is in use by another process: %w", cfg.HTTP.Listen, err)
	}
	if err != nil {
		return &usageError{msg: fmt.Sprintf("http.listen: cannot listen on %s: %v", cfg.HTTP.Listen, err)}
	}

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := src.Run(gctx, srv.Emit); err != nil {
			return fmt.Errorf("change listener: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		select {
		case <-src.Ready():
			srv.Start(src.Position())
		case <-gctx.Done():
			return nil
		}
		a.log.Info("serving", "listen", l.Addr().String(), "source", cfg.Source)
		if ready != nil {
			ready(l.Addr().String())
		}
		return nil
	})
	g.Go(func() error { return srv.Serve(gctx, l) })
	err = g.Wait()
	if ctx.Err() != nil && err == nil {
		a.log.Info("stopped")
	}
	return err
}

// writeSlotMetrics writes the logical source's gauges in Prometheus text.
func writeSlotMetrics(w io.Writer, l *listener.Logical) {
	fmt.Fprintf(w, "# HELP pgfeed_slot_retained_wal_bytes WAL the replication slot keeps (-1 until measured, every 30 s); compare with logical.max_retained_wal.\n# TYPE pgfeed_slot_retained_wal_bytes gauge\npgfeed_slot_retained_wal_bytes %d\n", l.RetainedWAL())
	fmt.Fprintf(w, "# HELP pgfeed_slot_confirmed_lsn The WAL position last confirmed to the replication slot.\n# TYPE pgfeed_slot_confirmed_lsn gauge\npgfeed_slot_confirmed_lsn %d\n", uint64(l.Confirmed()))
}

// policies compiles the configured policies and checks them against the
// captured tables: a policy naming a missing table or column is a
// configuration error.
func (a *app) policies(ctx context.Context, cfg *Config, cat *triggers.Catalog) (*subscriptions.Policies, error) {
	ps := make([]subscriptions.Policy, len(cfg.Policies))
	for i, p := range cfg.Policies {
		ps[i] = subscriptions.Policy{Table: p.Table, Roles: p.Roles, Filter: p.Filter, Columns: p.Columns, RLS: p.RLS}
	}
	compiled, err := subscriptions.CompilePolicies(ps)
	if err != nil {
		return nil, &configError{msg: err.Error()}
	}
	tables := map[string]*subscriptions.Table{}
	for i, p := range ps {
		name := p.Table
		t, err := cat.Table(ctx, qualifyTable(name))
		if errors.Is(err, subscriptions.ErrUnknownTable) {
			return nil, &configError{msg: fmt.Sprintf("policies[%d].table: %s does not exist or is not captured with source: %s (run \"pgfeed triggers enable %s\")", i, name, cfg.Source, name)}
		}
		if err != nil {
			return nil, err
		}
		tables[qualifyTable(name)] = t
	}
	if err := compiled.Check(tables); err != nil {
		return nil, &configError{msg: err.Error()}
	}
	return compiled, nil
}

func qualifyTable(name string) string {
	for i := 0; i < len(name); i++ {
		if name[i] == '.' {
			return name
		}
	}
	return "public." + name
}

// notifyBelow maps trigger.notify_below to listener.Config.NotifyBelow,
// where 0 means the default and a negative rate "never".
func notifyBelow(rate int) int {
	if rate == 0 {
		return -1
	}
	return rate
}
