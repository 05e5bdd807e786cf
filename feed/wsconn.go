package feed

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// What an idle WebSocket connection holds is what decides how many clients
// a node serves (a 10,000-connection node is common), so a connection keeps
// only this while nothing happens: small read and write buffers, two timers,
// and no goroutine on Linux (its reader sleeps in the server's poller;
// elsewhere one reader waits). A writer goroutine runs only while there is
// something to send. On a busy connection (its last writer that sent
// something ended less than Config.WriterLinger ago) it lingers that long,
// so that a stream of changes does not start one per batch; otherwise it
// ends at once, so that a burst of new connections, each sent its
// "subscribed", does not hold a goroutine (and its stack) per connection:
// 10,000 connections opened at once held 14 KiB each of resident memory 5 s
// later with a 2 s linger, 9 KiB without.
const (
	wsReadBuffer  = 512 // client messages are small JSON; bigger reads bypass it
	wsWriteBuffer = 256 // writes go through sock, which batches them anyway
	// corkFlushBytes bounds what a corked socket buffers before it sends.
	corkFlushBytes = 64 << 10
)

// corkPool holds the buffers of corked sockets: a connection holds one only
// while its writer sends a burst.
var corkPool = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

// corkConn is a hijacked WebSocket connection's socket. While its writer
// has it corked, writes collect in a pooled buffer that uncork sends with
// one system call: a burst of queued messages costs one write, where
// coder/websocket flushes each message on its own. Every write to the
// network runs under the write deadline.
type corkConn struct {
	net.Conn
	timeout time.Duration
	rest    []byte          // read by net/http before the hijack; the reader's alone
	raw     syscall.RawConn // the socket, when a plain one: for sendNow and the poller

	mu     sync.Mutex
	corked bool    // guarded by mu
	buf    *[]byte // guarded by mu: set while corked
	err    error   // guarded by mu: the first failed write; later ones fail too
}

func (c *corkConn) Read(p []byte) (int, error) {
	if len(c.rest) > 0 {
		n := copy(p, c.rest)
		if c.rest = c.rest[n:]; len(c.rest) == 0 {
			c.rest = nil
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if !c.corked {
		return c.send(p)
	}
	*c.buf = append(*c.buf, p...)
	if len(*c.buf) >= corkFlushBytes {
		if _, err := c.send(*c.buf); err != nil {
			return 0, err
		}
		*c.buf = (*c.buf)[:0]
	}
	return len(p), nil
}

// send writes p to the network under the deadline. c.mu is held.
func (c *corkConn) send(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.timeout))
	n, err := c.Conn.Write(p)
	if err != nil {
		c.err = err
	}
	return n, err
}

// sendNow sends p without waiting for the socket: what it cannot take now
// stays corked, for the writer's uncork. It reports whether p went out
// whole. While the socket is corked (a writer's burst, or what sendNow
// left) p joins what waits, after it.
func (c *corkConn) sendNow(p []byte) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return false, c.err
	}
	n := 0
	if !c.corked && c.raw != nil {
		var err error
		if n, err = writeNow(c.raw, p); err != nil {
			c.err = err
			return false, err
		}
		if n == len(p) {
			return true, nil
		}
	}
	if !c.corked {
		c.corked, c.buf = true, corkPool.Get().(*[]byte)
	}
	*c.buf = append(*c.buf, p[n:]...)
	return false, nil
}

func (c *corkConn) cork() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		c.corked, c.buf = true, corkPool.Get().(*[]byte)
	}
}

// uncork sends what the cork held.
func (c *corkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.err
	}
	var err error
	if len(*c.buf) > 0 && c.err == nil {
		_, err = c.send(*c.buf)
	}
	*c.buf = (*c.buf)[:0]
	if cap(*c.buf) <= corkFlushBytes*2 {
		corkPool.Put(c.buf)
	}
	c.corked, c.buf = false, nil
	if err == nil {
		err = c.err
	}
	return err
}

// corkingWriter makes websocket.Accept hijack into a corkConn with small
// buffers.
type corkingWriter struct {
	http.ResponseWriter
	timeout time.Duration
	sock    *corkConn     // set by Hijack
	br      *bufio.Reader // set by Hijack: what coder/websocket reads through
}

