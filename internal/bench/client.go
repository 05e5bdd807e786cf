package bench

import (
	"bufio"
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

// subscribeMessage subscribes to the whole bench table.
var subscribeMessage = []byte(`{"type":"subscribe","id":"s1","table":"` + Table + `"}`)

// changePrefix starts every change message the server sends.
var changePrefix = []byte(`{"type":"change",`)

// keyPrefix precedes the row id in a change message (the key is the
// compact JSON of the primary key).
var keyPrefix = []byte(`"key":{"id":`)

// subscriber is one WebSocket connection with one subscription to the
// whole table, and what it received. The bench speaks the protocol itself
// (RFC 6455, as a client: masked frames out, no extensions): it shares the
// machine with the server it measures, so each message it receives should
// cost it one read and no more (see reader).
type subscriber struct {
	epoch      int64 // unix ns receipt times are relative to
	centrifugo bool  // the server is Centrifugo, not pgfeed (see centrifugo.go)

	subscribed chan struct{} // closed when "subscribed" arrives
	failed     chan struct{} // closed when problem is set
	done       chan struct{} // closed when the reader has ended

	// distinct counts the different ids received; written by the reader,
	// read by anyone.
	distinct atomic.Int64

	sock socket // the connection, as the reader holds it

	// Written only by whoever reads the connection (open until the reader
	// has it); read by others only after done is closed.
	in         []byte   // received bytes not yet parsed (a partial frame)
	frag       []byte   // a fragmented message's payload so far
	recv       []uint32 // per id: wall-clock microseconds since epoch + 1; 0 = not received
	messages   int64    // change messages received
	dups       int64    // change messages for an id already received
	unexpected int64    // change messages for an id out of range or unparsable
	problem    string   // the first error or reset message from the server; set once
	endErr     error    // why the connection ended
}

// socket is what a subscriber's reader writes (pongs, the close
// handshake's reply) and how others end the connection.
type socket interface {
	write(p []byte) error
	// shutdown makes the reader see the end of the connection; safe from
	// any goroutine, at any time, more than once.
	shutdown()
}

// closeError is how the server closed the connection.
type closeError struct {
	code   int
	reason string
}

func (e *closeError) Error() string {
	return fmt.Sprintf("closed by the server: code %d, reason %q", e.code, e.reason)
}

// control is the part of a non-change message the bench looks at.
type control struct {
	Type    string `json:"type"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Reason  string `json:"reason"`
}

// dialer opens subscribers to one server, and reads them all.
type dialer struct {
	addr       string
	epoch      int64 // unix ns
	centrifugo bool  // the server is Centrifugo
	reader     *reader
}

// newDialer returns a dialer for srv; stop it once its subscribers have
// ended.
func newDialer(srv *server, epoch time.Time) (*dialer, error) {
	r, err := newReader()
	if err != nil {
		return nil, err
	}
	return &dialer{addr: srv.addr, epoch: epoch.UnixNano(), centrifugo: srv.centrifugo, reader: r}, nil
}

// stop ends the reader, and with it every subscriber still connected.
func (d *dialer) stop() { d.reader.stop() }

// readLimit bounds one message from the server.
const readLimit = 1 << 20

// wsGUID is RFC 6455's key suffix for Sec-WebSocket-Accept.
const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// open dials, upgrades, subscribes and hands the connection to the reader;
// it returns once the server has confirmed the subscription. ids is the
// size of the receipt table (0: no changes expected).
func (d *dialer) open(ctx context.Context, ids int) (*subscriber, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	path := "/v1/ws"
	if d.centrifugo {
		path = "/connection/websocket"
	}
	url := "ws://" + d.addr + path
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, "tcp", d.addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	s := &subscriber{
		epoch:      d.epoch,
		centrifugo: d.centrifugo,
		subscribed: make(chan struct{}),
		failed:     make(chan struct{}),
		done:       make(chan struct{}),
	}
	if ids > 0 {
		s.recv = make([]uint32, ids+1)
	}
	if err := s.upgrade(ctx, conn, d.addr, path); err != nil {
		conn.Close()
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	if err := d.reader.add(s, conn); err != nil {
		return nil, fmt.Errorf("dial %s: %w", url, err)
	}
	select {
	case <-s.subscribed:
		return s, nil
	case <-s.failed:
		s.close()
		<-s.done
		return nil, fmt.Errorf("subscribe: %s", s.problem)
	case <-s.done:
		return nil, fmt.Errorf("subscribe: connection ended: %w", s.endErr)
	case <-ctx.Done():
		s.close()
		<-s.done
		return nil, fmt.Errorf("subscribe: no answer: %w", ctx.Err())
	}
}

// upgrade makes the opening handshake for path on conn and sends the
// subscribe message; what the server sent after its answer is left in s.in.
func (s *subscriber) upgrade(ctx context.Context, conn net.Conn, host, path string) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
		defer conn.SetDeadline(time.Time{})
	}
	var k [16]byte
	_, _ = crand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	req := "GET " + path + " HTTP/1.1\r\nHost: " + host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + key + "\r\nSec-WebSocket-Version: 13\r\n\r\n"
	// pgfeed takes the subscribe message in the same write as the
	// request; Centrifugo refuses a client that sends before the answer.
	first := []byte(req)
	if !s.centrifugo {
		first = append(first, clientFrame(opText, subscribeMessage)...)
	}
	if _, err := conn.Write(first); err != nil {
		return fmt.Errorf("send upgrade: %w", err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		return fmt.Errorf("read upgrade answer: %w", err)
	}
	resp.Body.Close()
	sum := sha1.Sum([]byte(key + wsGUID))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		return fmt.Errorf("upgrade refused: %s", resp.Status)
	}
	if s.centrifugo {
		if _, err := conn.Write(clientFrame(opText, centrifugoHello)); err != nil {
			return fmt.Errorf("send connect and subscribe: %w", err)
		}
	}
	if n := br.Buffered(); n > 0 {
		b, _ := br.Peek(n)
		s.in = append(s.in, b...)
	}
	return nil
}

// WebSocket opcodes.
const (
	opContinuation = 0x0
	opText         = 0x1
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

// clientFrame frames payload as one masked frame (a client's frames are
// masked, RFC 6455 section 5.3).
func clientFrame(op byte, payload []byte) []byte {
	b := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n < 1<<16:
		b = binary.BigEndian.AppendUint16(append(b, 0x80|126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, 0x80|127), uint64(n))
	}
	mask := rand.Uint32()
	b = binary.BigEndian.AppendUint32(b, mask)
	m := b[len(b)-4:]
	for i, c := range payload {
		b = append(b, c^m[i%4])
	}
	return b
}

// consume parses what the connection delivered at t: s.in (left over from
// before) then p. It reports false when the connection is over: a close
// frame came (the close is answered), or the stream broke the protocol
// (s.endErr says which).
func (s *subscriber) consume(p []byte, t time.Duration) bool {
	buf := p
	if len(s.in) > 0 {
		s.in = append(s.in, p...)
		buf = s.in
	}
	for {
		n, ok := s.frame(buf, t)
		if !ok {
			return false
		}
		if n == 0 {
			break
		}
		buf = buf[n:]
	}
	// Keep the partial frame, in s.in's own storage.
	s.in = append(s.in[:0], buf...)
	if cap(s.in) > 64<<10 && len(s.in) < 1<<10 {
		s.in = append([]byte(nil), s.in...)
	}
	return true
}

// frame handles the first frame of b, if b holds it whole, and returns its
// length (0 when incomplete); false when the connection is over.
func (s *subscriber) frame(b []byte, t time.Duration) (int, bool) {
	if len(b) < 2 {
		return 0, true
	}
	fin, op := b[0]&0x80 != 0, b[0]&0x0f
	if b[0]&0x70 != 0 || b[1]&0x80 != 0 {
		s.endErr = errors.New("protocol error: reserved bits or a masked frame from the server")
		return 0, false
	}
	h, n := 2, uint64(b[1]&0x7f)
	switch n {
	case 126:
		if len(b) < 4 {
			return 0, true
		}
		h, n = 4, uint64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		if len(b) < 10 {
			return 0, true
		}
		h, n = 10, binary.BigEndian.Uint64(b[2:10])
	}
	if n > readLimit {
		s.endErr = fmt.Errorf("a %d-byte frame, over the %d-byte limit", n, readLimit)
		return 0, false
	}
	if uint64(len(b)-h) < n {
		return 0, true
	}
	size := h + int(n)
	payload := b[h:size]
	switch op {
	case opText, opContinuation:
		if op == opText && s.frag != nil || op == opContinuation && s.frag == nil {
			s.endErr = errors.New("protocol error: a fragmented message out of order")
			return 0, false
		}
		if !fin || s.frag != nil {
			s.frag = append(s.frag, payload...)
			if len(s.frag) > readLimit {
				s.endErr = fmt.Errorf("a message over the %d-byte limit", readLimit)
				return 0, false
			}
			if !fin {
				return size, true
			}
			payload, s.frag = s.frag, nil
		}
		s.message(payload, t)
	case opPing:
		if err := s.sock.write(clientFrame(opPong, payload)); err != nil {
			s.endErr = fmt.Errorf("send pong: %w", err)
			return 0, false
		}
	case opPong:
	case opClose:
		ce := &closeError{code: 1005} // no status
		if len(payload) >= 2 {
			ce.code, ce.reason = int(binary.BigEndian.Uint16(payload)), string(payload[2:])
		}
		s.endErr = ce
		_ = s.sock.write(clientFrame(opClose, payload[:min(len(payload), 2)]))
		return 0, false
	default:
		s.endErr = fmt.Errorf("protocol error: opcode %#x", op)
		return 0, false
	}
	return size, true
}

// message handles one whole text message received at t.
func (s *subscriber) message(msg []byte, t time.Duration) {
	if s.centrifugo {
		s.centrifugoMessage(msg, t)
		return
	}
	if bytes.HasPrefix(msg, changePrefix) {
		s.change(msg, keyPrefix, t)
		return
	}
	var m control
	if err := json.Unmarshal(msg, &m); err != nil {
		s.setProblem(fmt.Sprintf("unreadable message %.200q", msg))
		return
	}
	switch m.Type {
	case "subscribed":
		s.markSubscribed()
	case "error":
		s.setProblem(fmt.Sprintf("server error %s: %s", m.Code, m.Message))
	case "reset":
		s.setProblem("server reset the subscription: " + m.Reason)
	}
}

// markSubscribed records the server's confirmation of the subscription.
func (s *subscriber) markSubscribed() {
	select {
	case <-s.subscribed:
		s.setProblem("a second confirmation of the subscription")
	default:
		close(s.subscribed)
	}
}

func (s *subscriber) setProblem(p string) {
	if s.problem == "" {
		s.problem = p
		close(s.failed)
	}
}

// change records the receipt of one change message at t; the row id
// follows idPrefix.
func (s *subscriber) change(msg, idPrefix []byte, t time.Duration) {
	s.messages++
	id, ok := parseID(msg, idPrefix)
	if !ok || id <= 0 || id >= int64(len(s.recv)) {
		s.unexpected++
		return
	}
	if s.recv[id] != 0 {
		s.dups++
		return
	}
	s.recv[id] = uint32(max(t, 0)/time.Microsecond) + 1
	s.distinct.Add(1)
}

// parseID finds the row id, after prefix, in a change message without
// decoding it.
func parseID(msg, prefix []byte) (int64, bool) {
	i := bytes.Index(msg, prefix)
	if i < 0 {
		return 0, false
	}
	var id int64
	n := 0
	for _, c := range msg[i+len(prefix):] {
		if c < '0' || c > '9' {
			break
		}
		id = id*10 + int64(c-'0')
		n++
		if n > 18 {
			return 0, false
		}
	}
	return id, n > 0
}

// close ends the connection at once; the reader then ends.
func (s *subscriber) close() {
	if s.sock != nil {
		s.sock.shutdown()
	}
}

// ended reports whether the connection has ended.
func (s *subscriber) ended() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// closeReason describes how the server ended the connection (after done).
func (s *subscriber) closeReason() string {
	var ce *closeError
	if errors.As(s.endErr, &ce) {
		if ce.reason != "" {
			return ce.reason
		}
		return fmt.Sprintf("close code %d", ce.code)
	}
	switch {
	case s.endErr == nil:
		return "unknown"
	case errors.Is(s.endErr, io.EOF), errors.Is(s.endErr, io.ErrUnexpectedEOF):
		return "connection closed without a close frame"
	}
	return s.endErr.Error()
}

// openAll opens n subscribers, at most o.Dialers at a time. On error every
// subscriber opened is closed again.
func openAll(ctx context.Context, d *dialer, n, ids int, o *Options) ([]*subscriber, error) {
	subs := make([]*subscriber, n)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.Dialers)
	var opened atomic.Int64
	var logMu sync.Mutex
	next := time.Now().Add(5 * time.Second)
	for i := range subs {
		g.Go(func() error {
			s, err := d.open(gctx, ids)
			if err != nil {
				return fmt.Errorf("subscriber %d of %d: %w", i+1, n, err)
			}
			subs[i] = s
			k := opened.Add(1)
			logMu.Lock()
			if now := time.Now(); now.After(next) {
				next = now.Add(5 * time.Second)
				o.logf("  %d of %d subscribed", k, n)
			}
			logMu.Unlock()
			return nil
		})
		if gctx.Err() != nil {
			break
		}
	}
	if err := g.Wait(); err != nil {
		closeAll(subs)
		return nil, err
	}
	return subs, nil
}

// closeAll closes every subscriber and waits for their readers.
func closeAll(subs []*subscriber) {
	for _, s := range subs {
		if s != nil {
			s.close()
		}
	}
	for _, s := range subs {
		if s != nil {
			<-s.done
		}
	}
}

// waitEnded waits up to d for every reader to end by itself (the server
// closing the connections), then closes what is left.
func waitEnded(subs []*subscriber, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	for _, s := range subs {
		select {
		case <-s.done:
		case <-t.C:
			closeAll(subs)
			return
		}
	}
}
