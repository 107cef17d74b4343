package main

import (
	"math"
	"math/bits"
)

// histogram is an HdrHistogram of microseconds with 3 significant digits,
// laid out as hdr-histogram-js lays out the Node generator's (lowest
// discernible value 1, highest trackable 600,000,000): the same buckets, so
// both generators quantize a latency the same way and read the same
// percentiles from the same samples.
type histogram struct {
	counts []int64
	total  int64
	max    int64
}

const (
	maxTrackableUs = 600_000_000
	// 3 significant digits: 2 × 10³ values with unit resolution, rounded up to a power of two.
	subBucketCount              = 2048
	subBucketHalfCount          = subBucketCount / 2
	subBucketHalfCountMagnitude = 10
	subBucketMask               = subBucketCount - 1
	// 64 − unit magnitude (0) − (sub-bucket half-count magnitude + 1).
	leadingZeroCountBase = 64 - subBucketHalfCountMagnitude - 1
)

func newHistogram() *histogram {
	buckets := 1
	for smallest := int64(subBucketCount); smallest <= maxTrackableUs; smallest <<= 1 {
		buckets++
	}
	return &histogram{counts: make([]int64, (buckets+1)*subBucketHalfCount)}
}

func bucketIndex(value int64) int {
	return leadingZeroCountBase - bits.LeadingZeros64(uint64(value|subBucketMask))
}

func countsIndex(value int64) int {
	b := bucketIndex(value)
	sub := int(value >> b)
	return (b+1)<<subBucketHalfCountMagnitude + sub - subBucketHalfCount
}

func valueFromIndex(index int) int64 {
	b := index>>subBucketHalfCountMagnitude - 1
	sub := index&(subBucketHalfCount-1) + subBucketHalfCount
	if b < 0 {
		sub -= subBucketHalfCount
		b = 0
	}
	return int64(sub) << b
}

// equivalentRange is how many values share `value`'s count.
func equivalentRange(value int64) int64 {
	b := bucketIndex(value)
	if int(value>>b) >= subBucketCount {
		b++
	}
	return int64(1) << b
}

func lowestEquivalent(value int64) int64 {
	b := bucketIndex(value)
	return (value >> b) << b
}

func highestEquivalent(value int64) int64 {
	return lowestEquivalent(value) + equivalentRange(value) - 1
}

// record adds one latency in µs, clamped to [1, maxTrackableUs] as the Node generator's recordUs does.
func (h *histogram) record(us float64) {
	v := int64(math.Round(us))
	if us < 1 {
		v = 1
	} else if us > maxTrackableUs {
		v = maxTrackableUs
	}
	h.counts[countsIndex(v)]++
	h.total++
	if v > h.max {
		h.max = v
	}
}

// percentile is hdr-histogram-js's getValueAtPercentile: the highest value
// equivalent to the first bucket whose running count reaches the rank.
func (h *histogram) percentile(p float64) int64 {
	if h.total == 0 {
		return 0
	}
	rank := int64(math.Ceil(p/100*float64(h.total) - 1e-9))
	if rank < 1 {
		rank = 1
	}
	var seen int64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return highestEquivalent(valueFromIndex(i))
		}
	}
	return 0
}

func (h *histogram) mean() float64 {
	if h.total == 0 {
		return 0
	}
	var sum float64
	for i, c := range h.counts {
		if c != 0 {
			v := valueFromIndex(i)
			sum += float64(lowestEquivalent(v)+equivalentRange(v)/2) * float64(c)
		}
	}
	return sum / float64(h.total)
}

// latencySummary is the Node report's LatencySummary: milliseconds, to the µs.
type latencySummary struct {
	Count int64   `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
}

func ms(us float64) float64 { return math.Round(us) / 1000 }

func (h *histogram) summary() latencySummary {
	if h.total == 0 {
		return latencySummary{}
	}
	return latencySummary{
		Count: h.total,
		P50:   ms(float64(h.percentile(50))),
		P90:   ms(float64(h.percentile(90))),
		P95:   ms(float64(h.percentile(95))),
		P99:   ms(float64(h.percentile(99))),
		P999:  ms(float64(h.percentile(99.9))),
		Max:   ms(float64(highestEquivalent(h.max))),
		Mean:  ms(h.mean()),
	}
}