func (w *corkingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	raw, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	w.sock = &corkConn{Conn: raw, timeout: w.timeout}
	// Only a plain socket: a wrapper that buffers of its own would hide
	// its reads from the poller, and take writes in another form.
	var sc syscall.Conn
	switch c := raw.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	}
	if sc != nil {
		w.sock.raw, _ = sc.SyscallConn()
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		w.sock.rest = bytes.Clone(b)
	}
	w.br = bufio.NewReaderSize(w.sock, wsReadBuffer)
	return w.sock, bufio.NewReadWriter(w.br, bufio.NewWriterSize(w.sock, wsWriteBuffer)), nil
}

// wsConn is one WebSocket connection: its reader goroutine runs the
// connection (wsConn.read) and starts a writer goroutine whenever its queue
// has something to send, a ping is due or the token expired.
type wsConn struct {
	s    *Server
	c    *client
	conn *websocket.Conn // set once by start, under mu
	sock *corkConn       // likewise
	br   *bufio.Reader   // set by start: conn's read buffer; only the reader uses it

	// The reader's own, kept while it sleeps.
	rate   rateLimit     // subscribe messages' token bucket
	pollID uint64        // the poller's id for the socket, 0 before the first watch
	wake   chan struct{} // one token: a running writer has something to do

	// ctx is the context of the connection's reads and the work they
	// start (subscribing, replays, token checks); cancel ends it, when the
	// reader ends or a writer gives up on the connection. Set by start.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	writing  bool        // guarded by mu: a writer goroutine runs
	ended    bool        // guarded by mu: the connection is over; no writer starts
	pingDue  bool        // guarded by mu
	pongDue  bool        // guarded by mu: a client's ping awaits its pong
	pongData []byte      // guarded by mu: that ping's payload
	unponged bool        // guarded by mu: a ping has had no pong yet
	pingSent time.Time   // guarded by mu: when the oldest unanswered ping was sent
	lastTurn time.Time   // guarded by mu: when the last writer that sent messages ended
	parked   bool        // guarded by mu: the reader waits in awaitMessage, outside coder/websocket
	asleep   bool        // guarded by mu: no reader runs; the poller wakes one on input
	closing  *closeReq   // guarded by mu: the writer asked for a close handshake
	expired  bool        // guarded by mu: the token expired
	expiry   *time.Timer // guarded by mu: fires when the token expires
	ping     *time.Timer // set by start
	writers  sync.WaitGroup
}

func newWSConn(s *Server, c *client) *wsConn {
	ws := &wsConn{s: s, c: c, wake: make(chan struct{}, 1)}
	c.q.notify = ws.kick // before anything can push to the queue
	c.q.flush = ws.flush
	return ws
}

// start attaches the upgraded connection; until then kick only records
// that there is work.
func (ws *wsConn) start(conn *websocket.Conn, sock *corkConn, br *bufio.Reader) {
	ws.ctx, ws.cancel = context.WithCancel(context.Background())
	ws.br = br
	if sock.raw != nil && ws.s.poller != nil {
		ws.s.poller.add(ws)
	}
	ws.rate = rateLimit{tokens: float64(2 * ws.s.cfg.SubscribeRate), last: time.Now()}
	ws.mu.Lock()
	ws.conn, ws.sock = conn, sock
	ws.ping = time.AfterFunc(ws.s.cfg.Heartbeat, func() {
		ws.mu.Lock()
		ws.pingDue = true
		ws.mu.Unlock()
		ws.kick()
	})
	ws.mu.Unlock()
	ws.armExpiry()
	ws.kick()
}

// read is the connection's reader: it reads client messages until the
// connection ends, then tears it down, or until it falls asleep (nothing to
// read; the poller or a close starts a reader again, see wakeReader). The caller
// has tracked c; the last reader untracks it when every goroutine of the
// connection has ended.
func (ws *wsConn) read() {
	if asleep := ws.s.wsReader(ws.ctx, ws); asleep {
		return
	}
	defer ws.s.untrack(ws.c)
	// Reads and the subscriptions they start stop when the reader does;
	// the writer goes on to send what is queued (an error, a close
	// reason) until the queue closes.
	ws.cancel()
	ws.c.replays.Wait()
	ws.s.endAll(ws.c)
	ws.c.q.close("closed")
	ws.mu.Lock()
	ws.ended = true
	ws.ping.Stop()
	if ws.expiry != nil {
		ws.expiry.Stop()
	}
	ws.mu.Unlock()
	ws.writers.Wait()
	if p := ws.s.poller; p != nil {
		p.forget(ws)
	}
	_ = ws.conn.CloseNow()
}

// wakeReader starts a reader if the connection is asleep: input came, or the
// writer closed or is closing the connection, which a reader must see.
func (ws *wsConn) wakeReader() {
	if ws.takeAsleep() {
		go ws.read()
	}
}

