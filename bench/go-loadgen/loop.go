package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The event loop's state and its I/O: sockets, the frames they carry, the
// senders' schedule. run.go drives it through its phases.

type roomRole int

const (
	roleLoad roomRole = iota
	rolePressure
	roleTarget
)

type roomPlan struct {
	desktopID   string
	role        roomRole
	tokens      []string
	senders     int
	rate        float64
	maxMessages int
	messageType string
}

type roomState struct {
	plan      roomPlan
	receivers int
	// The target room, per tally: per message, the receivers reached and the worst latency.
	reached [2][]uint16
	worst   [2][]float64
}

type sender struct {
	c          *conn
	template   []byte
	header     int
	room       *roomState
	intervalUs float64
	nextAt     float64
	// Messages sent and the most to send, per tally (warm-up, measured); limit < 0: none.
	sent  [2]int
	limit [2]int
}

// tally is what one phase sent and received. The warm-up has its own,
// filled by the same code and thrown away, as in the Node generator.
type tally struct {
	slot                                     int
	deliveryHist, targetHist, lagHist        *histogram
	sends, expected                          int64
	pressureSends, pressureExpected          int64
	targetMessages, targetExpected           int64
	deliveries, targetDeliveries, targetDone int64
	pressureDeliveries                       int64
}

func newTally(slot int) *tally {
	return &tally{slot: slot, deliveryHist: newHistogram(), targetHist: newHistogram(), lagHist: newHistogram()}
}

type gen struct {
	o       *options
	epfd    int
	pwait2  bool
	events  []syscall.EpollEvent
	readBuf []byte
	scratch []byte
	masks   maskPool
	base    time.Time
	now     float64
	busyUs  float64
	// Time in waits that could block (what is neither busy nor sleeping is spinning).
	sleepUs   float64
	conns     []*conn
	rooms     []*roomState
	senders   []*sender
	errors    map[string]int64
	connectH  *histogram
	tallies   [2]*tally
	counting  bool
	finished  bool
	connected int
	failed    int
	resolved  int
	// Run phase (µs on the loop's clock).
	measureFrom, measureUntil float64
}

func (g *gen) clock() float64 { return float64(time.Since(g.base).Nanoseconds()) / 1000 }

func (g *gen) countError(kind string) { g.errors[kind]++ }

// planRooms is src/loadtest/runner.ts planRooms: a uniform workload, or a preset's pressure rooms plus one target room.
func planRooms(o *options, nextToken func() string) []roomPlan {
	runID := randomUUID()[:8]
	tokens := func(n int) []string {
		t := make([]string, n)
		for i := range t {
			t[i] = nextToken()
		}
		return t
	}
	var rooms []roomPlan
	if o.preset != "" {
		for i := 0; i < presetRooms[o.preset]; i++ {
			r := roomPlan{desktopID: fmt.Sprintf("lt-%s-%d", runID, i), role: rolePressure, tokens: tokens(presetUsersPerRoom), senders: 1, rate: presetPressureRate, messageType: o.messageType}
			if i == 0 {
				r.role, r.rate, r.maxMessages = roleTarget, presetTargetRate, presetTargetMessages
			}
			rooms = append(rooms, r)
		}
		return rooms
	}
	for i := 0; i < o.rooms; i++ {
		rooms = append(rooms, roomPlan{desktopID: fmt.Sprintf("lt-%s-%d", runID, i), role: roleLoad, tokens: tokens(o.usersPerRoom), senders: o.sendersPerRoom, rate: o.rate, messageType: o.messageType})
	}
	return rooms
}

func (g *gen) epollCtl(op int, c *conn, events uint32) {
	ev := syscall.EpollEvent{Events: events, Fd: c.index}
	if err := syscall.EpollCtl(g.epfd, op, c.fd, &ev); err != nil && op != syscall.EPOLL_CTL_DEL {
		panic(fmt.Sprintf("epoll_ctl: %v", err))
	}
}

