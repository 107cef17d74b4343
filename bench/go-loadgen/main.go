// Command go-loadgen is a neutral load generator for Moodio desktop protocol
// servers, standard library only. It speaks what `moodio-rt loadtest` speaks
// on the legacy route /ws/desktop/{id} (src/loadtest/*.ts): the same tokens,
// the same payload carrying each message's scheduled send time, the same
// presets and throughput workload, and the same JSON report fields, so the
// bench scripts take either generator (bench/run.ts and
// bench/history-cost.ts `--generator go`).
//
// One event loop on one OS thread: epoll over non-blocking sockets, no
// goroutine per connection. A Go timer sleeps at least a millisecond when the
// process is idle (the runtime's netpoller waits in whole milliseconds), and
// a sender that wakes late adds that delay to every latency it measures; so
// the loop waits on epoll itself (epoll_pwait2's nanosecond timeout where
// the kernel has it) and spins through the last --spin-us before a send.
//
//	scripts/go-loadgen --url ws://127.0.0.1:8081 --preset light --json
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
)

var presets = []string{"light", "medium", "heavy", "extreme"}

// presetRooms: the seed's "latency under pressure" levels, 10 users each (src/loadtest/options.ts).
var presetRooms = map[string]int{"light": 5, "medium": 20, "heavy": 50, "extreme": 100}

const (
	presetUsersPerRoom = 10
	// Each pressure room has one sender firing every 2 ms …
	presetPressureRate = 500
	// … and the target room sends one message every 10 ms, 300 of them.
	presetTargetRate     = 100
	presetTargetMessages = 300
	// The window the preset needs: the target's 300 messages at 100/s, plus a tail.
	presetDurationMs = presetTargetMessages*1000/presetTargetRate + 500
	// Longest wait after the window for in-flight deliveries (the Node runner's graceMs).
	graceMs = 2000
	// A thread busy this much of the time is saturated; one that sends this late (p99) ran late.
	saturatedPercent = 90
	saturatedLagMs   = 2
	exitUsage        = 2
)

type target struct {
	host string
	port int
}

type options struct {
	url            string
	targets        []target
	secret         string
	auth           string
	devSecretFile  string
	tokenFile      string
	preset         string
	rooms          int
	usersPerRoom   int
	sendersPerRoom int
	rate           float64
	durationMs     int64
	warmupMs       int64
	messageType    string
	payloadBytes   int
	connectRate    float64
	minDelivery    float64
	maxP99Ms       float64
	// Spin (poll without waiting) when the next send is this close (µs).
	spinUs   float64
	json     bool
	progress bool
}

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// optionError names the option, as the Node generator's ConfigError does.
func optionError(option, format string, args ...any) error {
	return &usageError{option + ": " + fmt.Sprintf(format, args...)}
}

func intIn(raw, option string, min, max int) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(raw))
	if err != nil || n < min || n > max {
		return 0, optionError(option, "must be an integer from %d to %d, got %q", min, max, raw)
	}
	return n, nil
}

func numberIn(raw, option string, min, max float64) (float64, error) {
	n, err := strconv.ParseFloat(strings.TrimSpace(raw), 64)
	if err != nil || math.IsNaN(n) || n < min || n > max {
		return 0, optionError(option, "must be a number from %v to %v, got %q", min, max, raw)
	}
	return n, nil
}

var durationPattern = regexp.MustCompile(`^(\d+(?:\.\d+)?)(ms|s|m|h)?$`)

