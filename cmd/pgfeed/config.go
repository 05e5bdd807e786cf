package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"go.yaml.in/yaml/v3"
)

// Config is pgfeed's whole configuration, as resolved from the config file,
// the environment and the flags (in increasing precedence). The zero value is
// not meaningful: get one from loadConfig, which fills in the defaults and
// validates it.
type Config struct {
	Database DatabaseConfig `mapstructure:"database"`
	HTTP     HTTPConfig     `mapstructure:"http"`
	// Source is how changes are captured: "trigger" or "logical".
	Source  string        `mapstructure:"source"`
	Trigger TriggerConfig `mapstructure:"trigger"`
	Logical LogicalConfig `mapstructure:"logical"`
	// Retention is how long changes stay resumable; always > 0.
	Retention time.Duration `mapstructure:"retention"`
	Auth      AuthConfig    `mapstructure:"auth"`
	// Policies say which tables are served to whom. No policy for a table
	// means the table is not served (default deny). Nil when there is none.
	Policies []Policy `mapstructure:"policies"`
	Limits   Limits   `mapstructure:"limits"`
}

// TriggerConfig tunes the trigger source.
type TriggerConfig struct {
	// NotifyBelow is the rate of captured transactions a second below which
	// writers wake the listener with NOTIFY (lowest latency); at and above
	// it the listener reads back to back and writers skip NOTIFY (lowest
	// write cost). 0: skip NOTIFY whenever changes flow. Never negative.
	NotifyBelow int `mapstructure:"notify_below"`
}

// Limits protect a node from runaway or abusive clients.
type Limits struct {
	// Connections is the most streaming connections a node holds.
	Connections int `mapstructure:"connections"`
	// Subscriptions is the most subscriptions one WebSocket holds.
	Subscriptions int `mapstructure:"subscriptions"`
	// SubscribesPerSecond is how many subscribe messages a second one
	// WebSocket may send (bursts of twice as many).
	SubscribesPerSecond int `mapstructure:"subscribes_per_second"`
}

// DatabaseConfig says where the database is.
type DatabaseConfig struct {
	// URL is the PostgreSQL connection string (URL or key=value form).
	URL string `mapstructure:"url"`
	// URLSet is true when URL was given by the config file, the environment
	// or a flag, false when it is the default. It is not a config key.
	URLSet bool `mapstructure:"-"`
}

// HTTPConfig is the change-feed server's HTTP side.
type HTTPConfig struct {
	// Listen is the host:port the server listens on.
	Listen string `mapstructure:"listen"`
	// AllowedOrigins are the browser origins (scheme://host[:port]) allowed
	// for WebSocket and CORS; nil means same origin only.
	AllowedOrigins []string `mapstructure:"allowed_origins"`
}

// LogicalConfig is used when Source is "logical".
type LogicalConfig struct {
	// Slot is the persistent replication slot, one per node.
	Slot string `mapstructure:"slot"`
	// Publication is the publication the slot decodes.
	Publication string `mapstructure:"publication"`
	// MaxRetainedWAL is the most WAL the slot may keep for resumes, as
	// written (a byte count with an optional unit, like 1GB or 512MB).
	MaxRetainedWAL string `mapstructure:"max_retained_wal"`
	// MaxRetainedWALBytes is MaxRetainedWAL in bytes; always > 0. It is not
	// a config key.
	MaxRetainedWALBytes int64 `mapstructure:"-"`
}

// AuthConfig says how clients authenticate.
type AuthConfig struct {
	// Anonymous allows clients without a token (their role is "anon").
	Anonymous bool      `mapstructure:"anonymous"`
	JWT       JWTConfig `mapstructure:"jwt"`
}

// JWTConfig says which tokens are accepted. Empty strings mean "not used".
type JWTConfig struct {
	// Secret is the HS256 key.
	Secret string `mapstructure:"secret"`
	// JWKSURL is where the RS256/ES256/EdDSA public keys are published.
	JWKSURL string `mapstructure:"jwks_url"`
	// JWKSFile is a local JWKS file, for keys that are not published.
	JWKSFile string `mapstructure:"jwks_file"`
	// Audience, when set, must be in the token's aud claim.
	Audience string `mapstructure:"audience"`
	// Issuer, when set, must equal the token's iss claim.
	Issuer string `mapstructure:"issuer"`
}

