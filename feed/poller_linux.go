package feed

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"unsafe"
)

// poller watches the sockets of idle WebSocket connections with an epoll
// instance of its own, so that an idle connection needs no goroutine: when
// its reader finds nothing to read it registers the socket (one-shot) and
// ends; when input arrives, run starts a reader again (wsConn.wakeReader). Go's
// own netpoller keeps doing the reads.
//
// Registrations carry an id, never the descriptor: a closed socket's number
// may be reused by a new connection while an event for the old one is
// pending. Closing a socket removes its registration.
type poller struct {
	epfd int
	wake [2]int // a pipe: run ends when wake[0] becomes readable
	log  *slog.Logger
	done chan struct{}

	mu     sync.Mutex
	conns  map[uint64]*wsConn // guarded by mu
	nextID uint64             // guarded by mu; 0 is the wake pipe
	dead   bool               // guarded by mu: run failed; nothing may sleep
}

func newPoller(log *slog.Logger) (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	p := &poller{epfd: epfd, log: log, done: make(chan struct{}), conns: make(map[uint64]*wsConn)}
	if err := syscall.Pipe2(p.wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil, fmt.Errorf("epoll wake pipe: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p.wake[0], &ev); err != nil {
		p.closeFDs()
		return nil, fmt.Errorf("epoll wake pipe: %w", err)
	}
	return p, nil
}

func (p *poller) closeFDs() {
	syscall.Close(p.epfd)
	syscall.Close(p.wake[0])
	syscall.Close(p.wake[1])
}

// run dispatches readiness until stop. Its owner (Server.Serve) calls stop
// and waits for it.
func (p *poller) run() {
	defer close(p.done)
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			// Nothing would wake a sleeping connection: wake them all, and
			// let none sleep again (their readers wait in their goroutines).
			p.log.Error("epoll wait failed; idle WebSocket connections keep a goroutine from now on", "err", err)
			p.mu.Lock()
			p.dead = true
			conns := make([]*wsConn, 0, len(p.conns))
			for _, ws := range p.conns {
				conns = append(conns, ws)
			}
			p.mu.Unlock()
			for _, ws := range conns {
				ws.wakeReader()
			}
			return
		}
		for _, ev := range events[:n] {
			id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if id == 0 {
				return
			}
			p.mu.Lock()
			ws := p.conns[id]
			p.mu.Unlock()
			if ws != nil {
				ws.wakeReader()
			}
		}
	}
}

// stop ends run and releases the epoll instance. Connections must not
// watch afterwards.
func (p *poller) stop() {
	_, _ = syscall.Write(p.wake[1], []byte{1})
	<-p.done
	p.closeFDs()
}

// add gives ws an id for its registrations. Call before watch.
func (p *poller) add(ws *wsConn) {
	p.mu.Lock()
	p.nextID++
	ws.pollID = p.nextID
	p.conns[ws.pollID] = ws
	p.mu.Unlock()
}

// watch registers ws's socket until it is readable (or closed), once. It
// keeps no state of its own (a reader woken by a close may call it while
// the one that fell asleep is still returning).
func (p *poller) watch(ws *wsConn) error {
	if ws.pollID == 0 { // not added: no plain socket, or no poller
		return errors.New("socket not pollable")
	}
	p.mu.Lock()
	dead := p.dead
	p.mu.Unlock()
	if dead {
		return errors.New("poller stopped")
	}
	ev := syscall.EpollEvent{
		Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
		Fd:     int32(uint32(ws.pollID)),
		Pad:    int32(uint32(ws.pollID >> 32)),
	}
	var cerr error
	err := ws.sock.raw.Control(func(fd uintptr) {
		// Registered once, re-armed after: MOD, or ADD the first time.
		cerr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_MOD, int(fd), &ev)
		if errors.Is(cerr, syscall.ENOENT) {
			cerr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
		}
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	return nil
}

// forget drops ws for good; its socket is about to be closed.
func (p *poller) forget(ws *wsConn) {
	if ws.pollID == 0 {
		return
	}
	p.mu.Lock()
	delete(p.conns, ws.pollID)
	p.mu.Unlock()
}

// writeNow makes one write of p to the socket without waiting, and returns
// how much of p it took: 0 when its buffer is full. The socket is
// non-blocking, so the write cannot park the thread: a raw system call,
// since the runtime's system-call bookkeeping (and the monitor thread it
// wakes) would cost more than the write on a busy fan-out. Through Control,
// not RawConn.Write, which would refuse once the writer's last deadline has
// passed; callers serialize their writes (corkConn.mu).
func writeNow(raw syscall.RawConn, p []byte) (int, error) {
	var n int
	var werr error
	err := raw.Control(func(fd uintptr) {
		for {
			r, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
			switch errno {
			case 0:
				n = int(r)
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
			default:
				werr = errno
			}
			return
		}
	})
	if err == nil {
		err = werr
	}
	return n, err
}
