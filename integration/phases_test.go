package integration

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ftrun/ftrun/supervisor"
	"github.com/ftrun/ftrun/supervisor/phase"
)

// A gated redis streaming to a standby on another host, with a client writing to it:
// after some epochs every phase of the epoch is in the status and the metrics, none of
// them zero, and the phases account for the commit latency (the histograms' sums
// agree, over the same epochs).
func TestEpochPhasesAddUpToCommitLatency(t *testing.T) {
	e := newOutputEnv(t)
	name := "p2-phases"
	t.Cleanup(func() { killService(t, name) })
	sb := startStandbyArgs(t, e.standby, t.TempDir(), e.keys)
	defer func() {
		sb.kill()
		killService(t, name)
	}()
	const port = 6379
	metricsPort := freePort(t)
	args := append([]string{"--name", name, "--interval", "100ms", "--discard", "--standby", e.standby.addr + ":7946", "--keys", e.keys,
		"--net", "--addr", e.svc + "/24", "--commit", "standby", "--metrics", fmt.Sprintf("127.0.0.1:%d", metricsPort), "--"},
		redisService.argv(port, t.TempDir())...)
	p := startFtrunIn(t, e.primary.nsPath(), t.TempDir(), nil, args...)
	p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch > 0
	})
	w := startWriter(t, e, redisService, port, 15*time.Second)
	waitAcked(t, w, 20)
	st := p.waitFor("20 epochs with their phases", 60*time.Second, func(s supervisor.Status) bool { return s.PhaseEpochs >= 20 })
	for _, n := range phase.All {
		q, ok := st.Phases[n]
		if !ok || q.P50 <= 0 || q.P99 < q.P50 {
			t.Errorf("phase %s: %+v (present %v), want p99 >= p50 > 0", n, q, ok)
		}
	}

	m := scrapeIn(t, e.primary, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	svc := `service="` + name + `"`
	commitSum, commitCount := m["ftrun_epoch_commit_latency_seconds_sum{"+svc+"}"], m["ftrun_epoch_commit_latency_seconds_count{"+svc+"}"]
	var sum float64
	for _, n := range phase.All {
		c := m[`ftrun_epoch_phase_seconds_count{phase="`+string(n)+`",`+svc+`}`]
		if c != commitCount {
			t.Errorf("phase %s counted %v epochs, commit latency %v", n, c, commitCount)
		}
		sum += m[`ftrun_epoch_phase_seconds_sum{phase="`+string(n)+`",`+svc+`}`]
	}
	// The same epochs, split at instants measured against the same clock: only the
	// clamps of CRIU's own figures may make the two differ, and only slightly.
	if commitCount == 0 || sum < commitSum*0.95 || sum > commitSum*1.001 {
		t.Fatalf("phases add up to %.4fs, commit latency %.4fs over %v epochs", sum, commitSum, commitCount)
	}
	for _, n := range phase.All {
		t.Logf("%-12s p50 %8.2f ms  p99 %8.2f ms", n, float64(st.Phases[n].P50)/1e6, float64(st.Phases[n].P99)/1e6)
	}
	t.Logf("%v epochs: commit latency %.1f ms on average, phases %.1f ms", commitCount, commitSum/commitCount*1000, sum/commitCount*1000)

	out, err := exec.Command(ftrunBin, "status", "--state-dir", p.stateDir).CombinedOutput()
	if err != nil {
		t.Fatalf("ftrun status: %v\n%s", err, out)
	}
	for _, n := range phase.All {
		if !strings.Contains(string(out), "  "+string(n)+" ") {
			t.Errorf("ftrun status does not show phase %s:\n%s", n, out)
		}
	}
	out, err = exec.Command(ftrunBin, "status", "--json", "--state-dir", p.stateDir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"durable": {`) {
		t.Fatalf("ftrun status --json lacks the phases: %v\n%s", err, out)
	}
	w.close()
}
