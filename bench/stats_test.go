package bench

import (
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for q, want := range map[float64]float64{50: 5, 90: 9, 99: 10, 100: 10, 10: 1} {
		if got := Percentile(xs, q); got != want {
			t.Errorf("p%v = %v, want %v", q, got, want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("no samples")
	}
	if xs[0] != 5 {
		t.Error("Percentile sorted its argument in place")
	}
}

func TestParseCommits(t *testing.T) {
	log := strings.Join([]string{
		`redis says hello (not JSON)`,
		`{"time":"2026-01-01T00:00:01.100Z","level":"DEBUG","msg":"checkpoint committed","epoch":1,"total":100000000,"bytes":5}`,
		`{"time":"2026-01-01T00:00:01.500Z","level":"DEBUG","msg":"epoch acked by standby","epoch":1,"bytes":9000000,"full":true}`,
		`{"time":"2026-01-01T00:00:02.050Z","level":"DEBUG","msg":"checkpoint committed","epoch":2,"total":50000000}`,
		`{"time":"2026-01-01T00:00:02.200Z","level":"DEBUG","msg":"epoch acked by standby","epoch":2,"bytes":4096,"full":false}`,
		`{"time":"2026-01-01T00:00:03.000Z","level":"DEBUG","msg":"epoch acked by standby","epoch":7,"bytes":1}`,
	}, "\n")
	got, err := ParseCommits(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d samples: %+v", len(got), got)
	}
	if got[0].Latency != 500*time.Millisecond || !got[0].Full || got[0].Bytes != 9000000 {
		t.Errorf("epoch 1: %+v", got[0])
	}
	if got[1].Latency != 200*time.Millisecond || got[1].Full {
		t.Errorf("epoch 2: %+v", got[1])
	}
	from := time.Date(2026, 1, 1, 0, 0, 1, 0, time.UTC)
	in := InWindow(got, from, from.Add(2*time.Second))
	if len(in) != 1 || in[0].Epoch != 2 {
		t.Errorf("window keeps delta epochs only: %+v", in)
	}
	if l := Latencies(in); len(l) != 1 || l[0] != 200 {
		t.Errorf("latencies %v", l)
	}
}

func TestWritesAndSamples(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	w := &Writes{
		Sent: []time.Time{t0, t0.Add(10 * time.Millisecond), t0.Add(20 * time.Millisecond)},
		Lat:  []time.Duration{time.Millisecond, time.Millisecond, time.Second},
		OK:   []bool{true, true, false},
	}
	if n := w.AckedBefore(t0.Add(15 * time.Millisecond)); n != 2 {
		t.Errorf("acked before: %d", n)
	}
	if l := w.LatencyMs(t0.Add(15 * time.Millisecond)); len(l) != 2 || l[0] != 1 {
		t.Errorf("latencies %v", l)
	}
	samples := []ClientSample{
		{Key: 0, Sent: t0.Add(-time.Second), LatMs: 1, OK: true},
		{Key: 1, Sent: t0.Add(-time.Millisecond), LatMs: 1500, OK: true}, // answered after the kill
		{Key: 2, Sent: t0.Add(time.Second), LatMs: 1, OK: true},
	}
	if first, ok := FirstAnswerAfter(samples, t0); !ok || first.Key != 1 {
		t.Errorf("first answer after the kill: %+v %v", first, ok)
	}
	if keys := AckedBefore(samples, "c:", t0); len(keys) != 1 || keys[0] != "c:k0" {
		t.Errorf("acked before the kill: %v", keys)
	}
}

func TestRecoveryText(t *testing.T) {
	log := `time=x level=WARN msg="taking over: primary silent for 1.006s (timeout 1s)" service=s epoch=4
time=x level=ERROR msg="recovery step failed" role=live service=s step=restore epoch=4 err="criu restore failed: Error (soccr/soccr.c:499): Can't bind \"x\""`
	if got := recoveryText(true, log); got != "restored epoch 4" {
		t.Errorf("restored: %q", got)
	}
	got := recoveryText(false, log)
	if !strings.HasPrefix(got, "FRESH START (restoring epoch 4 failed: criu restore failed") || !strings.Contains(got, `Can't bind "x"`) {
		t.Errorf("fresh start: %q", got)
	}
}

func TestMountsUnder(t *testing.T) {
	info := `36 35 98:0 / /mnt1 rw - ext3 /dev/root rw
40 36 0:30 / /tmp/s/state/x/.criu.cgyard.a rw - tmpfs none rw
41 40 0:31 / /tmp/s/state/x/.criu.cgyard.a/memory rw - cgroup none rw
42 36 0:32 / /tmp/s2 rw - tmpfs none rw
43 36 0:33 / /tmp/s/with\040space rw - tmpfs none rw`
	got := MountsUnder(info, "/tmp/s/")
	want := []string{"/tmp/s/state/x/.criu.cgyard.a/memory", "/tmp/s/state/x/.criu.cgyard.a", "/tmp/s/with space"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, want %q (deepest first, /tmp/s2 is not below /tmp/s)", got, want)
	}
}