// Policy allows some roles to read one table.
type Policy struct {
	// Table is schema.table (public when no schema is given).
	Table string `mapstructure:"table"`
	// Roles are the values of the token's role claim allowed to subscribe;
	// "anon" stands for clients without a token.
	Roles []string `mapstructure:"roles"`
	// Filter is a PostgREST-style filter ANDed with every subscription's own;
	// empty means no extra condition.
	Filter string `mapstructure:"filter"`
	// Columns are the only columns that leave the server; nil means all.
	Columns []string `mapstructure:"columns"`
	// RLS, when true, lets PostgreSQL's row-level security decide, evaluated
	// as the subscriber.
	RLS bool `mapstructure:"rls"`
}

// configKey is one configuration key with its default value.
type configKey struct {
	name string
	def  any // nil: no default
}

// configKeys lists every key a configuration may hold.
func configKeys() []configKey {
	return []configKey{
		{"database.url", "postgres://localhost:5432/postgres"},
		{"http.listen", "127.0.0.1:8080"},
		{"http.allowed_origins", []string{}},
		{"source", "trigger"},
		{"trigger.notify_below", 2000},
		{"logical.slot", "pgfeed"},
		{"logical.publication", "pgfeed"},
		{"logical.max_retained_wal", "1GB"},
		{"retention", "24h"},
		{"auth.anonymous", false},
		{"auth.jwt.secret", ""},
		{"auth.jwt.jwks_url", ""},
		{"auth.jwt.jwks_file", ""},
		{"auth.jwt.audience", ""},
		{"auth.jwt.issuer", ""},
		{"policies", nil},
		{"limits.connections", 10000},
		{"limits.subscriptions", 100},
		{"limits.subscribes_per_second", 20},
	}
}

// policyKeys are the keys of one entry of policies.
func policyKeys() []string { return []string{"columns", "filter", "rls", "roles", "table"} }

// flagKeys maps the flags that override a config key to that key.
func flagKeys() map[string]string {
	return map[string]string{
		"database-url": "database.url",
		"listen":       "http.listen",
	}
}

// envPrefix starts the name of every environment variable pgfeed reads.
const envPrefix = "PGFEED"

// envName is the environment variable that sets key, e.g. PGFEED_HTTP_LISTEN.
func envName(key string) string {
	return envPrefix + "_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
}

// defaultConfigFile is read when --config is not given and the file exists.
const defaultConfigFile = "config.yaml"

// configError is a bad configuration: a bad value, an unknown key, a missing
// config file. It makes pgfeed exit with code 2.
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

func badConfig(format string, args ...any) error {
	return &configError{msg: fmt.Sprintf(format, args...)}
}

// loader resolves one configuration with its own viper instance.
type loader struct {
	v     *viper.Viper
	flags *pflag.FlagSet
	file  string // the config file read; empty when none
}

// loadConfig resolves the configuration the way every command does: the
// config file (--config, or ./config.yaml when present), then the PGFEED_
// environment variables, then the --database-url and --listen flags. flags
// must hold those three flags (a command's Flags() after parsing). Every
// error about the configuration is a *configError naming the bad key (an
// empty --config is a *usageError).
func loadConfig(flags *pflag.FlagSet) (*Config, error) {
	l := &loader{v: viper.New(), flags: flags}
	v := l.v
	v.SetEnvPrefix(envPrefix)
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	for _, k := range configKeys() {
		if k.def != nil {
			v.SetDefault(k.name, k.def)
		}
		if err := v.BindEnv(k.name); err != nil {
			return nil, fmt.Errorf("bind %s: %w", envName(k.name), err)
		}
	}
	for flag, key := range flagKeys() {
		if err := v.BindPFlag(key, flags.Lookup(flag)); err != nil {
			return nil, fmt.Errorf("bind --%s: %w", flag, err)
		}
	}

	if err := l.readFile(); err != nil {
		return nil, err
	}
	if err := l.checkKeys(); err != nil {
		return nil, err
	}
	if err := l.checkPolicies(); err != nil {
		return nil, err
	}
	if err := l.checkRetention(); err != nil {
		return nil, err
	}

	var cfg Config
	if err := v.Unmarshal(&cfg); err != nil {
		var de *mapstructure.DecodeError
		if errors.As(err, &de) {
			return nil, l.bad(de.Name(), "%s", describeDecodeError(de.Unwrap()))
		}
		return nil, badConfig("read configuration: %s", oneLine(err.Error()))
	}
	if len(cfg.HTTP.AllowedOrigins) == 0 {
		cfg.HTTP.AllowedOrigins = nil
	}
	if len(cfg.Policies) == 0 {
		cfg.Policies = nil
	}
	cfg.Database.URLSet = flags.Changed("database-url") ||
		os.Getenv(envName("database.url")) != "" ||
		v.InConfig("database.url")

	if err := l.validate(&cfg); err != nil {
		return nil, err
	}
	return &cfg, nil
}