// open starts one session's connect, without waiting for it.
func (g *gen) open(ep endpoint, room *roomState, token string, isSender bool) {
	c := &conn{index: int32(len(g.conns)), fd: -1, room: room, sender: isSender, started: g.clock()}
	g.conns = append(g.conns, c)
	domain, sa := sockaddr(ep)
	fd, err := syscall.Socket(domain, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		g.failConnect(c, "connect_error", "")
		return
	}
	c.fd = fd
	_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	key, accept := handshakeKey()
	c.accept = accept
	c.out = []byte("GET /ws/desktop/" + room.plan.desktopID + " HTTP/1.1\r\nHost: " + ep.host + ":" + strconv.Itoa(ep.port) +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\nCookie: moodio_access_token=" + token + "\r\n\r\n")
	err = syscall.Connect(fd, sa)
	if err != nil && err != syscall.EINPROGRESS {
		g.failConnect(c, "connect_error", "")
		return
	}
	g.epollCtl(syscall.EPOLL_CTL_ADD, c, syscall.EPOLLIN|syscall.EPOLLOUT)
	c.waitOut = true
	if err == nil {
		g.onConnect(c)
	}
}

func (g *gen) onConnect(c *conn) {
	if soErr, err := syscall.GetsockoptInt(c.fd, syscall.SOL_SOCKET, syscall.SO_ERROR); err != nil || soErr != 0 {
		g.failConnect(c, "connect_error", "")
		return
	}
	c.state = stHandshake
	g.flush(c)
}

// failConnect: a session that never joined, counted by kind (and reason).
func (g *gen) failConnect(c *conn, kind, reason string) {
	g.countError(kind)
	if reason != "" {
		g.countError("refused_" + reason)
	}
	g.failed++
	g.resolved++
	g.release(c)
}

func (g *gen) release(c *conn) {
	c.state = stClosed
	if c.fd >= 0 {
		g.epollCtl(syscall.EPOLL_CTL_DEL, c, 0)
		syscall.Close(c.fd)
		c.fd = -1
	}
	c.pending, c.out, c.head = nil, nil, nil
}

// closeConn: an open connection ended (close frame, reset, EOF).
func (g *gen) closeConn(c *conn, code int) {
	if c.state == stClosed {
		return
	}
	if c.state != stOpen {
		g.failConnect(c, "connect_0", "")
		return
	}
	if !g.finished {
		g.countError("closed_" + strconv.Itoa(code))
	}
	if !c.joined {
		g.failed++
		g.resolved++
	}
	g.release(c)
}

// write writes a frame now, or queues what the socket does not take.
func (g *gen) write(c *conn, frame []byte) {
	if c.state != stOpen {
		return
	}
	if len(c.out) > 0 {
		c.out = append(c.out, frame...)
		return
	}
	n, err := rawWrite(c.fd, frame)
	for err == syscall.EINTR {
		n, err = rawWrite(c.fd, frame)
	}
	if err == syscall.EAGAIN {
		n, err = 0, 0
	}
	if err != 0 {
		g.closeConn(c, 1006)
		return
	}
	if n < len(frame) {
		c.out = append(c.out[:0], frame[n:]...)
		g.wantOut(c, true)
	}
}

func (g *gen) flush(c *conn) {
	for len(c.out) > 0 {
		n, err := rawWrite(c.fd, c.out)
		if err == syscall.EINTR {
			continue
		}
		if err == syscall.EAGAIN {
			break
		}
		if err != 0 {
			g.closeConn(c, 1006)
			return
		}
		c.out = c.out[n:]
	}
	if len(c.out) == 0 {
		c.out = nil
	}
	g.wantOut(c, len(c.out) > 0)
}

func (g *gen) wantOut(c *conn, want bool) {
	if want == c.waitOut || c.state == stClosed {
		return
	}
	c.waitOut = want
	events := uint32(syscall.EPOLLIN)
	if want {
		events |= syscall.EPOLLOUT
	}
	g.epollCtl(syscall.EPOLL_CTL_MOD, c, events)
}

func (g *gen) read(c *conn) {
	n, err := rawRead(c.fd, g.readBuf)
	if err == syscall.EAGAIN || err == syscall.EINTR {
		return
	}
	if err != 0 || n == 0 {
		if c.state == stHandshake {
			if err != 0 {
				g.failConnect(c, "connect_error", "")
			} else {
				g.failConnect(c, "connect_0", "")
			}
			return
		}
		g.closeConn(c, 1006)
		return
	}
	if c.state == stHandshake {
		g.onHead(c, g.readBuf[:n])
	} else {
		g.parseFrames(c, g.readBuf[:n])
	}
}

func (g *gen) handle(ev *syscall.EpollEvent) {
	c := g.conns[ev.Fd]
	if c.state == stClosed {
		return
	}
	if c.state == stConnecting {
		if ev.Events&(syscall.EPOLLOUT|syscall.EPOLLERR|syscall.EPOLLHUP) != 0 {
			g.onConnect(c)
		}
		return
	}
	if ev.Events&syscall.EPOLLOUT != 0 {
		g.flush(c)
	}
	if c.state != stClosed && ev.Events&(syscall.EPOLLIN|syscall.EPOLLERR|syscall.EPOLLHUP) != 0 {
		g.read(c)
	}
}

func (g *gen) onJoined(c *conn) {
	c.joined = true
	g.connectH.record(g.now - c.started)
	g.connected++
	g.resolved++
	if !c.sender {
		return
	}
	room := c.room
	payload := `{"p":"` + strings.Repeat("x", padding(g.o.payloadBytes)) + `","m":0,"s":"` + strings.Repeat("0", sDigits) + `","t":"` + strings.Repeat("0", tDigits) + `"}`
	messageType, _ := json.Marshal(room.plan.messageType)
	template, header := clientTextTemplate(`{"type":` + string(messageType) + `,"payload":` + payload + `}`)
	s := &sender{c: c, template: template, header: header, room: room, intervalUs: 1e6 / room.plan.rate, limit: [2]int{-1, -1}}
	if room.plan.maxMessages > 0 {
		s.limit[1] = room.plan.maxMessages
	}
	g.senders = append(g.senders, s)
}

// padding: the payload's "p" fills it out to about --payload-bytes, as in the Node generator.
func padding(payloadBytes int) int {
	if payloadBytes < 50 {
		return 0
	}
	return payloadBytes - 50
}

func (g *gen) onText(c *conn, buf []byte, start, frameEnd int) {
	if !c.joined && bytes.HasPrefix(buf[start:frameEnd], joinedPrefix) {
		g.onJoined(c)
		return
	}
	end := loadEnd(buf, start, frameEnd)
	if !isLoadFrame(buf, start, end) {
		if bytes.HasPrefix(buf[start:end], errorPrefix) {
			codeStart := start + len(errorPrefix)
			codeEnd := bytes.IndexByte(buf[codeStart:end], '"')
			if codeEnd < 0 {
				codeEnd = end - codeStart
			}
			g.countError("server_" + string(buf[codeStart:codeStart+codeEnd]))
		}
		return
	}
	m := buf[end-mAt]
	if !g.counting || (m != '0' && m != '1') {
		return
	}
	t := g.tallies[m-'0']
	latency := g.now - float64(readDigits(buf, end-tStart, end-tEnd))
	t.deliveries++
	room := c.room
	switch room.plan.role {
	case roleTarget:
		t.targetDeliveries++
		seq := int(readDigits(buf, end-sStart, end-sEnd))
		reached, worst := room.reached[t.slot], room.worst[t.slot]
		if seq < len(reached) {
			if latency > worst[seq] {
				worst[seq] = latency
			}
			reached[seq]++
			if int(reached[seq]) == room.receivers {
				t.targetDone++
				t.targetHist.record(worst[seq])
			}
		}
	case rolePressure:
		t.pressureDeliveries++
		t.deliveryHist.record(latency)
	default:
		t.deliveryHist.record(latency)
	}
}

// tick sends every message due by now; it returns when the next one is due (+Inf: none).
func (g *gen) tick() float64 {
	now := g.clock()
	next := math.Inf(1)
	sent := false
	for _, s := range g.senders {
		room := s.room
		for s.nextAt <= now && s.nextAt < g.measureUntil {
			t := g.tallies[0]
			if s.nextAt >= g.measureFrom {
				t = g.tallies[1]
			}
			slot := t.slot
			if s.limit[slot] >= 0 && s.sent[slot] >= s.limit[slot] {
				break
			}
			// Warm-up target messages reuse their tally's slots round-robin.
			seq := s.sent[slot]
			if room.plan.role == roleTarget {
				seq %= room.plan.maxMessages
				room.reached[slot][seq] = 0
				room.worst[slot][seq] = 0
			}
			t.lagHist.record(now - s.nextAt)
			frame := append(g.scratch[:0], s.template...)
			end := len(frame)
			frame[end-mAt] = byte('0' + slot)
			writeDigits(frame, end-sStart, end-sEnd, int64(seq))
			writeDigits(frame, end-tStart, end-tEnd, int64(math.Round(s.nextAt)))
			maskFrame(frame, s.header, g.masks.next())
			g.write(s.c, frame)
			g.scratch = frame
			sent = true
			s.sent[slot]++
			t.sends++
			t.expected += int64(room.receivers)
			switch room.plan.role {
			case rolePressure:
				t.pressureSends++
				t.pressureExpected += int64(room.receivers)
			case roleTarget:
				t.targetMessages++
				t.targetExpected += int64(room.receivers)
			}
			s.nextAt += s.intervalUs
		}
		done := s.nextAt >= g.measureUntil || (s.limit[1] >= 0 && s.sent[1] >= s.limit[1])
		if !done && s.nextAt < next {
			next = s.nextAt
		}
	}
	if sent {
		g.busyUs += g.clock() - now
	}
	return next
}

// poll handles the I/O that is ready, waiting for it until `until` (µs) at
// the latest. It blocks only while `until` is more than --spin-us away and
// otherwise returns at once, so the caller spins up to the due send: a core
// woken from idle (a virtual one above all) can take milliseconds to run the
// loop again, and that delay would show as latency. The Node generator spins
// the same way, from 1.5 ms before a send.
func (g *gen) poll(until float64) {
	before := g.clock()
	wait := until - before - g.o.spinUs
	var n int
	var err syscall.Errno
	switch {
	case wait <= 0:
		n, err = epollWait(g.epfd, g.events, 0)
	case g.pwait2:
		n, err = epollPwait2(g.epfd, g.events, int64(wait*1000))
		g.sleepUs += g.clock() - before
	case wait >= 1000:
		// Without epoll_pwait2, waits are whole milliseconds: wake early rather than late.
		n, err = epollWait(g.epfd, g.events, int(wait/1000))
		g.sleepUs += g.clock() - before
	default:
		n, err = epollWait(g.epfd, g.events, 0)
	}
	if err != 0 && err != syscall.EINTR {
		panic(fmt.Sprintf("epoll_wait: %v", err))
	}
	if n <= 0 {
		return
	}
	g.now = g.clock()
	started := g.now
	for i := 0; i < n; i++ {
		g.handle(&g.events[i])
	}
	g.busyUs += g.clock() - started
}
