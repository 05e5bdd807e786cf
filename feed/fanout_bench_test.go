package feed_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/pgfeed/pgfeed/feed"
	"github.com/pgfeed/pgfeed/listener"
)

// BenchmarkFanout measures the server's cost per delivery: changes handed
// straight to Emit (no database in the loop) fan out to 1,000 WebSocket
// subscribers of one table, whose clients read in the same process. ns/op
// is per delivery.
//
//	go test -run '^$' -bench Fanout -cpuprofile /tmp/fanout.prof ./feed/
func BenchmarkFanout(b *testing.B) {
	const subs = 1000
	e := newEnv(b)
	n := e.startNode(feed.Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan int, subs)
	for range subs {
		conn, _, err := websocket.Dial(ctx, "ws://"+n.addr+"/v1/ws", nil)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.CloseNow()
		if err := conn.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"s","table":"orders"}`)); err != nil {
			b.Fatal(err)
		}
		if _, _, err := conn.Read(ctx); err != nil {
			b.Fatal(err)
		}
		go func() {
			count := 0
			for {
				if _, _, err := conn.Read(ctx); err != nil {
					got <- count
					return
				}
				count++
			}
		}()
	}
	changes := b.N/subs + 1
	pos, _ := n.srvPosition()
	b.ResetTimer()
	for i := range changes {
		err := n.srv.Emit(listener.Batch{
			Tick: listener.Tick{ID: pos.Tick + int64(i), Time: time.Now()},
			Changes: []listener.Change{{
				Cursor: listener.Cursor{Tick: pos.Tick + int64(i), Pos: 1}, Schema: "public", Table: "orders", Op: "insert",
				Key: []byte(fmt.Sprintf(`{"id": %d}`, i)), New: []byte(fmt.Sprintf(`{"id": %d, "status": "open", "total": 9.5, "user_id": "u1", "deleted_at": null}`, i)),
			}},
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	cancel()
}