// readFile reads the config file named by --config, or ./config.yaml when
// --config is not given and that file exists.
func (l *loader) readFile() error {
	path := ""
	if f := l.flags.Lookup("config"); f != nil {
		path = f.Value.String()
	}
	if l.flags.Changed("config") {
		if path == "" {
			return &usageError{msg: "--config needs a file name"}
		}
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return badConfig("config file %s does not exist", path)
		}
	} else {
		if _, err := os.Stat(defaultConfigFile); err != nil {
			return nil // no file: defaults, environment and flags only
		}
		path = defaultConfigFile
	}
	l.file = path
	l.v.SetConfigFile(path)
	if ext := strings.TrimPrefix(filepath.Ext(path), "."); !slices.Contains(viper.SupportedExts, ext) {
		l.v.SetConfigType("yaml")
	}
	if err := l.v.ReadInConfig(); err != nil {
		var pe viper.ConfigParseError
		if errors.As(err, &pe) {
			err = pe.Unwrap()
		}
		return badConfig("config file %s: %s", path, oneLine(err.Error()))
	}
	return l.checkEmptySections(path)
}

// checkEmptySections refuses a section written with no keys ("database:"
// alone): viper would then let that empty value race with the section's
// keys set by flags or the environment, and lose them at random.
func (l *loader) checkEmptySections(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return badConfig("config file %s: %s", path, oneLine(err.Error()))
	}
	var raw map[string]any
	if yaml.Unmarshal(b, &raw) != nil {
		return nil // not YAML; viper has read it already
	}
	var walk func(prefix string, m map[string]any) string
	walk = func(prefix string, m map[string]any) string {
		for k, v := range m {
			key := prefix + strings.ToLower(k)
			switch v := v.(type) {
			case nil:
				if l.isSection(key) {
					return key
				}
			case map[string]any:
				if bad := walk(key+".", v); bad != "" {
					return bad
				}
			}
		}
		return ""
	}
	if sec := walk("", raw); sec != "" {
		return l.bad(sec, "the section is empty: give it keys or remove it")
	}
	return nil
}

// isSection reports whether key is a section (a mapping of keys), such as
// "database" or "auth.jwt".
func (l *loader) isSection(key string) bool {
	for _, k := range configKeys() {
		if strings.HasPrefix(k.name, key+".") {
			return true
		}
	}
	return false
}

// checkKeys rejects keys that pgfeed does not know. Every key outside the
// known set comes from the config file: defaults, bound variables and flags
// only name known keys.
func (l *loader) checkKeys() error {
	known := make(map[string]bool)
	sections := make(map[string][]string) // "auth.jwt" -> [audience issuer ...]
	for _, k := range configKeys() {
		known[k.name] = true
		parts := strings.Split(k.name, ".")
		for i := 1; i < len(parts); i++ {
			sec := strings.Join(parts[:i], ".")
			if !slices.Contains(sections[sec], parts[i]) {
				sections[sec] = append(sections[sec], parts[i])
			}
		}
	}
	keys := l.v.AllKeys()
	slices.Sort(keys)
	for _, key := range keys {
		if known[key] {
			continue
		}
		if strings.HasPrefix(key, "policies.") {
			return l.bad("policies", "must be a list of policies, each with the keys %s", strings.Join(policyKeys(), ", "))
		}
		if sub, ok := sections[key]; ok {
			// A section given a plain value, like "http: 8080".
			if _, isMap := l.v.Get(key).(map[string]any); !isMap {
				slices.Sort(sub)
				return l.bad(key, "must be a mapping with the keys %s", strings.Join(sub, ", "))
			}
			continue
		}
		return badConfig("%s: unknown key %q (%s)", l.file, key, knownHint(key, sections))
	}
	return nil
}

