package main

import "bytes"

// Open loop: each sender has a schedule (start + k × interval) and every
// message carries its *scheduled* send time, so a stalled server or
// generator shows up as latency instead of slowing the senders down.
//
// Payload layout, as src/loadtest/generator.ts sends it:
// `{"p":"<pad>","m":1,"s":"000123","t":"000001234567890"}`, m = 1 in the
// measured window and 0 in the warm-up, s the message's sequence number and
// t its scheduled send time (µs on this process's monotonic clock). The
// server relays the payload last, so every relayed load frame ends with
// `,"m":M,"s":"SSSSSS","t":"TTTTTTTTTTTTTTT"}}`, or with that and
// `,"offset":N}` (moodio-rt's history offset): the receiver reads the fields
// at fixed offsets from that end, with no JSON decode.
const (
	tDigits = 15
	sDigits = 6
	tEnd    = 3 // `"}}` after the digits
	tStart  = tEnd + tDigits
	sEnd    = tStart + 7 // `","t":"` between the s and t digits
	sStart  = sEnd + sDigits
	mAt     = sStart + 7 // the m digit, then `,"s":"` before the s digits
)

var (
	errorPrefix  = []byte(`{"type":"error","code":"`)
	joinedPrefix = []byte(`{"type":"room_joined"`)
	offsetMember = []byte(`,"offset":`)
)

// loadEnd is where a frame's fixed offsets count from: its end, or for a
// frame that ends `…"}},"offset":N}` the end it would have without the
// offset (just past the `,` that follows the payload).
func loadEnd(buf []byte, start, end int) int {
	i := end - 2
	for i > start && buf[i] >= '0' && buf[i] <= '9' {
		i--
	}
	if i == end-2 || buf[end-1] != '}' {
		return end
	}
	comma := i - len(offsetMember) + 1
	if comma <= start || !bytes.Equal(buf[comma:i+1], offsetMember) {
		return end
	}
	return comma + 1
}

// isLoadFrame: the frame ends like a relayed load message (end from loadEnd).
func isLoadFrame(buf []byte, start, end int) bool {
	return end-start > mAt+4 &&
		(buf[end-1] == '}' || buf[end-1] == ',') &&
		buf[end-2] == '}' &&
		buf[end-3] == '"' &&
		buf[end-tStart-1] == '"' &&
		buf[end-tStart-2] == ':' &&
		buf[end-tStart-3] == '"' &&
		buf[end-tStart-4] == 't'
}

func readDigits(buf []byte, start, end int) int64 {
	var v int64
	for _, b := range buf[start:end] {
		v = v*10 + int64(b-'0')
	}
	return v
}

// writeDigits writes value zero-padded into buf[start:end] (higher digits dropped).
func writeDigits(buf []byte, start, end int, value int64) {
	for i := end - 1; i >= start; i-- {
		buf[i] = byte('0' + value%10)
		value /= 10
	}
}
