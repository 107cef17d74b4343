package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// The report carries the fields of the Node generator's LoadtestReport
// (src/loadtest/runner.ts) under the same names, so that the bench scripts
// read either; `generator.name` says which one wrote it. It has no
// `serverLimits` notes: the errors they explain are in `errors`.

type workload struct {
	Route               string  `json:"route"`
	TopicsPerConnection int     `json:"topicsPerConnection"`
	Rooms               int     `json:"rooms"`
	UsersPerRoom        int     `json:"usersPerRoom"`
	SendersPerRoom      int     `json:"sendersPerRoom"`
	Rate                float64 `json:"rate"`
	DurationMs          int64   `json:"durationMs"`
	WarmupMs            int64   `json:"warmupMs"`
	MessageType         string  `json:"messageType"`
	PayloadBytes        int     `json:"payloadBytes"`
}

type targetReport struct {
	Messages           int64          `json:"messages"`
	Complete           int64          `json:"complete"`
	ExpectedDeliveries int64          `json:"expectedDeliveries"`
	Deliveries         int64          `json:"deliveries"`
	LatencyMs          latencySummary `json:"latencyMs"`
}

type pressureReport struct {
	Sends               int64 `json:"sends"`
	ExpectedDeliveries  int64 `json:"expectedDeliveries"`
	Deliveries          int64 `json:"deliveries"`
	DeliveriesPerSecond int64 `json:"deliveriesPerSecond"`
}

type generatorReport struct {
	Name string `json:"name"`
	// CPU time of the whole process over the run (every thread, user + system), as a percentage of wall time.
	CPUPercent []float64 `json:"cpuPercent"`
	// Time spent sending and handling received data (read system calls included), as a percentage of wall time.
	BusyPercent []float64 `json:"busyPercent"`
	// Time spent polling with nothing to do while a send was near (--spin-us): CPU time, but not load.
	SpinPercent float64 `json:"spinPercent"`
	// Time the loop was ready to run while another task held its core (Linux schedstat; -1 when unknown): the machine's share, not the generator's.
	WaitPercent    float64        `json:"waitPercent"`
	Saturated      bool           `json:"saturated"`
	SendsLate      bool           `json:"sendsLate"`
	FramesReceived int64          `json:"framesReceived"`
	SendLagMs      latencySummary `json:"sendLagMs"`
}

type gates struct {
	MinDelivery float64  `json:"minDelivery"`
	MaxP99Ms    float64  `json:"maxP99Ms"`
	Passed      bool     `json:"passed"`
	Failures    []string `json:"failures"`
}

type report struct {
	URL                 string           `json:"url"`
	Preset              *string          `json:"preset"`
	Threads             int              `json:"threads"`
	Workload            workload         `json:"workload"`
	Sessions            int              `json:"sessions"`
	Connections         int              `json:"connections"`
	Connected           int              `json:"connected"`
	ConnectFailed       int              `json:"connectFailed"`
	ConnectMs           latencySummary   `json:"connectMs"`
	Sends               int64            `json:"sends"`
	SendsPerSecond      int64            `json:"sendsPerSecond"`
	ExpectedDeliveries  int64            `json:"expectedDeliveries"`
	Deliveries          int64            `json:"deliveries"`
	DeliveryRatio       float64          `json:"deliveryRatio"`
	DeliveriesPerSecond int64            `json:"deliveriesPerSecond"`
	LatencyMs           latencySummary   `json:"latencyMs"`
	DeliveryLatencyMs   latencySummary   `json:"deliveryLatencyMs"`
	Target              *targetReport    `json:"target"`
	Pressure            *pressureReport  `json:"pressure"`
	Errors              map[string]int64 `json:"errors"`
	Generator           generatorReport  `json:"generator"`
	Gates               gates            `json:"gates"`
}

