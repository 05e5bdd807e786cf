package token

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
)

// jwk is one key of a JWKS (RFC 7517), the fields pgfeed reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	Crv string `json:"crv"`
	N   string `json:"n"`
	E   string `json:"e"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// parseJWKS reads the signature keys of a JWKS: RSA, EC P-256 and Ed25519.
// Keys of other kinds, or for encryption, are skipped.
func parseJWKS(data []byte) (map[string]any, []any, error) {
	var set struct {
		Keys []jwk `json:"keys"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, nil, fmt.Errorf("JWKS is not valid JSON: %w", err)
	}
	keys := map[string]any{}
	var anon []any
	var skipped []string
	for i, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		pub, err := k.public()
		if err != nil {
			// One unusable key (too short, malformed, of a kind pgfeed
			// does not use) must not take the others down with it.
			skipped = append(skipped, fmt.Sprintf("key %d (kid %q): %v", i, k.Kid, err))
			continue
		}
		if k.Kid == "" {
			anon = append(anon, pub)
		} else {
			keys[k.Kid] = pub
		}
	}
	if len(keys) == 0 && len(anon) == 0 && len(skipped) > 0 {
		return nil, nil, fmt.Errorf("no usable key: %s", skipped[0])
	}
	return keys, anon, nil
}

var errSkip = errors.New("not a signature key pgfeed uses")

func (k jwk) public() (any, error) {
	switch k.Kty {
	case "RSA":
		n, err := b64(k.N)
		if err != nil {
			return nil, fmt.Errorf("n: %w", err)
		}
		e, err := b64(k.E)
		if err != nil {
			return nil, fmt.Errorf("e: %w", err)
		}
		if len(n) < 256 {
			return nil, errors.New("RSA keys shorter than 2048 bits are refused")
		}
		if len(e) == 0 || len(e) > 4 {
			return nil, errors.New("bad RSA exponent")
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}, nil
	case "EC":
		if k.Crv != "P-256" {
			return nil, errSkip
		}
		x, err := b64(k.X)
		if err != nil {
			return nil, fmt.Errorf("x: %w", err)
		}
		y, err := b64(k.Y)
		if err != nil {
			return nil, fmt.Errorf("y: %w", err)
		}
		if len(x) != 32 || len(y) != 32 {
			return nil, errors.New("bad P-256 point")
		}
		// Uncompressed point encoding, which ParseUncompressedPublicKey
		// checks is on the curve.
		point := append([]byte{4}, append(x, y...)...)
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
		if err != nil {
			return nil, fmt.Errorf("P-256 point: %w", err)
		}
		return pub, nil
	case "OKP":
		if k.Crv != "Ed25519" {
			return nil, errSkip
		}
		x, err := b64(k.X)
		if err != nil {
			return nil, fmt.Errorf("x: %w", err)
		}
		if len(x) != ed25519.PublicKeySize {
			return nil, errors.New("bad Ed25519 key")
		}
		return ed25519.PublicKey(x), nil
	default:
		return nil, errSkip
	}
}

func b64(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(s)
}

func readLimited(resp *http.Response, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, errors.New("JWKS larger than 1 MiB")
	}
	return data, nil
}
