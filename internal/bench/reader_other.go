//go:build !linux

package bench

import (
	"net"
	"sync"
	"time"
)

// reader reads each subscriber on a goroutine of its own (the epoll reader
// is Linux only).
type reader struct {
	wg sync.WaitGroup

	mu    sync.Mutex
	socks []*connSocket // guarded by mu
}

type connSocket struct{ conn net.Conn }

func (s *connSocket) write(p []byte) error {
	_, err := s.conn.Write(p)
	return err
}

func (s *connSocket) shutdown() { _ = s.conn.Close() }

func newReader() (*reader, error) { return &reader{}, nil }

func (r *reader) add(s *subscriber, conn net.Conn) error {
	sock := &connSocket{conn: conn}
	s.sock = sock
	r.mu.Lock()
	r.socks = append(r.socks, sock)
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer close(s.done)
		defer conn.Close()
		if len(s.in) > 0 && !s.consume(nil, time.Duration(time.Now().UnixNano()-s.epoch)) {
			return
		}
		buf := make([]byte, 64<<10)
		for {
			n, err := conn.Read(buf)
			t := time.Duration(time.Now().UnixNano() - s.epoch)
			if n > 0 && !s.consume(buf[:n], t) {
				return
			}
			if err != nil {
				if s.endErr == nil {
					s.endErr = err
				}
				return
			}
		}
	}()
	return nil
}

// stop closes every connection and waits for their goroutines.
func (r *reader) stop() {
	r.mu.Lock()
	socks := r.socks
	r.socks = nil
	r.mu.Unlock()
	for _, s := range socks {
		s.shutdown()
	}
	r.wg.Wait()
}
