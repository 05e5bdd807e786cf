package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// ErrInvalid is wrapped by every refusal of a token; the message says why
// (never the token itself).
var ErrInvalid = errors.New("invalid token")

// Config says which tokens to accept. At least one of Secret, JWKSURL and
// JWKSFile must be set.
type Config struct {
	Secret   string // HS256 shared secret
	JWKSURL  string // http(s) URL of a JWKS with the public keys
	JWKSFile string // or a local JWKS file, read once
	Audience string // when set, must be in the token's aud
	Issuer   string // when set, must equal the token's iss
	// Leeway for exp and nbf. Zero: 30 s.
	Leeway time.Duration
	// RefetchEvery bounds JWKS refetches on unknown key ids. Zero: 1 min.
	RefetchEvery time.Duration
	// RefreshEvery is how old the JWKS may get before the next token that
	// needs a key fetches it again, so that a key removed from it stops
	// being trusted. Zero: 10 min.
	RefreshEvery time.Duration
	// HTTPClient fetches the JWKS. Nil: a client with a 10 s timeout.
	HTTPClient *http.Client
	// Now is the clock. Nil: time.Now.
	Now func() time.Time
}

// Claims are a verified token's claims.
type Claims struct {
	Role    string
	Expires time.Time // zero when the token has no exp
	All     map[string]any
}

// Verifier verifies tokens.
type Verifier struct {
	cfg    Config
	parser *jwt.Parser

	mu        sync.Mutex
	keys      map[string]any // guarded by mu: kid -> public key
	anonKeys  []any          // guarded by mu: keys without a kid
	fetchedAt time.Time      // guarded by mu: last refetch for an unknown key id
	loadedAt  time.Time      // guarded by mu: last successful JWKS fetch
}

// New returns a Verifier; with a JWKS file, it reads it now.
func New(cfg Config) (*Verifier, error) {
	if cfg.Secret == "" && cfg.JWKSURL == "" && cfg.JWKSFile == "" {
		return nil, errors.New("token: no key configured (auth.jwt.secret or auth.jwt.jwks_url)")
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.RefetchEvery == 0 {
		cfg.RefetchEvery = time.Minute
	}
	if cfg.RefreshEvery == 0 {
		cfg.RefreshEvery = 10 * time.Minute
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	var methods []string
	if cfg.Secret != "" {
		methods = append(methods, "HS256")
	}
	if cfg.JWKSURL != "" || cfg.JWKSFile != "" {
		methods = append(methods, "RS256", "ES256", "EdDSA")
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(methods),
		jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(cfg.Now),
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	v := &Verifier{cfg: cfg, parser: jwt.NewParser(opts...), keys: map[string]any{}}
	if cfg.JWKSFile != "" {
		data, err := os.ReadFile(cfg.JWKSFile)
		if err != nil {
			return nil, fmt.Errorf("token: read JWKS file: %w", err)
		}
		keys, anon, err := parseJWKS(data)
		if err != nil {
			return nil, fmt.Errorf("token: JWKS file %s: %w", cfg.JWKSFile, err)
		}
		v.keys, v.anonKeys = keys, anon
	}
	return v, nil
}

// Verify checks raw and returns its claims, or an error wrapping ErrInvalid
// that says why.
func (v *Verifier) Verify(ctx context.Context, raw string) (Claims, error) {
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) {
		return v.key(ctx, t)
	})
	if err != nil {
		return Claims{}, fmt.Errorf("%w: %s", ErrInvalid, reason(err))
	}
	role, ok := claims["role"].(string)
	if !ok || role == "" {
		return Claims{}, fmt.Errorf("%w: the token has no role claim", ErrInvalid)
	}
	c := Claims{Role: role, All: claims}
	if exp, err := claims.GetExpirationTime(); err == nil && exp != nil {
		c.Expires = exp.Time
	}
	return c, nil
}

// reason turns the library's error into a short sentence.
func reason(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "the token has expired"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "the token is not valid yet (nbf)"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "the token's audience (aud) is not accepted"
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "the token's issuer (iss) is not accepted"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "the signature does not verify"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// The cause (an unknown key id, a JWKS that could not be fetched)
		// is for the server's log, not for whoever sent the token.
		return "no key to verify the token with (unknown key id or algorithm)"
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "the token is malformed"
	default:
		return "the token is not acceptable"
	}
}

