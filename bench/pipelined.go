package bench

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// PipeSpec is one redis-benchmark load: clients connections, each keeping pipeline
// SETs in flight.
type PipeSpec struct {
	Clients  int `json:"clients"`
	Pipeline int `json:"pipeline"`
}

// Requests is how many SETs a run of s sends for rounds pipelines per client.
func (s PipeSpec) Requests(rounds int) int { return rounds * s.Clients * s.Pipeline }

// RedisBenchmark is what one redis-benchmark run reported (its --csv line). The
// latencies are zero when this redis-benchmark does not print them (before 7.0).
type RedisBenchmark struct {
	Command  string  `json:"command"`
	Requests int     `json:"requests"`
	RPS      float64 `json:"requests_per_second"`
	AvgMs    float64 `json:"avg_latency_ms,omitempty"`
	P50Ms    float64 `json:"p50_latency_ms,omitempty"`
	P95Ms    float64 `json:"p95_latency_ms,omitempty"`
	P99Ms    float64 `json:"p99_latency_ms,omitempty"`
	MaxMs    float64 `json:"max_latency_ms,omitempty"`
}

// Pipelined is one PipeSpec against redis under ftrun and against the bare redis.
type Pipelined struct {
	PipeSpec
	Ftrun RedisBenchmark `json:"ftrun"`
	Bare  RedisBenchmark `json:"bare"`
}

// RunRedisBenchmark runs `redis-benchmark -t set` with spec's clients and pipeline for
// requests SETs (keys drawn from 100000) from host against addr, and returns what it
// reported. The run is killed after timeout.
func RunRedisBenchmark(ctx context.Context, h Host, addr string, spec PipeSpec, requests int, timeout time.Duration) (RedisBenchmark, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return RedisBenchmark{}, fmt.Errorf("redis-benchmark: address %q: %w", addr, err)
	}
	args := []string{"-h", host, "-p", port, "-t", "set", "-c", strconv.Itoa(spec.Clients), "-P", strconv.Itoa(spec.Pipeline),
		"-n", strconv.Itoa(requests), "-r", "100000", "--csv"}
	command := "redis-benchmark " + strings.Join(args, " ")
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var stderr strings.Builder
	cmd := h.Cmd(ctx, "redis-benchmark", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return RedisBenchmark{Command: command}, fmt.Errorf("%s: not done after %s", command, timeout)
	}
	if err != nil {
		return RedisBenchmark{Command: command}, fmt.Errorf("%s: %w: %s", command, err, strings.TrimSpace(stderr.String()))
	}
	r, err := ParseRedisBenchmarkCSV(string(out), "SET")
	r.Command, r.Requests = command, requests
	if err != nil {
		return r, fmt.Errorf("%s: %w (stderr: %s)", command, err, strings.TrimSpace(stderr.String()))
	}
	return r, nil
}

// ParseRedisBenchmarkCSV reads test's line from redis-benchmark --csv output (pure).
// Columns are found by the header line ("test","rps","avg_latency_ms",...) that
// redis-benchmark 7 prints; without one, as before 7.0, a line is "test","rps". Lines
// that are not CSV (warnings, progress) are skipped.
func ParseRedisBenchmarkCSV(out, test string) (RedisBenchmark, error) {
	cols := map[string]int{"test": 0, "rps": 1}
	for _, line := range strings.Split(strings.ReplaceAll(out, "\r", "\n"), "\n") {
		rec, err := csv.NewReader(strings.NewReader(strings.TrimSpace(line))).Read()
		if err != nil || len(rec) < 2 {
			continue
		}
		if rec[0] == "test" {
			cols = map[string]int{}
			for i, name := range rec {
				cols[name] = i
			}
			continue
		}
		if !strings.EqualFold(rec[cols["test"]], test) {
			continue
		}
		num := func(name string) (float64, bool) {
			i, ok := cols[name]
			if !ok || i >= len(rec) {
				return 0, false
			}
			v, err := strconv.ParseFloat(rec[i], 64)
			return v, err == nil
		}
		var r RedisBenchmark
		rps, ok := num("rps")
		if !ok {
			return r, fmt.Errorf("no requests per second in %q", line)
		}
		r.RPS = rps
		r.AvgMs, _ = num("avg_latency_ms")
		r.P50Ms, _ = num("p50_latency_ms")
		r.P95Ms, _ = num("p95_latency_ms")
		r.P99Ms, _ = num("p99_latency_ms")
		r.MaxMs, _ = num("max_latency_ms")
		return r, nil
	}
	return RedisBenchmark{}, errors.New("no " + test + " line in redis-benchmark's output: " + strings.TrimSpace(out))
}
