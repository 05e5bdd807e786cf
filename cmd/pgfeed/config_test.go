package main

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	cleanEnv(t)
	cfg, err := resolve(t, "migrate", "status")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Database:  DatabaseConfig{URL: "postgres://localhost:5432/postgres"},
		HTTP:      HTTPConfig{Listen: "127.0.0.1:8080"},
		Source:    "trigger",
		Trigger:   TriggerConfig{NotifyBelow: 2000},
		Logical:   LogicalConfig{Slot: "pgfeed", Publication: "pgfeed", MaxRetainedWAL: "1GB", MaxRetainedWALBytes: 1 << 30},
		Retention: 24 * time.Hour,
		Limits:    Limits{Connections: 10000, Subscriptions: 100, SubscribesPerSecond: 20},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", cfg, want)
	}
}

// The repository's own config.yaml is valid, documents every key and
// changes nothing: it yields the defaults.
func TestRepositoryConfigFile(t *testing.T) {
	cleanEnv(t)
	const path = "../../config.yaml"
	cfg, err := resolve(t, "migrate", "status", "--config", path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	defaults, err := resolve(t, "migrate", "status")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg, defaults) {
		t.Errorf("%s does not yield the defaults:\n got %+v\nwant %+v", path, cfg, defaults)
	}
	if cfg.Database.URLSet {
		t.Errorf("%s sets database.url, so pgfeed dev would not start a throwaway PostgreSQL", path)
	}
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range configKeys() {
		parts := strings.Split(k.name, ".")
		leaf := parts[len(parts)-1]
		if !strings.Contains(string(text), leaf+":") || !strings.Contains(string(text), envName(k.name)) {
			t.Errorf("%s does not document %s (%s)", path, k.name, envName(k.name))
		}
	}
	for _, p := range policyKeys() {
		if !strings.Contains(string(text), p+":") {
			t.Errorf("%s does not show the policy key %s", path, p)
		}
	}
}

func TestConfigPrecedence(t *testing.T) {
	cleanEnv(t)
	file := writeFile(t, "pgfeed.yaml", `
database:
  url: postgres://file-host/filedb
http:
  listen: file-host:1111
retention: 2h
`)

	// File only.
	cfg, err := resolve(t, "migrate", "status", "--config", file)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Database.URL != "postgres://file-host/filedb" || cfg.HTTP.Listen != "file-host:1111" || cfg.Retention != 2*time.Hour {
		t.Errorf("file: got url %q listen %q retention %s", cfg.Database.URL, cfg.HTTP.Listen, cfg.Retention)
	}
	if !cfg.Database.URLSet {
		t.Error("file: URLSet is false, want true")
	}
	if cfg.Source != "trigger" {
		t.Errorf("file: source %q, want the default trigger", cfg.Source)
	}

	// The environment overrides the file.
	t.Setenv("PGFEED_DATABASE_URL", "postgres://env-host/envdb")
	t.Setenv("PGFEED_HTTP_LISTEN", "env-host:2222")
	cfg, err = resolve(t, "migrate", "status", "--config", file)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Database.URL != "postgres://env-host/envdb" || cfg.HTTP.Listen != "env-host:2222" {
		t.Errorf("env: got url %q listen %q", cfg.Database.URL, cfg.HTTP.Listen)
	}
	if cfg.Retention != 2*time.Hour {
		t.Errorf("env: retention %s, want 2h from the file", cfg.Retention)
	}

	// Flags override both.
	cfg, err = resolve(t, "migrate", "status", "--config", file,
		"--database-url", "postgres://flag-host/flagdb", "--listen", "flag-host:3333")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Database.URL != "postgres://flag-host/flagdb" || cfg.HTTP.Listen != "flag-host:3333" {
		t.Errorf("flags: got url %q listen %q", cfg.Database.URL, cfg.HTTP.Listen)
	}
}

