package listener

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"testing"

	"github.com/jackc/pglogrepl"
)

// message builders for pgoutput protocol version 1.
func msgBegin() []byte {
	b := []byte{'B'}
	b = binary.BigEndian.AppendUint64(b, 0x1000) // final LSN
	b = binary.BigEndian.AppendUint64(b, 0)      // commit time
	return binary.BigEndian.AppendUint32(b, 7)   // xid
}

func msgCommit() []byte {
	b := []byte{'C', 0}
	b = binary.BigEndian.AppendUint64(b, 0x1000)
	b = binary.BigEndian.AppendUint64(b, 0x1010)
	return binary.BigEndian.AppendUint64(b, 0)
}

func msgRelation(cols ...string) []byte {
	b := []byte{'R'}
	b = binary.BigEndian.AppendUint32(b, 16384)
	b = append(b, "public\x00t\x00"...)
	b = append(b, 'd')
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for i, c := range cols {
		flags := byte(0)
		if i == 0 {
			flags = 1
		}
		b = append(b, flags)
		b = append(b, c+"\x00"...)
		b = binary.BigEndian.AppendUint32(b, 25)
		b = binary.BigEndian.AppendUint32(b, 0xffffffff)
	}
	return b
}

// msgTuple writes 'I' (insert) with text values; nil is NULL.
func msgInsert(vals ...[]byte) []byte {
	b := []byte{'I'}
	b = binary.BigEndian.AppendUint32(b, 16384)
	b = append(b, 'N')
	b = binary.BigEndian.AppendUint16(b, uint16(len(vals)))
	for _, v := range vals {
		if v == nil {
			b = append(b, 'n')
			continue
		}
		b = append(b, 't')
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
	}
	return b
}

// FuzzDecode: after a Begin and a Relation (int4, text, jsonb, int4[]
// columns), any message either is refused with an error or decodes; a
// commit then yields changes whose key and rows are valid JSON. Never a
// panic, whatever the server sends.
func FuzzDecode(f *testing.F) {
	f.Add(msgInsert([]byte("1"), []byte("a"), []byte(`{"x":1}`), []byte("{1,NULL}")))
	f.Add(msgInsert([]byte("1"), nil, nil, nil))
	f.Add(msgInsert([]byte("x"), []byte("\x00"), []byte("{"), []byte("{")))
	f.Add(msgRelation("id", "b"))
	f.Add([]byte{'U', 0, 0, 0x40, 0, 'K', 0, 1, 'u'})
	f.Add([]byte{'D', 0, 0, 0x40, 0, 'O', 0, 4, 't', 0, 0, 0, 1, '2', 'n', 'n', 'n'})
	f.Add([]byte{'T', 0, 0, 0, 1, 0, 0, 0, 0x40, 0})
	f.Add(msgCommit())
	int4 := &Type{OID: 23, Kind: kindNumber}
	types := []*Type{int4, {OID: 25, Kind: kindText}, {OID: 3802, Kind: kindJSON}, {OID: 1007, Kind: kindArray, Elem: int4, Delim: ','}}
	describe := func(_ context.Context, m *pglogrepl.RelationMessage) (*relation, error) {
		ts := make([]*Type, len(m.Columns))
		for i := range ts {
			ts[i] = types[i%len(types)]
		}
		return newRelation(m, ts, []string{"id"}), nil
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		d := newDecoder(describe, func(string, ...any) {})
		ctx := context.Background()
		for _, m := range [][]byte{msgBegin(), msgRelation("id", "v", "doc", "nums"), msg} {
			if _, _, err := d.handle(ctx, m); err != nil {
				return
			}
		}
		b, done, err := d.handle(ctx, msgCommit())
		if err != nil || !done {
			return
		}
		for _, c := range b.Changes {
			for _, j := range [][]byte{c.Key, c.New, c.Old} {
				if j != nil && !json.Valid(j) {
					t.Fatalf("%q: invalid JSON %q", msg, j)
				}
			}
		}
	})
}

// TestDecoderReset: a transaction cut off by a lost connection is
// forgotten, and decoded whole when the new session sends it again.
func TestDecoderReset(t *testing.T) {
	ctx := context.Background()
	text := &Type{OID: 25, Kind: kindText}
	d := newDecoder(func(_ context.Context, m *pglogrepl.RelationMessage) (*relation, error) {
		return newRelation(m, []*Type{{OID: 23, Kind: kindNumber}, text}, []string{"id"}), nil
	}, func(string, ...any) {})
	session := func(msgs ...[]byte) (Batch, bool) {
		t.Helper()
		var (
			b    Batch
			done bool
			err  error
		)
		for _, m := range msgs {
			if b, done, err = d.handle(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		return b, done
	}
	rel := msgRelation("id", "v")
	if _, done := session(msgBegin(), rel, msgInsert([]byte("1"), []byte("a"))); done {
		t.Fatal("a transaction without its commit is done")
	}
	d.reset()
	if _, _, err := d.handle(ctx, msgInsert([]byte("1"), []byte("a"))); err == nil {
		t.Error("after a reset, a change of a relation not described again is accepted")
	}
	b, done := session(msgBegin(), rel, msgInsert([]byte("1"), []byte("a")), msgInsert([]byte("2"), nil), msgCommit())
	if !done || len(b.Changes) != 2 {
		t.Fatalf("resent transaction: done %v, %d changes, want 2", done, len(b.Changes))
	}
	if got := string(b.Changes[1].New); got != `{"id":2,"v":null}` {
		t.Errorf("second row %s", got)
	}
	if c := b.Changes[1].Cursor; c.Tick != 0x1000 || c.Pos != 2 {
		t.Errorf("cursor %v, want the commit LSN and position 2", c)
	}
}
