package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ftrun/ftrun/bench"
)

// `ftrun bench --quick` runs every scenario on this machine and its report has every
// table and plot: a summary with each figure next to its baseline, one section per
// scenario with its table, and every SVG the README links exists, is XML and draws
// data.
func TestBenchQuickReport(t *testing.T) {
	requiresRoot(t, "redis-server", "ruby", "gcc", "iptables", "ip", "nsenter")
	out := filepath.Join(t.TempDir(), "report")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var logs bytes.Buffer
	cmd := exec.CommandContext(ctx, ftrunBin, "bench", "--quick", "--out", out)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	md, _ := os.ReadFile(filepath.Join(out, "README.md"))
	if err != nil {
		t.Fatalf("ftrun bench --quick: %v after %s\n%s\nREADME:\n%s", err, took.Round(time.Second), tail(logs.String(), 40), md)
	}
	t.Logf("ftrun bench --quick took %s", took.Round(time.Second))
	if strings.Contains(logs.String(), "DATA RACE") {
		t.Errorf("the race detector found a data race in ftrun bench:\n%s", tail(logs.String(), 60))
	}
	if !strings.Contains(logs.String(), "report written to") {
		t.Errorf("no progress lines:\n%s", logs.String())
	}
	readme := string(md)

	// Every scenario has its section with a table, and figures in the summary.
	sections := []struct{ title, table string }{
		{"Frozen time vs program size", "| data | image | frozen: ftrun | frozen: criu CLI |"},
		{"Bytes shipped vs pages dirtied", "| pages dirtied (N) | dirtied | shipped per epoch | target | full image |"},
		{"Plain restart vs ftrun", "| supervisor | kill -9 -> first answer | first answer correct |"},
		{"Failover as seen by a client", "| kill -> first answer | take-over timeout: kill -> decision, restore | keys lost (of acknowledged before the kill) |"},
		{"One standby, ten primaries", "| service | epochs acked in window | commit p50 | commit p99 |"},
		{"Latency with and without the output gate", "| --commit | answers | p50 | p90 | p99 |"},
		{"What the Output Rule costs: latency vs epoch length, throughput", "| --interval | p50 | p99 | bound (interval/2 + frozen + RTT) |"},
		{"What the Output Rule costs: latency vs epoch length, throughput", "| clients | with ftrun (gate, --commit standby) | bare redis | ratio |"},
		{"What the Output Rule costs: latency vs epoch length, throughput", "| phase | 50ms: mean (p50 / p99), "},
		{"What the Output Rule costs: latency vs epoch length, throughput", "| clients x pipeline | with ftrun | latency p50 / p99 with ftrun |"},
		{"What the Output Rule costs: latency vs epoch length, throughput", "| target | measured | limit | verdict | largest phase (when not met) |"},
		{"One standby, ten primaries", "| phase | 4 primaries: mean (p50 / p99), "},
	}
	if !strings.Contains(readme, "## Summary\n\n| scenario | figure | ftrun | baseline (same run) | ratio |") {
		t.Errorf("README has no summary table:\n%s", readme)
	}
	if !regexp.MustCompile(`\*\*Targets: \d+ of \d+ met\*\*\n\n\| scenario \| target \|`).MatchString(readme) {
		t.Errorf("README has no targets table under the summary")
	}
	summary, _, _ := strings.Cut(readme[strings.Index(readme, "## Summary"):], "\n## 1.")
	for _, s := range sections {
		if !regexp.MustCompile(`(?m)^## \d+\. ` + regexp.QuoteMeta(s.title) + `$`).MatchString(readme) {
			t.Errorf("README has no section %q", s.title)
		}
		if !strings.Contains(readme, s.table) {
			t.Errorf("section %q has no table %q", s.title, s.table)
		}
		if !strings.Contains(summary, "| "+s.title+" | ") {
			t.Errorf("the summary has no figure of %q", s.title)
		}
	}

	// Every plot the README links exists, parses as XML and draws data.
	links := regexp.MustCompile(`!\[[^\]]*\]\(([^)]+\.svg)\)`).FindAllStringSubmatch(readme, -1)
	want := []string{"frozen.svg", "shipped.svg", "restart-latency.svg", "failover-timeline.svg", "scale-commit-latency.svg", "scale-phases.svg", "gate-latency.svg", "output-phases.svg"}
	linked := map[string]bool{}
	for _, l := range links {
		linked[l[1]] = true
	}
	for _, w := range want {
		if !linked[w] {
			t.Errorf("README does not show %s (shows %v)", w, links)
		}
	}
	for file := range linked {
		data, err := os.ReadFile(filepath.Join(out, file))
		if err != nil {
			t.Errorf("linked plot: %v", err)
			continue
		}
		if n, err := svgDataElements(data); err != nil {
			t.Errorf("%s is not XML: %v", file, err)
		} else if n == 0 {
			t.Errorf("%s draws no data", file)
		}
	}

	// results.json holds the same sections, with numbers.
	var res struct {
		Sections []struct {
			Name    string `json:"name"`
			Error   string `json:"error"`
			Figures []struct {
				Value *float64 `json:"value"`
			} `json:"figures"`
		} `json:"sections"`
	}
	data, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &res); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	if want := len(bench.Scenarios()); len(res.Sections) != want {
		t.Errorf("results.json has %d sections, want %d", len(res.Sections), want)
	}
	for _, s := range res.Sections {
		if s.Error != "" || len(s.Figures) == 0 || s.Figures[0].Value == nil {
			t.Errorf("results.json section %s: error %q, %d figures", s.Name, s.Error, len(s.Figures))
		}
	}
}

// svgDataElements parses an SVG document and counts its elements of class "data".
func svgDataElements(doc []byte) (int, error) {
	dec := xml.NewDecoder(bytes.NewReader(doc))
	n, root := 0, ""
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			if root != "svg" {
				return n, errors.New("root element is not <svg>")
			}
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			for _, a := range se.Attr {
				if a.Name.Local == "class" && a.Value == "data" {
					n++
				}
			}
		}
	}
}

// Without root, `ftrun bench` says so in one line and writes nothing.
func TestBenchNeedsRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a command as another user")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv not installed")
	}
	// A directory anyone may enter, with a copy of the binary anyone may run.
	dir, err := os.MkdirTemp("", "ftrun-bench-noroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "ftrun")
	data, err := os.ReadFile(ftrunBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "report")
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "bench", "--quick", "--out", out)
	cmd.Dir = dir
	got, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(got), "must run as root") {
		t.Fatalf("ftrun bench as nobody: %v\n%s", err, got)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("a report folder was written without root")
	}
}