func buildReport(o *options, g *gen, durationMs int64, r result) *report {
	t := g.tallies[1]
	windowS := r.windowMs / 1000
	perSecond := func(n int64) int64 { return int64(math.Round(float64(n) / windowS)) }
	preset := o.preset != ""
	rep := &report{
		URL:                 o.url,
		Threads:             1,
		Sessions:            r.sessions,
		Connections:         r.connections,
		Connected:           g.connected,
		ConnectFailed:       g.failed,
		ConnectMs:           g.connectH.summary(),
		Sends:               t.sends,
		SendsPerSecond:      perSecond(t.sends),
		ExpectedDeliveries:  t.expected,
		Deliveries:          t.deliveries,
		DeliveryRatio:       1,
		DeliveriesPerSecond: perSecond(t.deliveries),
		DeliveryLatencyMs:   t.deliveryHist.summary(),
		Errors:              g.errors,
		Generator: generatorReport{
			Name:           "go",
			CPUPercent:     []float64{r.cpuPercent},
			BusyPercent:    []float64{r.busyPercent},
			SpinPercent:    r.spinPercent,
			WaitPercent:    r.waitPercent,
			Saturated:      r.busyPercent >= saturatedPercent,
			FramesReceived: r.framesReceived,
			SendLagMs:      t.lagHist.summary(),
		},
		Gates: gates{MinDelivery: o.minDelivery, MaxP99Ms: o.maxP99Ms, Failures: []string{}},
	}
	rep.Generator.SendsLate = rep.Generator.SendLagMs.P99 > saturatedLagMs
	if t.expected > 0 {
		rep.DeliveryRatio = float64(t.deliveries) / float64(t.expected)
	}
	if preset {
		name := o.preset
		rep.Preset = &name
		rep.Workload = workload{Route: "desktop", TopicsPerConnection: 1, Rooms: presetRooms[o.preset], UsersPerRoom: presetUsersPerRoom, SendersPerRoom: 1,
			Rate: presetPressureRate, DurationMs: durationMs, WarmupMs: o.warmupMs, MessageType: o.messageType, PayloadBytes: o.payloadBytes}
		rep.LatencyMs = t.targetHist.summary()
		rep.Target = &targetReport{Messages: t.targetMessages, Complete: t.targetDone, ExpectedDeliveries: t.targetExpected, Deliveries: t.targetDeliveries, LatencyMs: t.targetHist.summary()}
		rep.Pressure = &pressureReport{Sends: t.pressureSends, ExpectedDeliveries: t.pressureExpected, Deliveries: t.pressureDeliveries, DeliveriesPerSecond: perSecond(t.pressureDeliveries)}
	} else {
		rep.Workload = workload{Route: "desktop", TopicsPerConnection: 1, Rooms: o.rooms, UsersPerRoom: o.usersPerRoom, SendersPerRoom: o.sendersPerRoom,
			Rate: o.rate, DurationMs: durationMs, WarmupMs: o.warmupMs, MessageType: o.messageType, PayloadBytes: o.payloadBytes}
		rep.LatencyMs = rep.DeliveryLatencyMs
	}
	f := &rep.Gates.Failures
	if rep.ConnectFailed > 0 {
		*f = append(*f, fmt.Sprintf("%d of %d sessions failed to connect", rep.ConnectFailed, rep.Sessions))
	}
	if rep.DeliveryRatio < o.minDelivery {
		*f = append(*f, fmt.Sprintf("delivery %.2f%% < --min-delivery %.2f%%", rep.DeliveryRatio*100, o.minDelivery*100))
	}
	if o.maxP99Ms > 0 && rep.LatencyMs.P99 > o.maxP99Ms {
		*f = append(*f, fmt.Sprintf("p99 %v ms > --max-p99 %v ms", rep.LatencyMs.P99, o.maxP99Ms))
	}
	rep.Gates.Passed = len(*f) == 0
	return rep
}

func thousands(n int64) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func latencyRow(label string, l latencySummary) string {
	cells := ""
	for _, v := range []float64{l.P50, l.P90, l.P99, l.P999, l.Max} {
		cells += fmt.Sprintf("%10.3f", v)
	}
	return fmt.Sprintf("%-24s%s   (%s samples)", label, cells, thousands(l.Count))
}