// takeAsleep ends the connection's sleep, if it sleeps, and reports
// whether it did: the caller then starts a reader.
func (ws *wsConn) takeAsleep() bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.endSleep()
}

// endSleep is takeAsleep with ws.mu held.
func (ws *wsConn) endSleep() bool {
	if !ws.asleep {
		return false
	}
	ws.asleep = false
	ws.s.asleep.Add(-1)
	return true
}

// sleep hands the connection to the poller until input comes, and reports
// whether this reader must end: false when it could not sleep (no poller,
// a closed socket, a close requested), so that it waits in Peek instead.
func (ws *wsConn) sleep() bool {
	p := ws.s.poller
	if p == nil || ws.pollID == 0 || len(ws.sock.rest) > 0 {
		return false
	}
	ws.mu.Lock()
	if ws.closing != nil {
		ws.mu.Unlock()
		return false
	}
	ws.asleep, ws.parked = true, false
	ws.s.asleep.Add(1)
	ws.mu.Unlock()
	if err := p.watch(ws); err != nil {
		// Read on, parked, unless a close or an abort found the
		// connection asleep meanwhile and started a reader of its own.
		ws.mu.Lock()
		defer ws.mu.Unlock()
		if !ws.endSleep() {
			return true
		}
		ws.parked = true
		return false
	}
	// From here on another reader may run: touch nothing.
	return true
}

// pingFrame is a WebSocket ping with no payload, as a server sends it
// (unmasked). Written straight to the socket between the writer's
// messages: coder/websocket flushes every frame whole, so it never lands
// inside one.
var pingFrame = []byte{0x89, 0x00}

// pong records that the peer answered.
func (ws *wsConn) pong() {
	ws.mu.Lock()
	ws.unponged = false
	ws.mu.Unlock()
}

// closeReq is a close code and reason to send.
type closeReq struct {
	code   websocket.StatusCode
	reason string
}

// close sends a close frame with code and reason and waits (a few seconds
// at most) for the client's, as coder/websocket's Close does. Its close
// handshake reads the connection; so does the reader while parked in
// awaitMessage, outside coder/websocket's locks. So when the reader is
// parked, close wakes it (a read deadline in the past) and leaves the
// handshake to it; when it is asleep, close starts one for it. Only the
// writer calls close.
func (ws *wsConn) close(code websocket.StatusCode, reason string) {
	ws.mu.Lock()
	ws.closing = &closeReq{code: code, reason: reason}
	parked, asleep := ws.parked, ws.endSleep()
	if parked {
		// Under mu: the reader clears it only after it has seen closing
		// (closeParked), so a late deadline never cuts its handshake.
		_ = ws.sock.SetReadDeadline(time.Now())
	}
	ws.mu.Unlock()
	switch {
	case asleep:
		go ws.read()
	case parked:
	default:
		_ = ws.conn.Close(code, reason)
	}
}

// abort closes the connection without a close handshake (a dead or
// failing peer), and wakes the reader to tear the connection down.
func (ws *wsConn) abort() {
	_ = ws.conn.CloseNow()
	ws.wakeReader()
}

// awaitMessage returns once the next client frame starts a message (or is
// a control frame other than a pong), consuming pongs on the way. Waiting
// here, at the top of the reader's shallow stack, rather than inside
// coder/websocket's Reader keeps an idle connection's goroutine stack
// small: the runtime sizes new goroutine stacks by what parked ones use.
// (coder/websocket's Reader would also keep waiting after a pong, deep in
// its frame loop.) With nothing buffered it puts the connection to sleep
// (see sleep) and reports asleep: the calling goroutine must end; not
// before it has read once when mayRest is false (a reader just woken for
// input, or a new connection). It
// returns an error when the connection is over: read failed, or the writer
// asked for a close, which awaitMessage then makes.
func (ws *wsConn) awaitMessage(mayRest bool) (asleep bool, err error) {
	ws.mu.Lock()
	req := ws.closing
	ws.parked = req == nil
	ws.mu.Unlock()
	if req != nil {
		return false, ws.closeParked(req)
	}
	for {
		if mayRest && ws.br.Buffered() == 0 && ws.sleep() {
			return true, nil
		}
		mayRest = true
		h, err := ws.br.Peek(2)
		// A whole, masked pong or ping (control frames are never
		// fragmented) with a short payload: 2 header bytes, the mask, the
		// payload. A ping's pong is the writer's to send: a frame written
		// from here could land inside one of its messages.
		if err == nil && (h[0] == 0x8A || h[0] == 0x89) && h[1]&0x80 != 0 && h[1]&0x7f <= 125 {
			n := 2 + 4 + int(h[1]&0x7f)
			var f []byte
			if f, err = ws.br.Peek(n); err == nil {
				if f[0] == 0x8A {
					ws.pong()
				} else {
					ws.answerPing(f[2:6], f[6:])
				}
				_, _ = ws.br.Discard(n)
				mayRest = true
				continue
			}
		}
		ws.mu.Lock()
		ws.parked = false
		req := ws.closing
		ws.mu.Unlock()
		if req != nil {
			return false, ws.closeParked(req)
		}
		return false, err
	}
}

