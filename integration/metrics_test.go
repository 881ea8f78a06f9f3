package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// scrape reads one Prometheus text exposition into series -> value.
func scrape(t *testing.T, url string) map[string]float64 {
	t.Helper()
	return scrapeWith(t, http.DefaultClient, url)
}

// scrapeIn scrapes url from inside host h.
func scrapeIn(t *testing.T, h host, url string) map[string]float64 {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return dialIn(h, addr, 2*time.Second) },
	}}
	return scrapeWith(t, c, url)
}

func scrapeWith(t *testing.T, c *http.Client, url string) map[string]float64 {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// The metrics endpoint scraped during a real run: checkpoint counters move as
// checkpoints happen, and a crash and its restore show.
func TestMetricsEndpoint(t *testing.T) {
	requiresRoot(t, "ruby")
	name := "it-metrics"
	t.Cleanup(func() { killService(t, name) })
	script, out := writeCounter(t)
	port := freePort(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	p := startFtrun(t, t.TempDir(), nil, "--name", name, "--interval", "200ms", "--discard",
		"--metrics", fmt.Sprintf("127.0.0.1:%d", port), "--", "ruby", script, out)
	st := p.waitFor("checkpoints", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 2 })
	ok := `ftrun_checkpoints_total{result="ok",service="it-metrics"}`
	first := scrape(t, url)
	time.Sleep(700 * time.Millisecond)
	second := scrape(t, url)
	if second[ok] <= first[ok] || first[ok] < 1 {
		t.Fatalf("%s did not move: %v -> %v", ok, first[ok], second[ok])
	}
	for _, k := range []string{
		`ftrun_checkpoint_frozen_seconds_count{service="it-metrics"}`,
		`ftrun_dumped_bytes_total{service="it-metrics"}`,
		`ftrun_image_bytes{service="it-metrics"}`,
		`ftrun_epoch{service="it-metrics"}`,
	} {
		if second[k] <= 0 {
			t.Errorf("%s = %v, want > 0", k, second[k])
		}
	}
	if second[`ftrun_program_up{service="it-metrics"}`] != 1 || second[`ftrun_protected{service="it-metrics"}`] != 1 {
		t.Errorf("program_up/protected not 1: %v", second)
	}
	restores := `ftrun_recoveries_total{service="it-metrics",step="restore"}`
	before := second[restores]
	syscall.Kill(st.Pid, syscall.SIGKILL)
	p.waitFor("restore", 20*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.State == supervisor.StateRunning })
	after := scrape(t, url)
	if after[restores] != before+1 {
		t.Fatalf("%s: %v -> %v, want +1", restores, before, after[restores])
	}
	if after[`ftrun_program_up{service="it-metrics"}`] != 1 {
		t.Errorf("program_up after restore: %v", after[`ftrun_program_up{service="it-metrics"}`])
	}
}