// knownHint lists the keys valid where the unknown key stands.
func knownHint(key string, sections map[string][]string) string {
	parts := strings.Split(key, ".")
	for i := len(parts) - 1; i > 0; i-- {
		sec := strings.Join(parts[:i], ".")
		if sub, ok := sections[sec]; ok {
			sub = slices.Clone(sub)
			slices.Sort(sub)
			return fmt.Sprintf("%s takes: %s", sec, strings.Join(sub, ", "))
		}
	}
	var top []string
	for _, k := range configKeys() {
		t, _, _ := strings.Cut(k.name, ".")
		if !slices.Contains(top, t) {
			top = append(top, t)
		}
	}
	slices.Sort(top)
	return "known top-level keys: " + strings.Join(top, ", ")
}

// checkPolicies checks that policies is a list of mappings with known keys.
// From the environment (PGFEED_POLICIES) it is read as a JSON list.
func (l *loader) checkPolicies() error {
	var list []any
	switch p := l.v.Get("policies").(type) {
	case nil:
		return nil
	case []any:
		list = p
	case string:
		if os.Getenv(envName("policies")) == "" {
			return l.bad("policies", "must be a list of policies, each with the keys %s", strings.Join(policyKeys(), ", "))
		}
		if err := json.Unmarshal([]byte(p), &list); err != nil {
			return l.bad("policies", "is not a JSON list of policies: %s", oneLine(err.Error()))
		}
		l.v.Set("policies", list)
	default:
		return l.bad("policies", "must be a list of policies, each with the keys %s", strings.Join(policyKeys(), ", "))
	}
	for i, e := range list {
		m, ok := e.(map[string]any)
		if !ok {
			return l.bad(fmt.Sprintf("policies[%d]", i), "must be a mapping with the keys %s", strings.Join(policyKeys(), ", "))
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if !slices.Contains(policyKeys(), strings.ToLower(k)) {
				where := l.origin("policies")
				if where == "" {
					where = "policies"
				}
				return badConfig("%s: unknown key %q (a policy takes: %s)", where, fmt.Sprintf("policies[%d].%s", i, k), strings.Join(policyKeys(), ", "))
			}
		}
	}
	return nil
}

// checkRetention insists on a duration written with its unit: viper would
// read a bare number as nanoseconds.
func (l *loader) checkRetention() error {
	switch r := l.v.Get("retention").(type) {
	case string:
		if _, err := time.ParseDuration(strings.TrimSpace(r)); err != nil {
			return l.bad("retention", "%q is not a duration (write it like 24h, 90m or 30s)", r)
		}
	case time.Duration:
	default:
		return l.bad("retention", "%v is not a duration (write it with a unit, like 24h, 90m or 30s)", r)
	}
	return nil
}

// validate checks the values that decoding alone does not.
func (l *loader) validate(c *Config) error {
	if strings.TrimSpace(c.Database.URL) == "" {
		return l.bad("database.url", "must not be empty")
	}
	if _, err := pgconn.ParseConfig(c.Database.URL); err != nil {
		return l.bad("database.url", "%s", oneLine(err.Error()))
	}
	if _, port, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
		return l.bad("http.listen", "%q is not a host:port address (like 127.0.0.1:8080 or :8080)", c.HTTP.Listen)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return l.bad("http.listen", "%q has no valid port number", c.HTTP.Listen)
	}
	for _, o := range c.HTTP.AllowedOrigins {
		if o == "*" {
			continue
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return l.bad("http.allowed_origins", "%q is not an origin (write scheme://host[:port], like https://app.example.com)", o)
		}
	}
	switch c.Source {
	case "trigger", "logical":
	default:
		return l.bad("source", "%q is not a source (use trigger or logical)", c.Source)
	}
	if !isSlotName(c.Logical.Slot) {
		return l.bad("logical.slot", "%q is not a replication slot name (1 to 63 lower-case letters, digits or underscores)", c.Logical.Slot)
	}
	if c.Logical.Publication == "" || len(c.Logical.Publication) > 63 {
		return l.bad("logical.publication", "%q is not a publication name (1 to 63 characters)", c.Logical.Publication)
	}
	n, err := parseSize(c.Logical.MaxRetainedWAL)
	if err != nil || n <= 0 {
		return l.bad("logical.max_retained_wal", "%q is not a size (write it like 1GB, 512MB or 1073741824, in bytes)", c.Logical.MaxRetainedWAL)
	}
	c.Logical.MaxRetainedWALBytes = n
	if c.Retention <= 0 {
		return l.bad("retention", "must be longer than zero, got %s", c.Retention)
	}
	if c.Trigger.NotifyBelow < 0 {
		return l.bad("trigger.notify_below", "must be 0 or more transactions a second, got %d", c.Trigger.NotifyBelow)
	}
	if u := c.Auth.JWT.JWKSURL; u != "" {
		p, err := url.Parse(u)
		if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return l.bad("auth.jwt.jwks_url", "%q is not an http or https URL", u)
		}
	}
	for key, n := range map[string]int{"limits.connections": c.Limits.Connections, "limits.subscriptions": c.Limits.Subscriptions, "limits.subscribes_per_second": c.Limits.SubscribesPerSecond} {
		if n <= 0 {
			return l.bad(key, "must be a positive number, got %d", n)
		}
	}
	for i, p := range c.Policies {
		if strings.TrimSpace(p.Table) == "" {
			return l.bad(fmt.Sprintf("policies[%d].table", i), "must name a table (schema.table)")
		}
		if len(p.Roles) == 0 {
			return l.bad(fmt.Sprintf("policies[%d].roles", i), "must name at least one role for table %s (the token's role claim; anon for clients without a token)", p.Table)
		}
	}
	return nil
}