// answerPing has the writer send a pong for a client's ping with the given
// mask and masked payload (only the latest ping is answered, as RFC 6455
// allows).
func (ws *wsConn) answerPing(mask, masked []byte) {
	data := make([]byte, len(masked))
	for i := range masked {
		data[i] = masked[i] ^ mask[i%4]
	}
	ws.mu.Lock()
	ws.pongDue, ws.pongData = true, data
	ws.mu.Unlock()
	ws.kick()
}

// closeParked makes the close handshake the writer asked for while the
// reader was parked.
func (ws *wsConn) closeParked(req *closeReq) error {
	_ = ws.sock.SetReadDeadline(time.Time{})
	_ = ws.conn.Close(req.code, req.reason)
	return net.ErrClosed
}

// armExpiry (re)starts the timer of the client's token expiry.
func (ws *wsConn) armExpiry() {
	_, expires := ws.c.identity()
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.expiry != nil {
		ws.expiry.Stop()
		ws.expiry = nil
	}
	ws.expired = false // a fresh token replaces one that just expired
	if ws.ended || expires.IsZero() {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(time.Until(expires), func() {
		ws.mu.Lock()
		// A timer stopped by a later armExpiry may fire all the same.
		current := ws.expiry == t
		if current {
			ws.expired = true
		}
		ws.mu.Unlock()
		if current {
			ws.kick()
		}
	})
	ws.expiry = t
}

// kick makes sure a writer runs: it wakes the running one or starts one.
// It never blocks, so the fan-out may call it (through the queue).
func (ws *wsConn) kick() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.conn == nil || ws.ended && !ws.writing {
		return
	}
	if ws.writing {
		select {
		case ws.wake <- struct{}{}:
		default:
		}
		return
	}
	ws.writing = true
	ws.writers.Add(1)
	go ws.write()
}

// flush is the queue's flush (see flusher): once the fan-out has queued a
// batch, the flusher sends what the queue holds itself, standing in for
// the writer, when no writer runs and nothing but messages is due: framed
// into one buffer and written with one system call that does not wait. So
// a change costs no writer goroutine, wake-up or timer per connection.
// What the socket cannot take at once stays corked, and a writer starts to
// send it, under the write deadline as ever; a writer also starts for
// anything else that is due (a ping, a close, an expired token, a failed
// write).
func (ws *wsConn) flush(fb *flushBufs) {
	ws.mu.Lock()
	if ws.writing || ws.conn == nil || ws.ended || ws.pingDue || ws.pongDue || ws.expired || ws.closing != nil {
		ws.mu.Unlock()
		ws.kick()
		return
	}
	// This goroutine is the connection's writer until it hands over.
	ws.writing = true
	ws.writers.Add(1)
	ws.mu.Unlock()

	items, open := ws.c.q.takeOpen(fb.items)
	out := fb.out[:0]
	for _, it := range items {
		out = appendFrame(out, it)
	}
	clear(items)
	fb.items, fb.out = items, out
	sent, err := true, error(nil)
	if len(out) > 0 {
		sent, err = ws.sock.sendNow(out)
	}

	ws.mu.Lock()
	select {
	case <-ws.wake: // a kick meanwhile; the checks below see its cause
	default:
	}
	if err == nil && sent && open && !ws.pingDue && !ws.pongDue && !ws.expired && ws.c.q.idle() {
		ws.writing = false
		ws.mu.Unlock()
		ws.writers.Done()
		return
	}
	ws.mu.Unlock()
	go ws.write() // it inherits writing and the writers count
}

