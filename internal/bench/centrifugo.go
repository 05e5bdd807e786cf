package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
)

// Centrifugo, with its PostgreSQL outbox consumer, is the peer the latency
// and fan-out benches can measure instead of pgfeed (Options.Centrifugo),
// with the same writer, clients and analysis: the way our figures are
// compared with a peer's on one machine, side by side. The bench table's
// rows reach it as its documentation has an application do it, by a
// trigger: each inserted row becomes a "publish" command of its own (the
// row as to_jsonb renders it, in channel "bench") in an outbox table, whose
// insert trigger NOTIFYs the consumer.

// centrifugoSchema holds the outbox and its functions; dropping it removes
// them (the capture trigger goes with the bench table).
const centrifugoSchema = "bench_centrifugo"

// centrifugoChannel is the channel every subscriber subscribes to.
const centrifugoChannel = "bench"

// centrifugoSetup creates the outbox and captures the bench table into it.
var centrifugoSetup = []string{
	"DROP SCHEMA IF EXISTS " + centrifugoSchema + " CASCADE",
	"CREATE SCHEMA " + centrifugoSchema,
	`CREATE TABLE ` + centrifugoSchema + `.outbox (
		id bigserial PRIMARY KEY,
		method text NOT NULL,
		payload jsonb NOT NULL,
		partition bigint NOT NULL DEFAULT 0,
		created_at timestamptz NOT NULL DEFAULT now())`,
	`CREATE FUNCTION ` + centrifugoSchema + `.wake() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_notify('bench_outbox', NEW.partition::text);
		RETURN NULL;
	END $$`,
	`CREATE TRIGGER wake AFTER INSERT ON ` + centrifugoSchema + `.outbox
		FOR EACH ROW EXECUTE FUNCTION ` + centrifugoSchema + `.wake()`,
	`CREATE FUNCTION ` + centrifugoSchema + `.publish() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO ` + centrifugoSchema + `.outbox (method, payload)
		VALUES ('publish', jsonb_build_object('channel', '` + centrifugoChannel + `', 'data', to_jsonb(NEW)));
		RETURN NULL;
	END $$`,
	`CREATE TRIGGER bench_centrifugo AFTER INSERT ON ` + Table + `
		FOR EACH ROW EXECUTE FUNCTION ` + centrifugoSchema + `.publish()`,
}

// centrifugoConfig is Centrifugo's configuration file for a run: clients
// need no token (as pgfeed's anonymous access), the consumer reads the
// outbox on every NOTIFY (and polls as its default does).
func centrifugoConfig(port int, dbURL string) ([]byte, error) {
	cfg := map[string]any{
		"http_server": map[string]any{"address": "127.0.0.1", "port": port},
		"client":      map[string]any{"insecure": true},
		"health":      map[string]any{"enabled": true},
		"log":         map[string]any{"level": "warn"},
		"consumers": []any{map[string]any{
			"enabled": true,
			"name":    "bench",
			"type":    "postgresql",
			"postgresql": map[string]any{
				"dsn":                            dbURL,
				"outbox_table_name":              centrifugoSchema + ".outbox",
				"num_partitions":                 1,
				"partition_select_limit":         100,
				"partition_poll_interval":        "300ms",
				"partition_notification_channel": "bench_outbox",
			},
		}},
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// writeCentrifugoConfig writes the configuration into dir and returns the
// command line that runs bin with it.
func writeCentrifugoConfig(dir string, port int, dbURL string) ([]string, error) {
	b, err := centrifugoConfig(port, dbURL)
	if err != nil {
		return nil, fmt.Errorf("centrifugo configuration: %w", err)
	}
	path := filepath.Join(dir, "centrifugo.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("write the configuration of centrifugo: %w", err)
	}
	return []string{"--config", path}, nil
}

// prepareCentrifugo sets up the outbox on conn, where the bench table
// exists.
func prepareCentrifugo(ctx context.Context, conn *pgx.Conn) error {
	for _, stmt := range centrifugoSetup {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("set up Centrifugo's outbox: %w", err)
		}
	}
	return nil
}

// Centrifugo's client protocol (JSON): a connect command, then a subscribe
// command; replies carry the command's id. The server may put several
// messages in one WebSocket message, a line each; an empty object is its
// ping, answered with one.
var (
	centrifugoHello     = []byte(`{"id":1,"connect":{}}` + "\n" + `{"id":2,"subscribe":{"channel":"` + centrifugoChannel + `"}}`)
	centrifugoPush      = []byte(`{"push":`)
	centrifugoSubscribe = []byte(`{"id":2,"subscribe":`)
	centrifugoConnect   = []byte(`{"id":1,"connect":`)
	centrifugoPing      = []byte(`{}`)
	// The publication's data is the row as jsonb renders it: "id" is its
	// shortest key, so it comes first.
	centrifugoIDPrefix = []byte(`"data":{"id": `)
)

// centrifugoMessage handles one WebSocket message from Centrifugo,
// received at t.
func (s *subscriber) centrifugoMessage(msg []byte, t time.Duration) {
	for line := range bytes.SplitSeq(msg, []byte("\n")) {
		switch {
		case len(line) == 0:
		case bytes.HasPrefix(line, centrifugoPush):
			if bytes.Contains(line, []byte(`"pub":`)) {
				s.change(line, centrifugoIDPrefix, t)
			}
		case bytes.Equal(line, centrifugoPing):
			if err := s.sock.write(clientFrame(opText, centrifugoPing)); err != nil {
				s.setProblem("answer Centrifugo's ping: " + err.Error())
			}
		case bytes.HasPrefix(line, centrifugoSubscribe) && !bytes.Contains(line, []byte(`"error"`)):
			s.markSubscribed()
		case bytes.HasPrefix(line, centrifugoConnect) && !bytes.Contains(line, []byte(`"error"`)):
		default:
			s.setProblem(fmt.Sprintf("unexpected message from Centrifugo %.200q", line))
		}
	}
}
