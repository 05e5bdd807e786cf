//go:build !linux

package feed

import (
	"errors"
	"log/slog"
	"syscall"
)

// poller is Linux only (epoll): elsewhere an idle connection's reader
// waits in its goroutine.
type poller struct{}

func newPoller(*slog.Logger) (*poller, error) { return nil, errors.New("no poller on this platform") }

func (p *poller) run()                   {}
func (p *poller) stop()                  {}
func (p *poller) add(ws *wsConn)         {}
func (p *poller) watch(ws *wsConn) error { return errors.New("no poller on this platform") }
func (p *poller) forget(ws *wsConn)      {}

// writeNow would write without waiting; elsewhere it takes nothing, and
// the connection's writer sends.
func writeNow(raw syscall.RawConn, p []byte) (int, error) { return 0, nil }