// formatReport is the human-readable report, laid out as src/loadtest/report.ts lays out the Node generator's.
func formatReport(r *report) string {
	w := r.Workload
	var lines []string
	add := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	preset := ""
	if r.Preset != nil {
		preset = "  preset " + *r.Preset
	}
	add("go-loadgen → %s%s", r.URL, preset)
	add("workload: %s rooms × %d users, %d sender(s)/room at %v/s, %vs measured after %vs warm-up, %d-byte %s",
		thousands(int64(w.Rooms)), w.UsersPerRoom, w.SendersPerRoom, w.Rate, float64(w.DurationMs)/1000, float64(w.WarmupMs)/1000, w.PayloadBytes, w.MessageType)
	failed := ""
	if r.ConnectFailed > 0 {
		failed = fmt.Sprintf(", %s failed", thousands(int64(r.ConnectFailed)))
	}
	add("sessions: %s/%s connected%s", thousands(int64(r.Connected)), thousands(int64(r.Sessions)), failed)
	add("")
	header := fmt.Sprintf("%-24s", "latency (ms)")
	for _, h := range []string{"p50", "p90", "p99", "p99.9", "max"} {
		header += fmt.Sprintf("%10s", h)
	}
	add("%s", header)
	if r.Target != nil {
		add("%s", latencyRow("target message", r.Target.LatencyMs))
		add("%s", latencyRow("pressure delivery", r.DeliveryLatencyMs))
	} else {
		add("%s", latencyRow("delivery", r.DeliveryLatencyMs))
	}
	add("%s", latencyRow("connect (to room_joined)", r.ConnectMs))
	add("%s", latencyRow("generator send lag", r.Generator.SendLagMs))
	add("")
	add("sends: %s (%s/s)   deliveries: %s/%s (%.2f%%), %s/s", thousands(r.Sends), thousands(r.SendsPerSecond), thousands(r.Deliveries), thousands(r.ExpectedDeliveries), r.DeliveryRatio*100, thousands(r.DeliveriesPerSecond))
	if r.Target != nil {
		add("target room: %d/%d messages reached every receiver, deliveries %s/%s", r.Target.Complete, r.Target.Messages, thousands(r.Target.Deliveries), thousands(r.Target.ExpectedDeliveries))
	}
	if r.Pressure != nil {
		ratio := 1.0
		if r.Pressure.ExpectedDeliveries > 0 {
			ratio = float64(r.Pressure.Deliveries) / float64(r.Pressure.ExpectedDeliveries)
		}
		add("pressure: deliveries %s/%s (%.2f%%), %s/s", thousands(r.Pressure.Deliveries), thousands(r.Pressure.ExpectedDeliveries), ratio*100, thousands(r.Pressure.DeliveriesPerSecond))
	}
	kinds := make([]string, 0, len(r.Errors))
	for k := range r.Errors {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	if len(kinds) == 0 {
		add("errors: none")
	} else {
		parts := make([]string, len(kinds))
		for i, k := range kinds {
			parts[i] = fmt.Sprintf("%s ×%s", k, thousands(r.Errors[k]))
		}
		add("errors: %s", strings.Join(parts, ", "))
	}
	g := r.Generator
	add("generator: one event loop, busy %v%%, spinning %v%%, CPU %v%% (the whole process), waiting for its core %v%%", g.BusyPercent[0], g.SpinPercent, g.CPUPercent[0], g.WaitPercent)
	if g.Saturated {
		add("WARNING: the generator is saturated (%v%% busy, ≥ %d%%); latencies include generator delay.", g.BusyPercent[0], saturatedPercent)
	} else if g.SendsLate {
		add("WARNING: the generator's sends ran late (send lag p99 %v ms > %d ms) though it was %v%% busy: something else held its core; latencies include that delay.", g.SendLagMs.P99, saturatedLagMs, g.BusyPercent[0])
	}
	if r.Gates.Passed {
		add("result: PASS")
	} else {
		add("result: FAIL — %s", strings.Join(r.Gates.Failures, "; "))
	}
	return strings.Join(lines, "\n")
}
