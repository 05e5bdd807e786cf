package token_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/pgfeed/pgfeed/internal/token"
)

// keys is a test JWKS server's key material.
type keys struct {
	rsa *rsa.PrivateKey
	ec  *ecdsa.PrivateKey
	ed  ed25519.PrivateKey
}

var (
	keysOnce sync.Once
	testKeys keys
)

func getKeys(t *testing.T) keys {
	keysOnce.Do(func() {
		var err error
		if testKeys.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if testKeys.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if _, testKeys.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
	})
	return testKeys
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// jwks renders the public keys with the given kids.
func jwks(k keys, rsaKid, ecKid, edKid string) []byte {
	var list []map[string]string
	if rsaKid != "" {
		list = append(list, map[string]string{"kty": "RSA", "kid": rsaKid, "use": "sig", "n": b64(k.rsa.N.Bytes()), "e": b64(big.NewInt(int64(k.rsa.E)).Bytes())})
	}
	if ecKid != "" {
		list = append(list, map[string]string{"kty": "EC", "kid": ecKid, "crv": "P-256", "x": b64(pad32(k.ec.X.Bytes())), "y": b64(pad32(k.ec.Y.Bytes()))})
	}
	if edKid != "" {
		list = append(list, map[string]string{"kty": "OKP", "kid": edKid, "crv": "Ed25519", "x": b64(k.ed.Public().(ed25519.PublicKey))})
	}
	b, _ := json.Marshal(map[string]any{"keys": list})
	return b
}

func pad32(b []byte) []byte {
	out := make([]byte, 32)
	copy(out[32-len(b):], b)
	return out
}

func sign(t *testing.T, method jwt.SigningMethod, kid string, key any, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func claims(extra map[string]any) jwt.MapClaims {
	c := jwt.MapClaims{"sub": "u1", "role": "authenticated", "exp": time.Now().Add(time.Hour).Unix(), "aud": "app", "iss": "https://issuer"}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func TestMatrix(t *testing.T) {
	k := getKeys(t)
	var fetches atomic.Int32
	current := jwks(k, "r1", "e1", "d1")
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.Write(current)
	}))
	defer srv.Close()
	v, err := token.New(token.Config{Secret: "s3cret-s3cret-s3cret-s3cret-s3cret", JWKSURL: srv.URL, Audience: "app", Issuer: "https://issuer"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: must(x509.MarshalPKIXPublicKey(&k.rsa.PublicKey))})
	otherRSA, _ := rsa.GenerateKey(rand.Reader, 2048)

	valid := map[string]string{
		"HS256":  sign(t, jwt.SigningMethodHS256, "", []byte("s3cret-s3cret-s3cret-s3cret-s3cret"), claims(nil)),
		"RS256":  sign(t, jwt.SigningMethodRS256, "r1", k.rsa, claims(nil)),
		"ES256":  sign(t, jwt.SigningMethodES256, "e1", k.ec, claims(nil)),
		"EdDSA":  sign(t, jwt.SigningMethodEdDSA, "d1", k.ed, claims(nil)),
		"no exp": sign(t, jwt.SigningMethodHS256, "", []byte("s3cret-s3cret-s3cret-s3cret-s3cret"), claims(map[string]any{"exp": nil})),
	}
	for name, tok := range valid {
		c, err := v.Verify(ctx, tok)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if c.Role != "authenticated" || c.All["sub"] != "u1" {
			t.Errorf("%s: claims %+v", name, c)
		}
	}

	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil)).SignedString(jwt.UnsafeAllowNoneSignatureType)
	invalid := map[string]struct{ tok, why string }{
		"expired":       {sign(t, jwt.SigningMethodHS256, "", []byte("s3cret-s3cret-s3cret-s3cret-s3cret"), claims(map[string]any{"exp": time.Now().Add(-time.Hour).Unix()})), "expired"},
		"not yet valid": {sign(t, jwt.SigningMethodHS256, "", []byte("s3cret-s3cret-s3cret-s3cret-s3cret"), claims(map[string]any{"nbf": time.Now().Add(time.Hour).Unix()})), "not valid yet"},
		"wrong secret":  {sign(t, jwt.SigningMethodHS256, "", []byte("another-secret-another-secret!!"), claims(nil)), "signature"},
		"alg none":      {none, "not"},
		"alg confusion": {sign(t, jwt.SigningMethodHS256, "r1", pubPEM, claims(nil)), "signature"},
		"wrong RSA key": {sign(t, jwt.SigningMethodRS256, "r1", otherRSA, claims(nil)), "signature"},
		"wrong aud":     {sign(t, jwt.SigningMethodHS256, "", []byte("s3cret-s3cret-s3cret-s3cret-s3cret"), claims(map[string]any{"aud": "other"})), "audience"},
		"wrong iss":     {sign(t, jwt.SigningMethodHS256, "", []byte("s3cret-s3cret-s3cret-s3cret-s3cret"), claims(map[string]any{"iss": "https://evil"})), "issuer"},
		"missing role":  {sign(t, jwt.SigningMethodHS256, "", []byte("s3cret-s3cret-s3cret-s3cret-s3cret"), claims(map[string]any{"role": nil})), "role"},
		"malformed":     {"not.a.token", "malformed"},
		"empty":         {"", "malformed"},
		"garbage":       {strings.Repeat("x", 5000), "malformed"},
		"key/alg swap":  {sign(t, jwt.SigningMethodES256, "r1", k.ec, claims(nil)), "no key to verify"},
		"unknown kid":   {sign(t, jwt.SigningMethodRS256, "nope", k.rsa, claims(nil)), "no key to verify"},
	}
	for name, c := range invalid {
		_, err := v.Verify(ctx, c.tok)
		if !errors.Is(err, token.ErrInvalid) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: error %v, want ErrInvalid mentioning %q", name, err, c.why)
		}
		if err != nil && c.tok != "" && len(c.tok) > 20 && strings.Contains(err.Error(), c.tok) {
			t.Errorf("%s: the error repeats the token", name)
		}
	}
}

