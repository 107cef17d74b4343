package main

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"net"
	"strconv"
	"strings"
	"syscall"
)

// A minimal WebSocket client over non-blocking sockets, driven by the loop in
// loop.go: the handshake, masked client frames, and the unmasked frames a
// server sends (text, ping answered with pong, close). No extensions, no
// fragmentation: what a Moodio server sends, as src/loadtest/ws-client.ts.

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// Longest response head read before the handshake is called garbage (as the Node client).
const maxHead = 16384

// Largest frame a server may send this client; anything larger ends the connection (1009).
const maxFrame = 64 << 20

type endpoint struct {
	target
	ip net.IP
}

const (
	stConnecting = iota
	stHandshake
	stOpen
	stClosed
)

type conn struct {
	index   int32
	fd      int
	state   uint8
	room    *roomState
	sender  bool
	joined  bool
	accept  string
	head    []byte
	pending []byte
	out     []byte
	waitOut bool
	started float64
	frames  int64
}

// maskPool hands out masking keys from one random block, refilled when used up:
// a fresh key per frame without a system call per frame.
type maskPool struct {
	buf []byte
	off int
}

func (m *maskPool) next() []byte {
	if m.off+4 > len(m.buf) {
		if m.buf == nil {
			m.buf = make([]byte, 64<<10)
		}
		if _, err := rand.Read(m.buf); err != nil {
			panic(err)
		}
		m.off = 0
	}
	key := m.buf[m.off : m.off+4]
	m.off += 4
	return key
}

// clientTextTemplate is a client text frame for text with its masking key
// zero and its payload not yet masked, and the payload's offset.
func clientTextTemplate(text string) ([]byte, int) {
	n := len(text)
	header := 6
	if n >= 65536 {
		header = 14
	} else if n >= 126 {
		header = 8
	}
	frame := make([]byte, header+n)
	frame[0] = 0x81
	switch header {
	case 6:
		frame[1] = 0x80 | byte(n)
	case 8:
		frame[1] = 0x80 | 126
		binary.BigEndian.PutUint16(frame[2:], uint16(n))
	default:
		frame[1] = 0x80 | 127
		binary.BigEndian.PutUint64(frame[2:], uint64(n))
	}
	copy(frame[header:], text)
	return frame, header
}

// maskFrame writes key before the payload at header and masks the payload in place.
func maskFrame(frame []byte, header int, key []byte) {
	copy(frame[header-4:header], key)
	k := binary.LittleEndian.Uint64([]byte{key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]})
	p := frame[header:]
	i := 0
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], binary.LittleEndian.Uint64(p[i:])^k)
	}
	for ; i < len(p); i++ {
		p[i] ^= key[i&3]
	}
}

func handshakeKey() (key, accept string) {
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		panic(err)
	}
	key = base64.StdEncoding.EncodeToString(raw[:])
	sum := sha1.Sum([]byte(key + wsGUID))
	return key, base64.StdEncoding.EncodeToString(sum[:])
}

// headerValue is the value of header `name` in a response head (first line excluded), or "".
func headerValue(head, name string) string {
	lines := strings.Split(head, "\r\n")
	for _, line := range lines[1:] {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(strings.TrimSpace(k), name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// reasonOf is the refusal's reason as a moodio-rt server names it (Moodio-Reason), "" otherwise.
func reasonOf(head string) string {
	reason := headerValue(head, "moodio-reason")
	if len(reason) == 0 || len(reason) > 64 {
		return ""
	}
	for _, c := range reason {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return ""
		}
	}
	return reason
}

// statusOf reads `HTTP/1.1 NNN`, 0 for garbage.
func statusOf(head string) int {
	if !strings.HasPrefix(head, "HTTP/1.1 ") || len(head) < 12 {
		return 0
	}
	status, err := strconv.Atoi(head[9:12])
	if err != nil {
		return 0
	}
	return status
}

func sockaddr(ep endpoint) (int, syscall.Sockaddr) {
	if ip4 := ep.ip.To4(); ip4 != nil {
		sa := &syscall.SockaddrInet4{Port: ep.port}
		copy(sa.Addr[:], ip4)
		return syscall.AF_INET, sa
	}
	sa := &syscall.SockaddrInet6{Port: ep.port}
	copy(sa.Addr[:], ep.ip.To16())
	return syscall.AF_INET6, sa
}

var headEnd = []byte("\r\n\r\n")

// parseFrames hands every complete frame of data (after what the last read
// left over) to the loop; what remains of a frame is kept for the next read.
// data may be the loop's shared read buffer: nothing of it outlives the call.
func (g *gen) parseFrames(c *conn, data []byte) {
	buf := data
	if len(c.pending) > 0 {
		c.pending = append(c.pending, data...)
		buf = c.pending
	}
	off := 0
	for off+2 <= len(buf) {
		b0 := buf[off]
		length := int(buf[off+1] & 0x7f)
		start := off + 2
		if length == 126 {
			if start+2 > len(buf) {
				break
			}
			length = int(binary.BigEndian.Uint16(buf[start:]))
			start += 2
		} else if length == 127 {
			if start+8 > len(buf) {
				break
			}
			l64 := binary.BigEndian.Uint64(buf[start:])
			if l64 > maxFrame {
				g.closeConn(c, 1009)
				return
			}
			length = int(l64)
			start += 8
		}
		end := start + length
		if end > len(buf) {
			break
		}
		c.frames++
		switch b0 & 0x0f {
		case 1:
			g.onText(c, buf, start, end)
		case 9:
			// A zero masking key leaves the payload as is; pings are rare and tiny.
			pong := make([]byte, 0, 6+length)
			pong = append(pong, 0x8a, 0x80|byte(length&0x7f), 0, 0, 0, 0)
			g.write(c, append(pong, buf[start:end]...))
		case 8:
			code := 1005
			if length >= 2 {
				code = int(binary.BigEndian.Uint16(buf[start:]))
			}
			g.write(c, []byte{0x88, 0x80, 0, 0, 0, 0})
			g.closeConn(c, code)
			return
		}
		if c.state == stClosed {
			return
		}
		off = end
	}
	rest := buf[off:]
	if len(rest) == 0 {
		c.pending = c.pending[:0]
	} else if len(c.pending) > 0 {
		// rest is the tail of c.pending itself: move it to the front.
		n := copy(c.pending, rest)
		c.pending = c.pending[:n]
	} else {
		c.pending = append(c.pending[:0], rest...)
	}
}

// onHead collects the response head; on a 101 with the right accept key, the connection is open.
func (g *gen) onHead(c *conn, data []byte) {
	c.head = append(c.head, data...)
	i := bytes.Index(c.head, headEnd)
	if i < 0 {
		if len(c.head) > maxHead {
			g.failConnect(c, "connect_0", "")
		}
		return
	}
	head := string(c.head[:i])
	rest := c.head[i+4:]
	status := statusOf(head)
	if status != 101 {
		g.failConnect(c, "connect_"+strconv.Itoa(status), reasonOf(head))
		return
	}
	if headerValue(head, "sec-websocket-accept") != c.accept {
		g.failConnect(c, "connect_101", "")
		return
	}
	c.state = stOpen
	c.head = nil
	if len(rest) > 0 {
		g.parseFrames(c, rest)
	}
}
