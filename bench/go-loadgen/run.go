package main

import (
	"fmt"
	"math"
	"math/rand"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The phases of a run, as the Node runner has them: connect every session,
// send through the warm-up and the measured window, wait for in-flight
// deliveries (up to the grace period), close, report.

var clientClose = []byte{0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8}

// progress prints a line on stderr once a second (unless --no-progress).
type progress struct {
	g      *gen
	next   float64
	from   float64
	enable bool
}

func (p *progress) due() bool {
	if !p.enable || p.g.clock() < p.next {
		return false
	}
	p.next += 1e6
	return true
}

func (p *progress) print(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%.0fs] "+format+"\n", append([]any{(p.g.clock() - p.from) / 1e6}, args...)...)
}

type result struct {
	sessions, connections int
	windowMs              float64
	cpuPercent            float64
	busyPercent           float64
	spinPercent           float64
	waitPercent           float64
	framesReceived        int64
}

func run(o *options) (*report, error) {
	endpoints, err := resolve(o.targets)
	if err != nil {
		return nil, err
	}
	durationMs := o.durationMs
	if o.preset != "" {
		durationMs = presetDurationMs
	}
	nextToken, err := tokenSource(o, int64(math.Ceil(float64(durationMs+o.warmupMs)/1000))+3600)
	if err != nil {
		return nil, err
	}
	plans := planRooms(o, nextToken)

	// The loop owns one OS thread: the timer slack is per thread.
	runtime.LockOSThread()
	_, _, _ = syscall.Syscall(syscall.SYS_PRCTL, 29 /* PR_SET_TIMERSLACK */, 1, 0)
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %v", err)
	}
	defer syscall.Close(epfd)
	g := &gen{
		o: o, epfd: epfd, events: make([]syscall.EpollEvent, 256), readBuf: make([]byte, 256<<10), scratch: make([]byte, 0, 4096),
		base: time.Now(), errors: map[string]int64{}, connectH: newHistogram(), tallies: [2]*tally{newTally(0), newTally(1)},
	}
	_, e := epollPwait2(epfd, g.events, 0)
	g.pwait2 = e == 0
	sessions := 0
	for _, p := range plans {
		r := &roomState{plan: p, receivers: len(p.tokens) - 1}
		if p.role == roleTarget {
			for slot := 0; slot < 2; slot++ {
				r.reached[slot] = make([]uint16, p.maxMessages)
				r.worst[slot] = make([]float64, p.maxMessages)
			}
		}
		g.rooms = append(g.rooms, r)
		sessions += len(p.tokens)
	}

	g.connectAll(endpoints, sessions)

	// The run allocates next to nothing: collect what the set-up left, then
	// keep the collector off until the report, with a memory limit on guard.
	runtime.GC()
	gcPercent := debug.SetGCPercent(-1)
	memoryLimit := debug.SetMemoryLimit(1 << 30)
	var cpuStart, cpuEnd syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &cpuStart)
	waitStart := runqueueWaitNs()
	runStart := g.clock()
	windowMs := g.send(runStart, durationMs)
	g.counting = false
	g.finished = true
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &cpuEnd)
	waitUs := float64(runqueueWaitNs()-waitStart) / 1000
	wallUs := g.clock() - runStart
	debug.SetGCPercent(gcPercent)
	debug.SetMemoryLimit(memoryLimit)

	var frames int64
	for _, c := range g.conns {
		frames += c.frames
		if c.state == stOpen {
			frame := append([]byte(nil), clientClose...)
			maskFrame(frame, 6, g.masks.next())
			g.write(c, frame)
			g.release(c)
		}
	}
	cpuUs := float64(cpuEnd.Utime.Nano()-cpuStart.Utime.Nano()+cpuEnd.Stime.Nano()-cpuStart.Stime.Nano()) / 1000
	if o.progress {
		fmt.Fprintf(os.Stderr, "[%.0fs] measured sends %d, deliveries %d (done)\n", wallUs/1e6, g.tallies[1].sends, g.tallies[1].deliveries)
	}
	return buildReport(o, g, durationMs, result{
		sessions:       sessions,
		connections:    len(g.conns),
		windowMs:       windowMs,
		cpuPercent:     math.Round(cpuUs/wallUs*1000) / 10,
		busyPercent:    math.Round(g.busyUs/wallUs*1000) / 10,
		spinPercent:    math.Round(math.Max(0, wallUs-g.busyUs-g.sleepUs)/wallUs*1000) / 10,
		waitPercent:    waitPercent(waitStart, waitUs, wallUs),
		framesReceived: frames,
	}), nil
}

