package bench

import "testing"

func TestParseRedisBenchmarkCSV(t *testing.T) {
	v7 := "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n" +
		"\"SET\",\"256410.25\",\"0.057\",\"0.008\",\"0.015\",\"0.071\",\"0.663\",\"5.855\"\n"
	r, err := ParseRedisBenchmarkCSV(v7, "SET")
	if err != nil || r.RPS != 256410.25 || r.AvgMs != 0.057 || r.P50Ms != 0.015 || r.P95Ms != 0.071 || r.P99Ms != 0.663 || r.MaxMs != 5.855 {
		t.Fatalf("redis-benchmark 7: %+v %v", r, err)
	}
	// Before 7.0: no header, only the rate; a warning and progress around it.
	old := "WARNING: Could not fetch server CONFIG\r\nSET: rps=0.0 (overall: 0.0)\r\"PING_INLINE\",\"100.00\"\n\"SET\",\"123.45\"\n"
	if r, err := ParseRedisBenchmarkCSV(old, "SET"); err != nil || r.RPS != 123.45 || r.P50Ms != 0 {
		t.Fatalf("redis-benchmark 6: %+v %v", r, err)
	}
	for _, bad := range []string{"", "\"test\",\"rps\"\n\"GET\",\"5\"\n", "\"test\",\"rps\"\n\"SET\",\"fast\"\n"} {
		if r, err := ParseRedisBenchmarkCSV(bad, "SET"); err == nil {
			t.Errorf("%q parsed as %+v", bad, r)
		}
	}
}