// parseDuration is src/option-parsers.ts parseDuration: a bare number is milliseconds.
func parseDuration(raw, option string) (int64, error) {
	m := durationPattern.FindStringSubmatch(strings.TrimSpace(raw))
	if m == nil {
		return 0, optionError(option, "expected a duration such as 500ms, 10s or 1h, got %q", raw)
	}
	n, _ := strconv.ParseFloat(m[1], 64)
	unit := map[string]float64{"": 1, "ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[m[2]]
	ms := int64(math.Round(n * unit))
	if ms <= 0 {
		return 0, optionError(option, "must be a positive duration, got %q", raw)
	}
	return ms, nil
}

func parseTargets(raw string) ([]target, string, error) {
	var targets []target
	var urls []string
	for _, part := range strings.Split(raw, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		u, err := url.Parse(part)
		if err != nil || u.Scheme != "ws" || u.Host == "" {
			return nil, "", optionError("--url", "must be a ws:// URL (wss is not supported), got %q", part)
		}
		port := 80
		if p := u.Port(); p != "" {
			if port, err = strconv.Atoi(p); err != nil {
				return nil, "", optionError("--url", "bad port in %q", part)
			}
		}
		targets = append(targets, target{host: u.Hostname(), port: port})
		urls = append(urls, "ws://"+u.Host)
	}
	if len(targets) == 0 {
		return nil, "", optionError("--url", "must be a ws:// URL")
	}
	return targets, strings.Join(urls, ","), nil
}

func parseOptions(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("go-loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var urls []string
	fs.Func("url", "server to load (ws://host:port); several (repeated or comma-separated) spread each room round-robin over them (default ws://127.0.0.1:8081)", func(v string) error {
		urls = append(urls, v)
		return nil
	})
	// The secret's default is read after parsing, so that --help never prints it.
	secret := fs.String("secret", "", "HS256 secret to mint one token per session (default: JWT_ACCESS_SECRET)")
	devSecretFile := fs.String("dev-secret-file", envOr("MOODIO_RT_DEV_SECRET_FILE", defaultDevSecretFile()), "with neither --secret nor --token-file: the secret of a 'moodio-rt serve --dev' server")
	tokenFile := fs.String("token-file", "", "file with one token per line, used round-robin instead of --secret")
	preset := fs.String("preset", "", "latency under pressure: "+strings.Join(presets, ", ")+" (overrides the workload flags)")
	route := fs.String("route", "desktop", "only desktop: a socket per session on /ws/desktop/{id}")
	rooms := fs.String("rooms", "10", "rooms (desktops)")
	users := fs.String("users-per-room", "10", "sessions per room")
	senders := fs.String("senders-per-room", "1", "sessions per room that send")
	rate := fs.String("rate", "10", "messages per second per sender (open loop)")
	duration := fs.String("duration", "10s", "measured time")
	warmup := fs.String("warmup", "2s", "sending before the measurement, measured the same way and discarded")
	messageType := fs.String("message-type", "asset_moved", "type of the messages sent")
	payloadBytes := fs.String("payload-bytes", "64", "approximate size of each payload")
	connectRate := fs.String("connect-rate", "500", "new connections per second")
	threads := fs.String("threads", "1", "only 1: one event loop on one OS thread (accepted so that callers of 'moodio-rt loadtest' can pass it)")
	minDelivery := fs.String("min-delivery", "100", "exit 1 when fewer deliveries arrive (percent)")
	maxP99 := fs.String("max-p99", "0", "exit 1 when p99 latency exceeds this (ms, 0 = no gate)")
	spin := fs.String("spin-us", "50", "spin instead of sleeping when the next send is due within this many µs (0: sleep until it is due; 1500: as the Node generator, which wins on an idle core and loses to other processes on a shared one)")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	noProgress := fs.Bool("no-progress", false, "no progress line on stderr")
	if err := fs.Parse(args); err != nil {
		return nil, &usageError{err.Error()}
	}
	if fs.NArg() > 0 {
		return nil, &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	if *secret == "" {
		*secret = os.Getenv("JWT_ACCESS_SECRET")
	}
	o := &options{secret: *secret, devSecretFile: *devSecretFile, tokenFile: *tokenFile, messageType: *messageType, json: *asJSON, progress: !*noProgress}
	var err error
	if len(urls) == 0 {
		urls = []string{"ws://127.0.0.1:8081"}
	}
	if o.targets, o.url, err = parseTargets(strings.Join(urls, ",")); err != nil {
		return nil, err
	}
	if *preset != "" {
		if _, ok := presetRooms[*preset]; !ok {
			return nil, optionError("--preset", "must be one of %s, got %q", strings.Join(presets, ", "), *preset)
		}
		o.preset = *preset
	}
	if *route != "desktop" {
		return nil, optionError("--route", "the Go generator speaks only the legacy route (desktop), got %q; use `moodio-rt loadtest --route connection`", *route)
	}
	if _, err := intIn(*threads, "--threads", 1, 1); err != nil {
		return nil, optionError("--threads", "must be 1: the Go generator runs one event loop on one OS thread, got %q", *threads)
	}
	steps := []func() error{
		func() (err error) { o.rooms, err = intIn(*rooms, "--rooms", 1, 100_000); return },
		func() (err error) { o.usersPerRoom, err = intIn(*users, "--users-per-room", 2, 10_000); return },
		func() (err error) { o.sendersPerRoom, err = intIn(*senders, "--senders-per-room", 0, 10_000); return },
		func() (err error) { o.rate, err = numberIn(*rate, "--rate", 0.01, 100_000); return },
		func() (err error) { o.durationMs, err = parseDuration(*duration, "--duration"); return },
		func() (err error) { o.warmupMs, err = parseDuration(*warmup, "--warmup"); return },
		func() (err error) { o.payloadBytes, err = intIn(*payloadBytes, "--payload-bytes", 32, 3500); return },
		func() (err error) {
			o.connectRate, err = numberIn(*connectRate, "--connect-rate", 1, 1_000_000)
			return
		},
		func() (err error) {
			var pct float64
			pct, err = numberIn(strings.TrimSuffix(*minDelivery, "%"), "--min-delivery", 0, 100)
			o.minDelivery = pct / 100
			return
		},
		func() (err error) { o.maxP99Ms, err = numberIn(*maxP99, "--max-p99", 0, 600_000); return },
		func() (err error) { o.spinUs, err = numberIn(*spin, "--spin-us", 0, 1_000_000); return },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, err
		}
	}
	if o.sendersPerRoom > o.usersPerRoom {
		return nil, optionError("--senders-per-room", "cannot exceed --users-per-room")
	}
	o.auth = "secret"
	if o.tokenFile != "" {
		o.auth = "token-file"
	} else if o.secret == "" {
		dev, ok, err := readDevSecret(o.devSecretFile)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, optionError("--secret", "a --secret (or JWT_ACCESS_SECRET) or a --token-file is required; against a `moodio-rt serve --dev` server, start it first and its secret is read from %s", o.devSecretFile)
		}
		o.secret = dev
		o.auth = "dev-secret-file"
	}
	return o, nil
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

// resolve looks each target's host up once, before any socket opens.
func resolve(targets []target) ([]endpoint, error) {
	out := make([]endpoint, len(targets))
	for i, t := range targets {
		ips, err := net.LookupIP(t.host)
		if err != nil || len(ips) == 0 {
			return nil, optionError("--url", "cannot resolve %s: %v", t.host, err)
		}
		ip := ips[0]
		for _, candidate := range ips {
			if candidate.To4() != nil {
				ip = candidate
				break
			}
		}
		out[i] = endpoint{target: t, ip: ip}
	}
	return out, nil
}

func main() {
	o, err := parseOptions(os.Args[1:], os.Stderr)
	if err != nil {
		var usage *usageError
		if errors.As(err, &usage) {
			if !errors.Is(err, flag.ErrHelp) && usage.msg != flag.ErrHelp.Error() {
				fmt.Fprintf(os.Stderr, "go-loadgen: %s\n", usage.msg)
			}
			os.Exit(exitUsage)
		}
		fmt.Fprintf(os.Stderr, "go-loadgen: %v\n", err)
		os.Exit(1)
	}
	report, err := run(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-loadgen: %v\n", err)
		var usage *usageError
		if errors.As(err, &usage) {
			os.Exit(exitUsage)
		}
		os.Exit(1)
	}
	if o.json {
		out, _ := json.MarshalIndent(report, "", "  ")
		os.Stdout.Write(append(out, '\n'))
	} else {
		os.Stdout.WriteString(formatReport(report) + "\n")
	}
	if !report.Gates.Passed {
		os.Exit(1)
	}
}
