package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// Percentile is the nearest-rank q-th percentile (0 < q <= 100) of xs; 0 for none.
func Percentile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(q / 100 * float64(len(s))))
	return s[min(max(rank-1, 0), len(s)-1)]
}

// Median is the 50th percentile.
func Median(xs []float64) float64 { return Percentile(xs, 50) }

// Ms is d in milliseconds.
func Ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Ratio is a/b, or NaN when b is not positive.
func Ratio(a, b float64) float64 {
	if b <= 0 {
		return math.NaN()
	}
	return a / b
}

// CommitSample is one epoch acknowledged by the standby, read from ftrun's log.
type CommitSample struct {
	Epoch   uint64
	Start   time.Time     // when the checkpoint began
	Acked   time.Time     // when the standby's ack was handled
	Latency time.Duration // Acked - Start
	Bytes   int64         // bytes shipped for the epoch
	Full    bool          // shipped whole (the first epoch, or a resync)
}

// logLine is the part of ftrun's JSON log (--log-format json --log-level debug) that
// ParseCommits reads.
type logLine struct {
	Time  time.Time `json:"time"`
	Msg   string    `json:"msg"`
	Epoch uint64    `json:"epoch"`
	Total int64     `json:"total"` // ns
	Bytes int64     `json:"bytes"`
	Full  bool      `json:"full"`
}

// ParseCommits reads ftrun's JSON debug log and returns every epoch the standby
// acknowledged, with its commit latency: checkpoint start (the "checkpoint committed"
// line's time less its total) to the "epoch acked by standby" line. Lines that are not
// JSON (a program's output relayed before the logger started) are skipped.
func ParseCommits(r io.Reader) ([]CommitSample, error) {
	starts := map[uint64]time.Time{}
	var out []CommitSample
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		switch l.Msg {
		case "checkpoint committed":
			starts[l.Epoch] = l.Time.Add(-time.Duration(l.Total))
		case "epoch acked by standby":
			st, ok := starts[l.Epoch]
			if !ok {
				continue
			}
			out = append(out, CommitSample{Epoch: l.Epoch, Start: st, Acked: l.Time, Latency: l.Time.Sub(st), Bytes: l.Bytes, Full: l.Full})
		}
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("read ftrun log: %w", err)
	}
	return out, nil
}

// InWindow keeps the delta epochs acknowledged within [from, to).
func InWindow(samples []CommitSample, from, to time.Time) []CommitSample {
	var out []CommitSample
	for _, s := range samples {
		if !s.Full && !s.Acked.Before(from) && s.Acked.Before(to) {
			out = append(out, s)
		}
	}
	return out
}

// Latencies are the samples' commit latencies in milliseconds.
func Latencies(samples []CommitSample) []float64 {
	out := make([]float64, len(samples))
	for i, s := range samples {
		out[i] = Ms(s.Latency)
	}
	return out
}