// bad reports a bad value of key, saying where the value came from.
func (l *loader) bad(key, format string, args ...any) error {
	msg := key + ": " + fmt.Sprintf(format, args...)
	base, _, _ := strings.Cut(key, "[")
	if where := l.origin(base); where != "" {
		if strings.HasSuffix(msg, ")") {
			msg = strings.TrimSuffix(msg, ")") + "; set in " + where + ")"
		} else {
			msg += " (set in " + where + ")"
		}
	}
	return &configError{msg: msg}
}

// origin names where the value of key came from: a flag, an environment
// variable or the config file; empty for a default.
func (l *loader) origin(key string) string {
	for flag, k := range flagKeys() {
		if k == key && l.flags.Changed(flag) {
			return "--" + flag
		}
	}
	if os.Getenv(envName(key)) != "" {
		return envName(key)
	}
	if l.file != "" && l.v.InConfig(key) {
		return l.file
	}
	return ""
}

// parseSize reads a size as PostgreSQL writes sizes: a whole number of
// bytes, or one followed by B, kB, MB, GB or TB (powers of 1024; the unit's
// case does not matter, a space before it is allowed).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 || i > 18 {
		return 0, fmt.Errorf("size %q: no number", s)
	}
	n, err := strconv.ParseInt(s[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("size %q: %w", s, err)
	}
	shift := 0
	switch strings.ToLower(strings.TrimSpace(s[i:])) {
	case "", "b":
	case "kb":
		shift = 10
	case "mb":
		shift = 20
	case "gb":
		shift = 30
	case "tb":
		shift = 40
	default:
		return 0, fmt.Errorf("size %q: unknown unit", s)
	}
	if n > (1<<62)>>shift {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return n << shift, nil
}

// isSlotName reports whether PostgreSQL accepts s as a replication slot name.
func isSlotName(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '_' {
			return false
		}
	}
	return true
}

// describeDecodeError says in words why a value did not decode.
func describeDecodeError(err error) string {
	var (
		pe *mapstructure.ParseError
		ue *mapstructure.UnconvertibleTypeError
	)
	switch {
	case errors.As(err, &pe) && pe.Expected.Kind() == reflect.Bool:
		return fmt.Sprintf("%q is not true or false", fmt.Sprint(pe.Value))
	case errors.As(err, &pe):
		return fmt.Sprintf("%q is not a valid %s", fmt.Sprint(pe.Value), kindOf(pe.Expected.Type()))
	case errors.As(err, &ue):
		return fmt.Sprintf("expected %s, got %s", kindOf(ue.Expected.Type()), kindOf(reflect.TypeOf(ue.Value)))
	default:
		return oneLine(err.Error())
	}
}

// kindOf names a type the way a config file author thinks of it.
func kindOf(t reflect.Type) string {
	if t == nil {
		return "nothing"
	}
	switch t.Kind() {
	case reflect.Map, reflect.Struct:
		return "a mapping"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.String:
		return "text"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "whole number"
	case reflect.Float32, reflect.Float64:
		return "number"
	default:
		return t.String()
	}
}