// write is the writer goroutine: it sends queued messages (corked: one
// system call per burst), pings, and closes the connection when the queue
// closes or the token expires. It ends when it has nothing to do, after
// Config.WriterLinger on a busy connection.
func (ws *wsConn) write() {
	defer ws.writers.Done()
	ws.s.writers.Add(1)
	defer ws.s.writers.Add(-1)
	ws.mu.Lock()
	busy := !ws.lastTurn.IsZero() && time.Since(ws.lastTurn) < ws.s.cfg.WriterLinger
	ws.mu.Unlock()
	var (
		buf   []item
		frame []byte
		idle  *time.Timer
		sent  bool // messages went out: linger for more if busy
	)
	defer func() {
		if idle != nil {
			idle.Stop()
		}
	}()
	stop := func() {
		ws.mu.Lock()
		ws.writing, ws.ended = false, true
		ws.mu.Unlock()
		// Whatever the reader is doing for the client (a subscribe
		// waiting on the database, a token check) is moot now.
		ws.cancel()
	}
	// What the fan-out's flush could not send at once goes first.
	if err := ws.sock.uncork(); err != nil {
		stop()
		ws.abort()
		return
	}
	for {
		ws.mu.Lock()
		ping, expired := ws.pingDue, ws.expired
		pong, pongData := ws.pongDue, ws.pongData
		ws.pingDue, ws.pongDue, ws.pongData = false, false, nil
		ws.mu.Unlock()
		if expired {
			stop()
			ws.close(websocket.StatusPolicyViolation, "token_expired")
			return
		}
		if pong {
			frame := append([]byte{0x8A, byte(len(pongData))}, pongData...)
			if _, err := ws.sock.Write(frame); err != nil {
				stop()
				ws.abort()
				return
			}
		}
		if ping {
			// A ping of our own (coder/websocket's Ping waits for the
			// pong, which the reader takes out of the stream; see
			// awaitMessage): a peer that has left one unanswered for
			// Config.PongWait is gone.
			ws.mu.Lock()
			dead := ws.unponged && time.Since(ws.pingSent) >= ws.s.cfg.PongWait
			if !ws.unponged {
				ws.unponged, ws.pingSent = true, time.Now()
			}
			ws.mu.Unlock()
			if dead {
				stop()
				ws.abort()
				return
			}
			if _, err := ws.sock.Write(pingFrame); err != nil {
				stop()
				ws.abort()
				return
			}
			ws.mu.Lock()
			if !ws.ended {
				ws.ping.Reset(ws.s.cfg.Heartbeat)
			}
			ws.mu.Unlock()
		}
		var reason string
		buf, reason = ws.c.q.take(buf)
		if len(buf) > 0 {
			ws.sock.cork()
			var err error
			for _, it := range buf {
				if err = ws.s.wsWrite(ws.sock, it, &frame); err != nil {
					break
				}
			}
			if uerr := ws.sock.uncork(); err == nil {
				err = uerr
			}
			clear(buf)
			if err != nil {
				stop()
				ws.abort()
				return
			}
		}
		switch reason {
		case "":
		case "slow_consumer":
			stop()
			ws.s.slow.Add(1)
			ws.s.cfg.Logger.Info("closing slow WebSocket client")
			ws.close(websocket.StatusTryAgainLater, "slow_consumer")
			return
		case "too_large":
			stop()
			ws.close(websocket.StatusMessageTooBig, "too_large")
			return
		case "going_away":
			stop()
			ws.close(websocket.StatusGoingAway, "server shutting down")
			return
		default:
			stop()
			return
		}
		if len(buf) > 0 {
			sent = true
			continue
		}
		if ping || pong {
			continue
		}
		// Nothing to do: wait a little for more, then end; at once when
		// this writer only pinged or ponged (an idle connection's
		// heartbeat need not keep a goroutine), or when the connection
		// is not busy.
		if !sent || !busy {
			if ws.stopIfIdle(sent) {
				return
			}
			continue
		}
		if idle == nil {
			idle = time.NewTimer(ws.s.cfg.WriterLinger)
		} else {
			idle.Reset(ws.s.cfg.WriterLinger)
		}
		select {
		case <-ws.wake:
			continue
		case <-idle.C:
		}
		if ws.stopIfIdle(true) {
			return
		}
	}
}

// stopIfIdle ends the writer's turn when nothing is left for it to do (a
// kick after this starts a new writer), and reports whether it did. sent
// says that the turn sent messages, which makes the next turn's writer,
// within Config.WriterLinger, linger.
func (ws *wsConn) stopIfIdle(sent bool) bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.pingDue || ws.pongDue || ws.expired || !ws.c.q.idle() {
		return false
	}
	ws.writing = false
	if sent {
		ws.lastTurn = time.Now()
	}
	return true
}
