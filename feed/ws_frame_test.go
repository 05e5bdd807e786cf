package feed

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

// TestFrameSizes: wsWrite frames messages at and around each boundary of
// the WebSocket length encoding (7 bits, 16 bits, 64 bits) as RFC 6455
// says: FIN and the text opcode, no mask, the shortest length form, then
// the message whole.
func TestFrameSizes(t *testing.T) {
	s := &Server{}
	var buf []byte
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 70000} {
		body := []byte(strings.Repeat("x", n))
		var sock bytes.Buffer
		if err := s.wsWrite(&sock, item{body: body}, &buf); err != nil {
			t.Fatal(err)
		}
		f := sock.Bytes()
		if f[0] != 0x81 {
			t.Fatalf("%d bytes: first byte %#x, want FIN and text (0x81)", n, f[0])
		}
		if f[1]&0x80 != 0 {
			t.Fatalf("%d bytes: masked", n)
		}
		var length uint64
		var header int
		switch l := f[1]; {
		case l < 126:
			length, header = uint64(l), 2
		case l == 126:
			length, header = uint64(binary.BigEndian.Uint16(f[2:4])), 4
		default:
			length, header = binary.BigEndian.Uint64(f[2:10]), 10
		}
		want := 2
		if n >= 1<<16 {
			want = 10
		} else if n >= 126 {
			want = 4
		}
		if header != want || length != uint64(n) || !bytes.Equal(f[header:], body) {
			t.Errorf("%d bytes: header %d (want %d), length %d, payload intact %v", n, header, want, length, bytes.Equal(f[header:], body))
		}
	}
}
