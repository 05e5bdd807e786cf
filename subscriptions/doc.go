// Package subscriptions owns what a client asks for and what it may see: the
// PostgREST-style filter grammar, events and select lists, policies and
// authorization, and the index that maps a change to the subscriptions it
// matches without scanning all of them. It does no I/O on the hot path.
//
// Status: no code yet; it arrives with the live feed.
package subscriptions
