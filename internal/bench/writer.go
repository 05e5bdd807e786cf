package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
)

// insertSQL is one change: a single-row INSERT, its own transaction.
const insertSQL = "INSERT INTO " + Table + " (id, payload) VALUES ($1, $2)"

// payload is the text every row carries beside its id.
var payload = strings.Repeat("x", 64)

// WriterConfig configures RunWriter.
type WriterConfig struct {
	// DatabaseURL is the database holding the bench table. Required.
	DatabaseURL string
	// Rate is the target number of rows committed per second. Required.
	Rate int
	// Total is the number of rows: ids 1..Total. Required.
	Total int64
	// Writers is the number of goroutines committing rows, each with its
	// own connection. Zero: 4.
	Writers int
}

// RunWriter commits rows 1..Total of the bench table, each a single-row
// INSERT transaction, at Rate per second: a dispatcher hands out every id
// that is due (checked on each tick of a ticker, so late ticks are caught
// up) to the writer goroutines. It reports on out, one line each:
// "start <unix ns>" when dispatching starts, then "c <id> <begin> <commit>"
// right after each row's COMMIT returned: the unix ns times just before the
// INSERT was sent and just after its COMMIT returned. It returns when every row is committed,
// or on the first error.
//
// It is the body of the writer process (`pgfeed bench writer`), which the
// live benches run apart from their subscribers: in one process, thousands
// of runnable reader goroutines delay the writers' clock readings by
// milliseconds.
func RunWriter(ctx context.Context, cfg WriterConfig, out io.Writer) error {
	if cfg.DatabaseURL == "" || cfg.Rate <= 0 || cfg.Total <= 0 {
		return errors.New("bench writer: database URL, rate and total are required")
	}
	if cfg.Writers <= 0 {
		cfg.Writers = 4
	}
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("database URL: %w", err)
	}
	pcfg.MaxConns = int32(cfg.Writers)
	pcfg.MinConns = int32(cfg.Writers)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return fmt.Errorf("connect writers: %w", err)
	}
	defer pool.Close()
	// Open every connection and prepare the statement now, not in the
	// first second of the load.
	conns := make([]*pgxpool.Conn, 0, cfg.Writers)
	defer func() {
		for _, c := range conns {
			c.Release()
		}
	}()
	for range cfg.Writers {
		c, err := pool.Acquire(ctx)
		if err != nil {
			return fmt.Errorf("connect writers: %w", err)
		}
		conns = append(conns, c)
		if _, err := c.Conn().Prepare(ctx, insertSQL, insertSQL); err != nil {
			return fmt.Errorf("prepare the insert: %w", err)
		}
	}

	type commit struct {
		id    int64
		begin int64 // unix ns
		at    int64
	}
	g, gctx := errgroup.WithContext(ctx)
	jobs := make(chan int64, cfg.Rate)
	done := make(chan commit, 4096)
	start := time.Now()
	if _, err := fmt.Fprintf(out, "start %d\n", start.UnixNano()); err != nil {
		return err
	}
	g.Go(func() error {
		defer close(jobs)
		period := max(time.Second/time.Duration(cfg.Rate), time.Millisecond)
		tick := time.NewTicker(period)
		defer tick.Stop()
		next := int64(1)
		for next <= cfg.Total {
			select {
			case <-gctx.Done():
				return nil
			case <-tick.C:
			}
			due := min(int64(time.Since(start))*int64(cfg.Rate)/int64(time.Second)+1, cfg.Total)
			for ; next <= due; next++ {
				select {
				case jobs <- next:
				case <-gctx.Done():
					return nil
				}
			}
		}
		return nil
	})
	for _, c := range conns {
		g.Go(func() error {
			for id := range jobs {
				begin := time.Now().UnixNano()
				if _, err := c.Exec(gctx, insertSQL, id, payload); err != nil {
					return fmt.Errorf("insert row %d: %w", id, err)
				}
				done <- commit{id, begin, time.Now().UnixNano()}
			}
			return nil
		})
	}
	// The first failure cancels gctx, which stops the dispatcher and the
	// other writers.
	waited := make(chan error, 1)
	go func() {
		err := g.Wait()
		close(done)
		waited <- err
	}()
	// Report from this goroutine, flushing whenever nothing is pending.
	bw := bufio.NewWriter(out)
	var werr error
	var line []byte
	for c := range done {
		if werr != nil {
			continue // keep draining so the writers never block
		}
		line = append(line[:0], 'c', ' ')
		line = strconv.AppendInt(line, c.id, 10)
		line = append(line, ' ')
		line = strconv.AppendInt(line, c.begin, 10)
		line = append(line, ' ')
		line = strconv.AppendInt(line, c.at, 10)
		line = append(line, '\n')
		_, werr = bw.Write(line)
		if werr == nil && len(done) == 0 {
			werr = bw.Flush()
		}
	}
	if err := <-waited; err != nil {
		return err
	}
	if werr == nil {
		werr = bw.Flush()
	}
	return werr
}