// errUnknownKey is returned by key when no key has the token's kid.
var errUnknownKey = errors.New("no key with the token's key id (kid)")

// key picks the key a token must verify with, for the token's algorithm.
func (v *Verifier) key(ctx context.Context, t *jwt.Token) (any, error) {
	alg, _ := t.Header["alg"].(string)
	if alg == "HS256" {
		return []byte(v.cfg.Secret), nil
	}
	kid, _ := t.Header["kid"].(string)
	if v.cfg.JWKSURL != "" && v.stale() {
		// Best effort: on failure the keys we have stay in use until the
		// next refresh.
		_ = v.fetch(context.WithoutCancel(ctx))
	}
	k, err := v.lookup(kid, alg)
	if errors.Is(err, errUnknownKey) && v.cfg.JWKSURL != "" && v.refetchDue() {
		// Not the request's context: a client hanging up must not cancel
		// the one refetch the rate limit allows.
		if ferr := v.fetch(context.WithoutCancel(ctx)); ferr != nil {
			return nil, fmt.Errorf("fetch JWKS: %w", ferr)
		}
		k, err = v.lookup(kid, alg)
	}
	return k, err
}

func (v *Verifier) lookup(kid, alg string) (any, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if kid != "" {
		k, ok := v.keys[kid]
		if !ok {
			return nil, errUnknownKey
		}
		if !fits(k, alg) {
			return nil, fmt.Errorf("key %q is not a key for %s", kid, alg)
		}
		return k, nil
	}
	for _, k := range v.anonKeys {
		if fits(k, alg) {
			return k, nil
		}
	}
	return nil, errUnknownKey
}

// fits reports whether key k may verify algorithm alg.
func fits(k any, alg string) bool {
	switch k.(type) {
	case *rsa.PublicKey:
		return alg == "RS256"
	case *ecdsa.PublicKey:
		return alg == "ES256"
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

// stale reports whether the key set is older than RefreshEvery, and if so
// records a refresh attempt (at most one per RefetchEvery).
func (v *Verifier) stale() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.cfg.Now()
	if now.Sub(v.loadedAt) < v.cfg.RefreshEvery || now.Sub(v.fetchedAt) < v.cfg.RefetchEvery {
		return false
	}
	v.fetchedAt = now
	return true
}

// refetchDue reports whether an unknown kid may trigger a fetch now, and
// records the attempt.
func (v *Verifier) refetchDue() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	now := v.cfg.Now()
	if !v.fetchedAt.IsZero() && now.Sub(v.fetchedAt) < v.cfg.RefetchEvery {
		return false
	}
	v.fetchedAt = now
	return true
}

// Prefetch loads the JWKS (when a URL is configured), so the first client
// does not wait for it. It does not count against the refetch limit, which
// is for unknown key ids.
func (v *Verifier) Prefetch(ctx context.Context) error {
	if v.cfg.JWKSURL == "" {
		return nil
	}
	return v.fetch(ctx)
}

func (v *Verifier) fetch(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.cfg.JWKSURL, nil)
	if err != nil {
		return err
	}
	resp, err := v.cfg.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", v.cfg.JWKSURL, resp.Status)
	}
	data, err := readLimited(resp, 1<<20)
	if err != nil {
		return err
	}
	keys, anon, err := parseJWKS(data)
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.keys, v.anonKeys = keys, anon
	v.loadedAt = v.cfg.Now()
	v.mu.Unlock()
	return nil
}