// Every key can be set through the environment.
func TestConfigEnvironment(t *testing.T) {
	cleanEnv(t)
	env := map[string]string{
		"PGFEED_DATABASE_URL":             "postgres://u@db.example/app",
		"PGFEED_HTTP_LISTEN":              ":9000",
		"PGFEED_HTTP_ALLOWED_ORIGINS":     "https://a.example,https://b.example:8443",
		"PGFEED_SOURCE":                   "logical",
		"PGFEED_TRIGGER_NOTIFY_BELOW":     "0",
		"PGFEED_LOGICAL_SLOT":             "node_1",
		"PGFEED_LOGICAL_PUBLICATION":      "pub",
		"PGFEED_LOGICAL_MAX_RETAINED_WAL": "512 MB",
		"PGFEED_RETENTION":                "90m",
		"PGFEED_LIMITS_CONNECTIONS":       "5",
		"PGFEED_AUTH_ANONYMOUS":           "true",
		"PGFEED_AUTH_JWT_SECRET":          "s3cret",
		"PGFEED_AUTH_JWT_JWKS_URL":        "https://auth.example/.well-known/jwks.json",
		"PGFEED_AUTH_JWT_AUDIENCE":        "aud",
		"PGFEED_AUTH_JWT_ISSUER":          "iss",
		"PGFEED_POLICIES":                 `[{"table":"public.orders","roles":["anon"],"columns":["id"],"filter":"id=gt.0","rls":true}]`,
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	cfg, err := resolve(t, "dev")
	if err != nil {
		t.Fatal(err)
	}
	want := &Config{
		Database: DatabaseConfig{URL: "postgres://u@db.example/app", URLSet: true},
		HTTP:     HTTPConfig{Listen: ":9000", AllowedOrigins: []string{"https://a.example", "https://b.example:8443"}},
		Source:   "logical",
		Trigger:  TriggerConfig{NotifyBelow: 0},
		Logical:  LogicalConfig{Slot: "node_1", Publication: "pub", MaxRetainedWAL: "512 MB", MaxRetainedWALBytes: 512 << 20},
		Auth: AuthConfig{Anonymous: true, JWT: JWTConfig{
			Secret: "s3cret", JWKSURL: "https://auth.example/.well-known/jwks.json", Audience: "aud", Issuer: "iss",
		}},
		Retention: 90 * time.Minute,
		Policies:  []Policy{{Table: "public.orders", Roles: []string{"anon"}, Filter: "id=gt.0", Columns: []string{"id"}, RLS: true}},
		Limits:    Limits{Connections: 5, Subscriptions: 100, SubscribesPerSecond: 20},
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("from the environment:\n got %+v\nwant %+v", cfg, want)
	}
}

func TestConfigPolicies(t *testing.T) {
	cleanEnv(t)
	file := writeFile(t, "config.yaml", `
policies:
  - table: public.orders
    roles: [authenticated]
    filter: "user_id=eq.{claims.sub}"
    columns: [id, status, total, user_id]
    rls: false
  - table: items
    roles: [anon, authenticated]
    rls: true
`)
	cfg, err := resolve(t, "migrate", "status", "--config", file)
	if err != nil {
		t.Fatal(err)
	}
	want := []Policy{
		{Table: "public.orders", Roles: []string{"authenticated"}, Filter: "user_id=eq.{claims.sub}", Columns: []string{"id", "status", "total", "user_id"}},
		{Table: "items", Roles: []string{"anon", "authenticated"}, RLS: true},
	}
	if !reflect.DeepEqual(cfg.Policies, want) {
		t.Errorf("policies:\n got %+v\nwant %+v", cfg.Policies, want)
	}
	if cfg.Database.URLSet {
		t.Error("URLSet is true, but no source set database.url")
	}
}

// A bad configuration exits with code 2 and one sentence naming the key,
// before any database is touched.
func TestConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		file string            // config file content; "" for none
		env  map[string]string // extra environment
		args []string          // extra arguments
		want []string          // substrings of stderr
	}{
		{name: "unknown top-level key", file: "htp:\n  listen: 127.0.0.1:1\n", want: []string{`unknown key "htp.listen"`, "pgfeed.yaml"}},
		{name: "unknown scalar key", file: "colour: blue\n", want: []string{`unknown key "colour"`}},
		{name: "unknown nested key", file: "http:\n  lisen: 127.0.0.1:1\n", want: []string{`unknown key "http.lisen"`, "listen"}},
		{name: "unknown deep key", file: "auth:\n  jwt:\n    secrett: x\n", want: []string{`unknown key "auth.jwt.secrett"`}},
		{name: "unknown policy key", file: "policies:\n  - table: public.orders\n    roles: [anon]\n    colums: [id]\n", want: []string{`unknown key "policies[0].colums"`}},
		{name: "unknown key in second policy", file: "policies:\n  - table: a\n    roles: [anon]\n  - table: b\n    roles: [anon]\n    rsl: true\n", want: []string{`unknown key "policies[1].rsl"`}},
		{name: "policy not a mapping", file: "policies:\n  - public.orders\n", want: []string{"policies[0]: must be a mapping"}},
		{name: "policies not a list", file: "policies: public.orders\n", want: []string{"policies: must be a list"}},
		{name: "policies a mapping", file: "policies:\n  table: public.orders\n", want: []string{"policies: must be a list"}},
		{name: "policy without table", file: "policies:\n  - roles: [anon]\n", want: []string{"policies[0].table"}},
		{name: "policy without roles", file: "policies:\n  - table: public.orders\n", want: []string{"policies[0].roles"}},
		{name: "bad duration", file: "retention: abc\n", want: []string{`retention: "abc" is not a duration`}},
		{name: "duration without unit", file: "retention: 3600\n", want: []string{"retention: 3600 is not a duration"}},
		{name: "zero retention", file: "retention: 0s\n", want: []string{"retention: must be longer than zero"}},
		{name: "negative retention", file: "retention: -1h\n", want: []string{"retention: must be longer than zero"}},
		{name: "bad source", file: "source: kafka\n", want: []string{`source: "kafka" is not a source`}},
		{name: "empty section", file: "database:\nhttp:\n  listen: 127.0.0.1:9\n", want: []string{"database: the section is empty"}},
		{name: "empty nested section", file: "auth:\n  jwt:\n", want: []string{"auth.jwt: the section is empty"}},
		{name: "bad bool", file: "auth:\n  anonymous: maybe\n", want: []string{`auth.anonymous: "maybe" is not true or false`}},
		{name: "bad bool from env", env: map[string]string{"PGFEED_AUTH_ANONYMOUS": "yes"}, want: []string{`auth.anonymous: "yes" is not true or false`, "PGFEED_AUTH_ANONYMOUS"}},
		{name: "bad bool in policy", file: "policies:\n  - table: t\n    roles: [anon]\n    rls: 7x\n", want: []string{`policies[0].rls: "7x" is not true or false`}},
		{name: "mapping for text", file: "http:\n  listen: {host: x}\n", want: []string{"http.listen: expected text, got a mapping"}},
		{name: "section as scalar", file: "http: 8080\n", want: []string{"http: must be a mapping"}},
		{name: "bad listen", file: "http:\n  listen: localhost\n", want: []string{"http.listen", `"localhost"`}},
		{name: "bad origin", file: "http:\n  allowed_origins: [example.com]\n", want: []string{"http.allowed_origins", "example.com"}},
		{name: "bad slot", file: "logical:\n  slot: My-Slot\n", want: []string{"logical.slot"}},
		{name: "bad size", file: "logical:\n  max_retained_wal: lots\n", want: []string{`logical.max_retained_wal: "lots" is not a size`}},
		{name: "zero size", file: "logical:\n  max_retained_wal: 0\n", want: []string{`logical.max_retained_wal: "0" is not a size`}},
		{name: "bad jwks url", file: "auth:\n  jwt:\n    jwks_url: ftp://x\n", want: []string{"auth.jwt.jwks_url"}},
		{name: "bad database url", file: "database:\n  url: \"postgres://h:notaport/db\"\n", want: []string{"database.url"}},
		{name: "bad yaml", file: "http:\n  listen: [\n", want: []string{"config file", "pgfeed.yaml"}},
		{name: "bad limit", file: "limits:\n  subscriptions: 0\n", want: []string{"limits.subscriptions: must be a positive number"}},
		{name: "negative notify rate", file: "trigger:\n  notify_below: -5\n", want: []string{"trigger.notify_below: must be 0 or more"}},
		{name: "notify rate not a number", env: map[string]string{"PGFEED_TRIGGER_NOTIFY_BELOW": "fast"}, want: []string{"trigger.notify_below", "PGFEED_TRIGGER_NOTIFY_BELOW"}},
		{name: "bad duration from env", env: map[string]string{"PGFEED_RETENTION": "abc"}, want: []string{`retention: "abc" is not a duration`, "PGFEED_RETENTION"}},
		{name: "bad source from env", env: map[string]string{"PGFEED_SOURCE": "kafka"}, want: []string{`source: "kafka"`, "PGFEED_SOURCE"}},
		{name: "bad policies from env", env: map[string]string{"PGFEED_POLICIES": "{"}, want: []string{"policies", "PGFEED_POLICIES"}},
		{name: "bad listen from flag", args: []string{"--listen", "nowhere"}, want: []string{"http.listen", "--listen"}},
		{name: "missing explicit config file", args: []string{"--config", "does-not-exist.yaml"}, want: []string{"does-not-exist.yaml", "does not exist"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			args := []string{"migrate", "status"}
			if tt.file != "" {
				args = append(args, "--config", writeFile(t, "pgfeed.yaml", tt.file))
			}
			args = append(args, tt.args...)

			_, err := resolve(t, args...)
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("loadConfig error = %v, want a *configError", err)
			}

			// The database URL is unreachable: a config error must come first.
			args = append(args, "--database-url", "postgres://127.0.0.1:1/never")
			if tt.name == "bad database url" {
				args = args[:len(args)-2]
			}
			r := pgfeed(t, args...)
			r.wantCode(t, 2)
			for _, w := range tt.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr %q does not contain %q", r.stderr, w)
				}
			}
			if strings.Contains(r.stderr, "connect") {
				t.Errorf("stderr %q: the database was contacted despite a bad configuration", r.stderr)
			}
		})
	}
}

