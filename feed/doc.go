// Package feed is pgfeed's HTTP server: WebSocket (/v1/ws), Server-Sent
// Events (/v1/sse/{table}), long polling (/v1/changes/{table}), /healthz,
// /readyz and /metrics. It is handed the ordered change stream (Emit) and
// never reads changes from PostgreSQL itself; older changes for a resume
// come through the Store interface (the trigger log). Without a Store (the
// logical source) resumes come from memory only: a cursor older than the
// history gets a reset, and one beyond this node's position is checked with
// Config.Newest (the WAL position) and then waited for, as it may come from
// another node or from this node before a restart.
//
// Data flow: Emit decodes each change once, matches it against the
// subscription index, and hands it to each matching subscription's
// connection queue, encoding the event JSON once per distinct column
// projection and sharing the bytes. Every connection has one bounded queue
// and at most one writer; the fan-out never waits on a connection: when a
// queue overflows, its connection is closed as a slow consumer.
//
// Goroutines: a WebSocket connection leaves the upgrade handler for a
// reader goroutine (wsConn.read); each client message is handled on a
// short-lived goroutine it waits for, so that the reader's stack stays
// small. An idle connection has no goroutine at all (on Linux): when its
// reader finds nothing to read, it registers the socket with the server's
// poller (an epoll instance that Serve runs and stops) and ends; input, a
// hang-up or a close the writer wants starts a reader again
// (wsConn.wakeReader), one at a time. Pongs, and pings (whose pongs the
// writer sends), are handled in the reader's shallow wait
// (wsConn.awaitMessage), so they do not keep it inside coder/websocket.
// Live changes need no writer: once a batch is queued, the fan-out flushes
// each WebSocket queue it filled, standing in for the connection's writer:
// it frames what the queue holds into one buffer and makes one write that
// does not wait (wsConn.flush). When the source is behind
// (listener.Batch.Behind) it hands the queues to the flusher instead, a
// goroutine that runs while there is something to flush, so that the
// batches that come while it writes go out together. A writer goroutine runs only for the rest:
// what that write could not send, replies and replays, a batch big enough
// to fill a queue faster (flushEarly), a ping due or an expired token (the
// queue's notify starts it); it writes a burst corked (one system call)
// and ends when it has nothing left to do, after Config.WriterLinger when
// the connection is busy (it sent messages less than that before). The
// flush and a writer never overlap (wsConn.writing). The last reader waits
// for the writers and untracks the connection. Per SSE stream the
// handler's goroutine and a writer it waits for; a long poll runs its
// subscription beside its wait. Serve waits for every connection it tracks
// before returning.
//
// Invariants:
//   - A subscription gets each change at most once, in stream order, and
//     only changes after the position it started from.
//   - "subscribed" is queued under the hub's lock before the subscription
//     joins the index, so it precedes every change of the subscription, and
//     every batch dispatched afterwards reaches it.
//   - A resume replays from memory or the Store the changes between the
//     cursor and the position at registration, while live changes wait in
//     the subscription's pending list; then the pending ones follow: no gap,
//     no duplicate.
//
// Row-level security (policies with rls: true): the fan-out hands a
// change for such subscriptions to their group (same table, role and
// claims), whose goroutine checks it once with the database and delivers
// it to the group's members, in order; deletes go through the group too,
// key only. Group goroutines exist while a group has work and are waited
// for at shutdown.
//
// Locks: hub.mu (position, history, registration) is taken before
// subscription.mu, which is taken before queue.mu; the subscription index
// has its own lock, taken inside hub.mu. rlsGroups.mu is taken before
// rlsGroup.mu, and neither is held while delivering. Server.mu guards only
// the set of connections and is never held while taking another lock.
// wsConn.mu is taken before queue.mu (a writer deciding to end checks the
// queue under it); the queue calls notify after releasing queue.mu; the
// flusher holds no lock of the hub's. corkConn.mu, the socket's, is
// taken last.
// poller.mu is never held while taking another lock.
package feed
