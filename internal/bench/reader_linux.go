package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// reader reads every subscriber of a dialer on one goroutine, from an epoll
// instance of its own: a message costs one read system call, where a
// goroutine per connection pays the runtime's poller, a park and a wake-up,
// and a read that finds nothing, for each. Each socket is taken out of Go's
// poller (a duplicate descriptor, the net.Conn closed), so that only this
// epoll watches it.
type reader struct {
	epfd int
	wake int // an eventfd: run ends when it becomes readable
	done chan struct{}
	once sync.Once // stop's

	mu      sync.Mutex
	subs    []*subscriber // guarded by mu: by epoll id - 1; nil once ended
	stopped bool          // guarded by mu: run has ended; add refuses
}

// fdSocket is a subscriber's socket as the reader holds it.
type fdSocket struct {
	f  *os.File // owns the descriptor
	fd int

	mu     sync.Mutex
	closed bool // guarded by mu: f is closed (only run closes it)
}

func (s *fdSocket) write(p []byte) error {
	for len(p) > 0 {
		n, err := syscall.Write(s.fd, p)
		if err != nil {
			// Only pongs and the close reply are written, a few bytes into
			// an empty send buffer: it is never full.
			return err
		}
		p = p[n:]
	}
	return nil
}

func (s *fdSocket) shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		_ = syscall.Shutdown(s.fd, syscall.SHUT_RDWR)
	}
}

func newReader() (*reader, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	wake, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		syscall.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", errno)
	}
	r := &reader{epfd: epfd, wake: int(wake), done: make(chan struct{})}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: 0}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, r.wake, &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(r.wake)
		return nil, fmt.Errorf("epoll eventfd: %w", err)
	}
	go r.run()
	return r, nil
}

// add hands s's connection to the reader, after parsing what s holds
// already.
func (r *reader) add(s *subscriber, conn net.Conn) error {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		conn.Close()
		return fmt.Errorf("not a TCP connection: %T", conn)
	}
	f, err := tc.File()
	tc.Close()
	if err != nil {
		return fmt.Errorf("take the socket: %w", err)
	}
	sock := &fdSocket{f: f, fd: int(f.Fd())}
	if err := syscall.SetNonblock(sock.fd, true); err != nil {
		f.Close()
		return fmt.Errorf("take the socket: %w", err)
	}
	s.sock = sock
	if len(s.in) > 0 && !s.consume(nil, time.Duration(time.Now().UnixNano()-s.epoch)) {
		r.end(s, nil)
		return nil
	}
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		r.end(s, errors.New("the bench stopped reading"))
		return errors.New("the bench stopped reading")
	}
	r.subs = append(r.subs, s)
	id := len(r.subs)
	r.mu.Unlock()
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(id)}
	if err := syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_ADD, sock.fd, &ev); err != nil {
		r.mu.Lock()
		r.subs[id-1] = nil
		r.mu.Unlock()
		r.end(s, fmt.Errorf("epoll: %w", err))
		return err
	}
	return nil
}

// run reads until stop, then ends the subscribers still connected.
func (r *reader) run() {
	defer close(r.done)
	events := make([]syscall.EpollEvent, 256)
	buf := make([]byte, 64<<10)
	for {
		n, err := syscall.EpollWait(r.epfd, events, -1)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			r.endAll(fmt.Errorf("epoll wait: %w", err))
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == 0 {
				r.endAll(errors.New("the bench stopped reading"))
				return
			}
			r.mu.Lock()
			s := r.subs[ev.Fd-1]
			r.mu.Unlock()
			if s != nil {
				r.readOne(s, buf, int(ev.Fd))
			}
		}
	}
}

// readOne makes one read of s's socket and parses it.
func (r *reader) readOne(s *subscriber, buf []byte, id int) {
	sock := s.sock.(*fdSocket)
	n, err := syscall.Read(sock.fd, buf)
	t := time.Duration(time.Now().UnixNano() - s.epoch)
	switch {
	case errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR):
		return
	case err != nil:
		r.forget(id)
		r.end(s, fmt.Errorf("read: %w", err))
	case n == 0:
		r.forget(id)
		r.end(s, io.EOF)
	case !s.consume(buf[:n], t):
		r.forget(id)
		r.end(s, nil)
	}
}

func (r *reader) forget(id int) {
	r.mu.Lock()
	s := r.subs[id-1]
	r.subs[id-1] = nil
	r.mu.Unlock()
	_ = syscall.EpollCtl(r.epfd, syscall.EPOLL_CTL_DEL, s.sock.(*fdSocket).fd, nil)
}

// end closes s's socket and marks it done, with err as the reason unless
// it has one.
func (r *reader) end(s *subscriber, err error) {
	if s.endErr == nil {
		s.endErr = err
	}
	sock := s.sock.(*fdSocket)
	sock.mu.Lock()
	sock.closed = true
	sock.f.Close()
	sock.mu.Unlock()
	close(s.done)
}

func (r *reader) endAll(err error) {
	r.mu.Lock()
	subs := r.subs
	r.subs, r.stopped = nil, true
	r.mu.Unlock()
	for _, s := range subs {
		if s != nil {
			r.end(s, err)
		}
	}
}

// stop ends run and waits for it. Idempotent.
func (r *reader) stop() {
	r.once.Do(func() {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1) // what an eventfd counts by
		_, _ = syscall.Write(r.wake, one[:])
		<-r.done
		syscall.Close(r.epfd)
		syscall.Close(r.wake)
	})
}
