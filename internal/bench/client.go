package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
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
// whole table, and what it received.
type subscriber struct {
	conn  *websocket.Conn
	epoch int64 // unix ns receipt times are relative to

	subscribed chan struct{} // closed when "subscribed" arrives
	failed     chan struct{} // closed when problem is set
	done       chan struct{} // closed when the reader has ended

	// distinct counts the different ids received; written by the reader,
	// read by anyone.
	distinct atomic.Int64

	// Written only by the reader goroutine; read by others only after done
	// is closed.
	recv       []uint32 // per id: wall-clock microseconds since epoch + 1; 0 = not received
	messages   int64    // change messages received
	dups       int64    // change messages for an id already received
	unexpected int64    // change messages for an id out of range or unparsable
	problem    string   // the first error or reset message from the server; set once
	endErr     error    // why the connection ended
}

// control is the part of a non-change message the bench looks at.
type control struct {
	Type    string `json:"type"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Reason  string `json:"reason"`
}

// dialer opens subscribers to one server.
type dialer struct {
	url   string
	epoch int64 // unix ns
	http  *http.Client
}

func newDialer(addr string, epoch time.Time) *dialer {
	return &dialer{
		url:   "ws://" + addr + "/v1/ws",
		epoch: epoch.UnixNano(),
		// Loopback only: no proxy. Upgraded connections leave the pool.
		http: &http.Client{Transport: &http.Transport{Proxy: nil}},
	}
}

// open dials, starts the reader and subscribes; it returns once the server
// has confirmed the subscription. ids is the size of the receipt table
// (0: no changes expected).
func (d *dialer) open(ctx context.Context, ids int) (*subscriber, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, d.url, &websocket.DialOptions{
		HTTPClient:      d.http,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", d.url, err)
	}
	conn.SetReadLimit(1 << 20)
	s := &subscriber{
		conn:       conn,
		epoch:      d.epoch,
		subscribed: make(chan struct{}),
		failed:     make(chan struct{}),
		done:       make(chan struct{}),
	}
	if ids > 0 {
		s.recv = make([]uint32, ids+1)
	}
	go s.read()
	if err := conn.Write(ctx, websocket.MessageText, subscribeMessage); err != nil {
		s.close()
		<-s.done
		return nil, fmt.Errorf("send subscribe: %w", err)
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

// read receives messages until the connection ends. Reads use a context
// without a deadline, so coder/websocket arms no timer per message; the
// connection is ended by closing it. Receipts are timed with the wall clock,
// which the writer process reads too.
func (s *subscriber) read() {
	defer close(s.done)
	buf := make([]byte, 0, 1024)
	for {
		_, r, err := s.conn.Reader(context.Background())
		if err != nil {
			s.endErr = err
			return
		}
		buf, err = readAll(r, buf[:0])
		if err != nil {
			s.endErr = err
			return
		}
		if bytes.HasPrefix(buf, changePrefix) {
			s.change(buf, time.Duration(time.Now().UnixNano()-s.epoch))
			continue
		}
		var m control
		if err := json.Unmarshal(buf, &m); err != nil {
			s.setProblem(fmt.Sprintf("unreadable message %.200q", buf))
			continue
		}
		switch m.Type {
		case "subscribed":
			select {
			case <-s.subscribed:
				s.setProblem("a second \"subscribed\" message")
			default:
				close(s.subscribed)
			}
		case "error":
			s.setProblem(fmt.Sprintf("server error %s: %s", m.Code, m.Message))
		case "reset":
			s.setProblem("server reset the subscription: " + m.Reason)
		}
	}
}

func (s *subscriber) setProblem(p string) {
	if s.problem == "" {
		s.problem = p
		close(s.failed)
	}
}

// change records the receipt of one change message at t.
func (s *subscriber) change(msg []byte, t time.Duration) {
	s.messages++
	id, ok := parseID(msg)
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

// parseID finds the row id in a change message without decoding it.
func parseID(msg []byte) (int64, bool) {
	i := bytes.Index(msg, keyPrefix)
	if i < 0 {
		return 0, false
	}
	var id int64
	n := 0
	for _, c := range msg[i+len(keyPrefix):] {
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

// readAll reads r to its end, appending to buf.
func readAll(r io.Reader, buf []byte) ([]byte, error) {
	for {
		if len(buf) == cap(buf) {
			buf = append(buf, 0)[:len(buf)]
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// close ends the connection at once; the reader then ends.
func (s *subscriber) close() { _ = s.conn.CloseNow() }

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
	var ce websocket.CloseError
	if errors.As(s.endErr, &ce) {
		if ce.Reason != "" {
			return ce.Reason
		}
		return fmt.Sprintf("close code %d", int(ce.Code))
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
