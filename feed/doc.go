// Package feed is pgfeed's HTTP server: WebSocket, Server-Sent Events and
// long polling, health and metrics, per-client bounded queues, and resume
// from a cursor. It never reads changes from PostgreSQL itself; it is handed
// them by the listener.
//
// Status: no code yet; it arrives with the live feed.
package feed
