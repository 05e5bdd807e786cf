// Package token verifies the JSON Web Tokens clients present: HS256 with a
// shared secret, and RS256, ES256 and EdDSA with public keys from a JWKS (a
// URL, fetched and cached, or a local file).
//
// Invariants: a token is accepted only with an algorithm its key allows (an
// HS256 token is checked against the shared secret alone, so a token signed
// with a public key as an HMAC secret fails; "none" is never accepted);
// exp and nbf are checked with a small leeway, iss and aud when configured;
// a token without a role claim is refused. An unknown key id makes the
// Verifier refetch the JWKS, at most once per RefetchEvery, and a key set
// older than RefreshEvery is fetched again by the next token that needs a
// key, so that a key removed from the JWKS stops being trusted.
//
// Concurrency: a Verifier is safe for concurrent use; its key set is
// guarded by a mutex, and a refetch happens on the goroutine of the Verify
// call that needs it, never in the background.
package token