// runqueueWaitNs is how long the loop's thread has been ready to run while
// another task held its core (the second field of /proc/thread-self/schedstat);
// -1 where the kernel does not tell.
func runqueueWaitNs() int64 {
	data, err := os.ReadFile("/proc/thread-self/schedstat")
	if err != nil {
		return -1
	}
	fields := strings.Fields(string(data))
	if len(fields) < 2 {
		return -1
	}
	wait, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		return -1
	}
	return wait
}

// waitPercent is the share of the run the loop waited for its core, -1 when unknown.
func waitPercent(start int64, waitUs, wallUs float64) float64 {
	if start < 0 || waitUs < 0 {
		return -1
	}
	return math.Round(waitUs/wallUs*1000) / 10
}

// connectAll opens every session, paced at --connect-rate, without waiting
// for each handshake before the next, and returns once each has joined or
// failed (or the connect phase's bound has passed: those fail as connect_timeout).
func (g *gen) connectAll(endpoints []endpoint, sessions int) {
	interval := 1e6 / g.o.connectRate
	start := g.clock()
	deadline := start + float64(sessions)*interval + 30e6
	nextAt := start
	roomIndex, user := 0, 0
	prog := &progress{g: g, next: start + 1e6, from: start, enable: g.o.progress}
	for g.resolved < sessions && g.clock() < deadline {
		for roomIndex < len(g.rooms) && g.clock() >= nextAt {
			r := g.rooms[roomIndex]
			// Round-robin over the servers, shifted per room, as the Node generator does.
			g.open(endpoints[(user+roomIndex)%len(endpoints)], r, r.plan.tokens[user], user < r.plan.senders)
			nextAt += interval
			if user++; user == len(r.plan.tokens) {
				roomIndex, user = roomIndex+1, 0
			}
		}
		wake := deadline
		if roomIndex < len(g.rooms) {
			wake = nextAt
		}
		g.poll(wake)
		if prog.due() {
			prog.print("connecting: %d joined, %d failed of %d", g.connected, g.failed, sessions)
		}
	}
	for _, c := range g.conns {
		if c.state != stClosed && !c.joined {
			g.failConnect(c, "connect_timeout", "")
		}
	}
}

// send runs the warm-up and the measured window from runStart, then waits
// for the measured window's deliveries up to the grace period; it returns
// the window's length (ms) as the Node generator measures it.
func (g *gen) send(runStart float64, durationMs int64) float64 {
	g.measureFrom = runStart + float64(g.o.warmupMs)*1000
	g.measureUntil = g.measureFrom + float64(durationMs)*1000
	for _, s := range g.senders {
		s.nextAt = runStart + rand.Float64()*s.intervalUs
	}
	g.busyUs, g.sleepUs = 0, 0
	g.counting = true
	measured := g.tallies[1]
	prog := &progress{g: g, next: runStart + 1e6, from: runStart, enable: g.o.progress}
	for g.clock() < g.measureUntil {
		wake := math.Min(g.tick(), g.measureUntil)
		if prog.enable {
			wake = math.Min(wake, prog.next)
		}
		g.poll(wake)
		if prog.due() {
			if g.clock() < g.measureFrom {
				prog.print("warm-up (not measured)")
			} else {
				prog.print("measured sends %d, deliveries %d", measured.sends, measured.deliveries)
			}
		}
	}
	g.tick()
	windowMs := (g.clock() - g.measureFrom) / 1000
	graceUntil := g.clock() + graceMs*1000
	for measured.deliveries < measured.expected && g.clock() < graceUntil {
		g.poll(math.Min(graceUntil, g.clock()+5000))
	}
	return windowMs
}