// TestConfigFlagBesideFileSection repeats a resolution whose outcome once
// depended on map iteration order: a flag setting a key of a section that the
// file also has must win every time.
func TestConfigFlagBesideFileSection(t *testing.T) {
	cleanEnv(t)
	path := writeFile(t, "pgfeed.yaml", "database:\n  url: postgres://file:5432/f\nhttp:\n  listen: 127.0.0.1:9\n")
	for i := range 50 {
		cfg, err := resolve(t, "migrate", "status", "--config", path, "--database-url", "postgres://flag:1/x")
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Database.URL != "postgres://flag:1/x" || cfg.HTTP.Listen != "127.0.0.1:9" {
			t.Fatalf("run %d: url %q listen %q", i, cfg.Database.URL, cfg.HTTP.Listen)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1": 1, "10B": 10, "1kB": 1024, "512 MB": 512 << 20, "1gb": 1 << 30, "2TB": 2 << 40} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MB", "1 PB", "1.5GB", "-1", "99999999999999999999", "9000000TB"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

// FuzzParseSize: any text gives a non-negative size or an error, never a
// panic or an overflow.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"1GB", "512 MB", "0", "10b", "x", "4611686018427387904", "4194304TB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if err == nil && n < 0 {
			t.Fatalf("parseSize(%q) = %d", s, n)
		}
	})
}