// TestUnknownKidRefetch: a token signed with a key added to the JWKS after
// the last fetch is accepted after one refetch; refetches are rate limited.
func TestUnknownKidRefetch(t *testing.T) {
	k := getKeys(t)
	var fetches atomic.Int32
	var mu sync.Mutex
	current := jwks(k, "old", "", "")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.Write(current)
	}))
	defer srv.Close()
	now := time.Now()
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	v, err := token.New(token.Config{JWKSURL: srv.URL, Now: func() time.Time { return time.Unix(0, clock.Load()) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := v.Prefetch(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "old", k.rsa, claims(nil))); err != nil {
		t.Fatal(err)
	}
	// Rotation: the key gets a new kid. The first unknown kid refetches.
	mu.Lock()
	current = jwks(k, "new", "", "")
	mu.Unlock()
	if _, err := v.Verify(ctx, sign(t, jwt.SigningMethodRS256, "new", k.rsa, claims(nil))); err != nil {
		t.Fatalf("an unknown kid should refetch the JWKS: %v", err)
	}
	if n := fetches.Load(); n != 2 {
		t.Fatalf("%d fetches, want 2", n)
	}
	// Another rotation within the minute: no refetch, refused.
	mu.Lock()
	current = jwks(k, "newer", "", "")
	mu.Unlock()
	tok := sign(t, jwt.SigningMethodRS256, "newer", k.rsa, claims(nil))
	for range 10 {
		if _, err := v.Verify(ctx, tok); err == nil {
			t.Fatal("accepted an unknown kid without refetching")
		}
	}
	if n := fetches.Load(); n != 2 {
		t.Fatalf("a flood of unknown kids caused %d fetches, want 2", n)
	}
	// A minute later, it refetches.
	clock.Add(int64(61 * time.Second))
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("after a minute, the unknown kid should refetch: %v", err)
	}
	if n := fetches.Load(); n != 3 {
		t.Fatalf("%d fetches, want 3", n)
	}
}

func TestJWKSFile(t *testing.T) {
	k := getKeys(t)
	path := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(path, jwks(k, "", "", "d1"), 0o600); err != nil {
		t.Fatal(err)
	}
	v, err := token.New(token.Config{JWKSFile: path})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodEdDSA, "d1", k.ed, claims(nil))); err != nil {
		t.Fatal(err)
	}
	// No secret configured: HS256 is refused outright.
	if _, err := v.Verify(context.Background(), sign(t, jwt.SigningMethodHS256, "", []byte("whatever-whatever-whatever-1234"), claims(nil))); err == nil {
		t.Fatal("HS256 accepted with no secret configured")
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzVerify: arbitrary input never panics and is never accepted.
func FuzzVerify(f *testing.F) {
	f.Add("eyJhbGciOiJub25lIn0.eyJyb2xlIjoiYSJ9.")
	f.Add("a.b.c")
	f.Add("")
	v, err := token.New(token.Config{Secret: "fuzz-secret-fuzz-secret-fuzz-secret"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if _, err := v.Verify(context.Background(), s); err == nil {
			t.Fatalf("accepted %q", s)
		}
	})
}

// TestRemovedKeyStopsBeingTrusted: a key removed from the JWKS is refused
// once the key set is older than RefreshEvery.
func TestRemovedKeyStopsBeingTrusted(t *testing.T) {
	k := getKeys(t)
	var mu sync.Mutex
	current := jwks(k, "r1", "", "")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.Write(current)
	}))
	defer srv.Close()
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	v, err := token.New(token.Config{JWKSURL: srv.URL, Now: func() time.Time { return time.Unix(0, clock.Load()) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := v.Prefetch(ctx); err != nil {
		t.Fatal(err)
	}
	tok := sign(t, jwt.SigningMethodRS256, "r1", k.rsa, claims(nil))
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	current = []byte(`{"keys":[]}`)
	mu.Unlock()
	clock.Add(int64(5 * time.Minute))
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatalf("within the refresh period the cached key still verifies: %v", err)
	}
	clock.Add(int64(6 * time.Minute))
	if _, err := v.Verify(ctx, tok); err == nil {
		t.Fatal("a key removed from the JWKS is still trusted after the refresh period")
	}
}
