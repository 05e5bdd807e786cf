package main

import (
	"context"
	"errors"
	"fmt"
	"net"

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

// serve runs the change-feed server: the listener reading the trigger log
// and the HTTP server fanning it out. It returns nil after a clean shutdown
// (ctx cancelled). ready, when set, is called with the listening address
// once clients can connect.
func (a *app) serve(ctx context.Context, cfg *Config, ready func(addr string)) error {
	if cfg.Source != "trigger" {
		return &usageError{msg: fmt.Sprintf("source: %q is not available yet in this version; use source: trigger", cfg.Source)}
	}
	pool, err := pgxpool.New(ctx, cfg.Database.URL)
	if err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("connect to database: %w", err)
	}
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

	cat := triggers.NewCatalog(pool, 0)
	policies, err := a.policies(ctx, cfg, cat)
	if err != nil {
		return err
	}

	src := listener.New(listener.Config{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			return pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
		},
		Retention:   cfg.Retention,
		NotifyBelow: notifyBelow(cfg.Trigger.NotifyBelow),
		Logger:      a.log.With("component", "listener"),
	})
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
	srv, err := feed.New(feed.Config{
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
		Store:            listener.Log{DB: pool},
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
	})
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.HTTP.Listen)
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
			return nil, &configError{msg: fmt.Sprintf("policies[%d].table: %s does not exist or is not captured (run \"pgfeed triggers enable %s\")", i, name, name)}
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