// writerProc is the writer process as the bench sees it.
type writerProc struct {
	cmd   *exec.Cmd
	epoch int64 // unix ns all times are relative to

	started chan struct{} // closed when "start" has been read
	done    chan struct{} // closed when the output is read and the process has exited

	// committed counts the rows reported committed; written by the output
	// reader, read by anyone.
	committed atomic.Int64

	// Written by the output reader; read only after done is closed (start
	// also after started is closed).
	start   time.Duration   // when dispatching started, since epoch
	commits []time.Duration // per id: since epoch, right after COMMIT returned; 0 = not committed
	begins  []time.Duration // per id: since epoch, right before the INSERT was sent
	err     error           // the process's failure, with its stderr
}

// startWriter runs `bin bench writer` for ids 1..total.
func startWriter(bin string, cfg WriterConfig, epoch time.Time) (*writerProc, error) {
	cmd := exec.Command(bin, "bench", "writer",
		"--database-url", cfg.DatabaseURL,
		"--rate", strconv.Itoa(cfg.Rate),
		"--total", strconv.FormatInt(cfg.Total, 10),
		"--writers", strconv.Itoa(cfg.Writers))
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PGFEED_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start the writer process: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start the writer process: %w", err)
	}
	w := &writerProc{
		cmd:     cmd,
		epoch:   epoch.UnixNano(),
		started: make(chan struct{}),
		done:    make(chan struct{}),
		commits: make([]time.Duration, cfg.Total+1),
		begins:  make([]time.Duration, cfg.Total+1),
	}
	go func() {
		defer close(w.done)
		rerr := w.readOutput(stdout)
		if rerr != nil {
			_ = cmd.Process.Kill()
		}
		werr := cmd.Wait()
		switch {
		case werr != nil:
			w.err = fmt.Errorf("the writer process failed (%v): %s", werr, strings.TrimSpace(stderr.String()))
		case rerr != nil:
			w.err = rerr
		}
	}()
	return w, nil
}

func (w *writerProc) readOutput(r io.Reader) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case bytes.HasPrefix(line, []byte("c ")):
			f := bytes.Fields(line[2:])
			if len(f) != 3 {
				return fmt.Errorf("the writer process wrote %q", line)
			}
			id, err1 := strconv.ParseInt(string(f[0]), 10, 64)
			begin, err2 := strconv.ParseInt(string(f[1]), 10, 64)
			at, err3 := strconv.ParseInt(string(f[2]), 10, 64)
			if err1 != nil || err2 != nil || err3 != nil || id <= 0 || id >= int64(len(w.commits)) {
				return fmt.Errorf("the writer process wrote %q", line)
			}
			w.begins[id] = time.Duration(begin - w.epoch)
			w.commits[id] = time.Duration(at - w.epoch)
			w.committed.Add(1)
		case bytes.HasPrefix(line, []byte("start ")):
			at, err := strconv.ParseInt(string(line[6:]), 10, 64)
			if err != nil {
				return fmt.Errorf("the writer process wrote %q", line)
			}
			select {
			case <-w.started:
				return fmt.Errorf("the writer process wrote %q twice", "start")
			default:
			}
			w.start = time.Duration(at - w.epoch)
			close(w.started)
		default:
			return fmt.Errorf("the writer process wrote %q", line)
		}
	}
	return sc.Err()
}

// stop ends the process early. Idempotent.
func (w *writerProc) stop() {
	select {
	case <-w.done:
	default:
		_ = w.cmd.Process.Signal(syscall.SIGTERM)
		<-w.done
	}
}
