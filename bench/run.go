package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/supervisor"
)

// Scenario is one benchmark: it measures ftrun and its baseline in the same run and
// reports a Section. On error the Section holds what was measured before it.
type Scenario struct {
	Name  string
	Title string
	Tools []string // programs it needs besides criu, ip and nsenter
	Run   func(ctx context.Context, env Env) (Section, error)
}

// Scenarios are all the benchmarks, in the order they run and are reported.
func Scenarios() []Scenario {
	return []Scenario{
		{Name: "frozen", Title: "Frozen time vs program size", Tools: []string{"redis-server"}, Run: Frozen},
		{Name: "incremental", Title: "Frozen time of an incremental checkpoint", Tools: []string{"redis-server"}, Run: Incremental},
		{Name: "shipped", Title: "Bytes shipped vs pages dirtied", Tools: []string{"gcc"}, Run: Shipped},
		{Name: "restart", Title: "Plain restart vs ftrun", Tools: []string{"redis-server"}, Run: Restart},
		{Name: "failover", Title: "Failover as seen by a client", Tools: []string{"redis-server", "iptables"}, Run: Failover},
		{Name: "pingpong", Title: "Two failovers, A -> B -> A, and protection regained", Tools: []string{"redis-server", "iptables"}, Run: PingPong},
		{Name: "scale", Title: "One standby, ten primaries", Tools: []string{"ruby"}, Run: Scale},
		{Name: "gate", Title: "Latency with and without the output gate", Tools: []string{"redis-server", "iptables"}, Run: Gate},
		{Name: "output", Title: "What the Output Rule costs: latency vs epoch length, throughput", Tools: []string{"redis-server", "redis-benchmark", "iptables"}, Run: Output},
	}
}

// Select picks the scenarios named in only (all when empty).
func Select(all []Scenario, only []string) ([]Scenario, error) {
	if len(only) == 0 {
		return all, nil
	}
	var out []Scenario
	for _, name := range only {
		found := false
		for _, s := range all {
			if s.Name == name {
				out = append(out, s)
				found = true
			}
		}
		if !found {
			var names []string
			for _, s := range all {
				names = append(names, s.Name)
			}
			return nil, fmt.Errorf("no scenario %q (there are: %s)", name, strings.Join(names, ", "))
		}
	}
	return out, nil
}

// Options is one `ftrun bench`.
type Options struct {
	Ftrun    string    // the ftrun binary to measure
	Out      string    // report folder
	Quick    bool      // short variant for CI
	Only     []string  // scenario names; empty for all
	Progress io.Writer // progress lines
	Command  string    // the command line, for the report
	// KeepScratch leaves the scratch directory (state dirs, CRIU logs) in place.
	KeepScratch bool
	// IncrementalMB are the incremental scenario's sizes (nil: 512 MB, 64 quick).
	IncrementalMB []int
}

// ErrFailed is returned when a scenario failed (the report says which and why).
var ErrFailed = errors.New("benchmark failed")

// Run runs the scenarios one after the other and writes the report folder, also when
// a scenario fails or ctx is cancelled (then with what ran).
func Run(ctx context.Context, opt Options) (Report, error) {
	if err := supervisor.RequireRoot(); err != nil {
		return Report{}, fmt.Errorf("ftrun bench: %w", err)
	}
	scs, err := Select(Scenarios(), opt.Only)
	if err != nil {
		return Report{}, err
	}
	if err := needTools(scs); err != nil {
		return Report{}, err
	}
	if opt.Progress == nil {
		opt.Progress = io.Discard
	}
	rep := Report{Started: time.Now(), Quick: opt.Quick, Machine: machine(), Command: opt.Command}
	pr := &progress{w: opt.Progress, start: rep.Started}
	scratch, err := os.MkdirTemp("", "ftrun-bench-")
	if err != nil {
		return Report{}, fmt.Errorf("scratch dir: %w", err)
	}
	if !opt.KeepScratch {
		defer func() {
			if err := removeScratch(scratch); err != nil {
				pr.say("bench", "%v", err)
			}
		}()
	}
	pr.say("bench", "report folder %s; scratch %s", opt.Out, scratch)
	nets := &atomic.Int32{}
	id := fmt.Sprintf("%03d", os.Getpid()%1000)
	failed := 0
	for _, sc := range scs {
		if ctx.Err() != nil {
			rep.Sections = append(rep.Sections, Section{Name: sc.Name, Title: sc.Title, Err: "not run: interrupted"})
			failed++
			continue
		}
		dir := filepath.Join(scratch, sc.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return rep, fmt.Errorf("scratch dir: %w", err)
		}
		env := Env{Ftrun: opt.Ftrun, Scratch: dir, Quick: opt.Quick, IncrementalMB: opt.IncrementalMB, id: id, nets: nets, undo: &undoStack{},
			Logf: func(format string, a ...any) { pr.say(sc.Name, format, a...) }}
		pr.say(sc.Name, "start: %s", sc.Title)
		t0 := time.Now()
		sec, err := runOne(ctx, sc, env)
		env.undo.run()
		sec.Name, sec.Title, sec.Elapsed = sc.Name, sc.Title, time.Since(t0)
		if err != nil {
			failed++
			sec.Err = err.Error()
			if ctx.Err() != nil {
				sec.Err = "interrupted (SIGINT or SIGTERM): " + sec.Err
			}
			pr.say(sc.Name, "FAILED after %s: %s", sec.Elapsed.Round(100*time.Millisecond), firstLine(sec.Err))
			if n := keepLogs(dir, filepath.Join(opt.Out, "logs", sc.Name)); n > 0 {
				sec.Notes = append(sec.Notes, fmt.Sprintf("logs of its processes: logs/%s/", sc.Name))
			}
		} else {
			pr.say(sc.Name, "done in %s", sec.Elapsed.Round(100*time.Millisecond))
		}
		rep.Sections = append(rep.Sections, sec)
	}
	rep.Elapsed = time.Since(rep.Started)
	if err := Write(opt.Out, rep); err != nil {
		return rep, err
	}
	pr.say("bench", "report written to %s (%s)", filepath.Join(opt.Out, "README.md"), rep.Elapsed.Round(time.Second))
	if failed > 0 {
		return rep, fmt.Errorf("%w: %d of %d scenarios (%s); see %s", ErrFailed, failed, len(scs), strings.Join(rep.Failed(), ", "), filepath.Join(opt.Out, "README.md"))
	}
	return rep, nil
}

// runOne runs a scenario, turning a panic into its error so the others still run and
// everything it started is still undone.
func runOne(ctx context.Context, sc Scenario, env Env) (sec Section, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return sc.Run(ctx, env)
}

func needTools(scs []Scenario) error {
	tools := []string{"criu", "ip", "nsenter"}
	for _, s := range scs {
		tools = append(tools, s.Tools...)
	}
	var missing []string
	seen := map[string]bool{}
	for _, t := range tools {
		if seen[t] {
			continue
		}
		seen[t] = true
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("ftrun bench needs %s: run scripts/setup (or `make setup`)", strings.Join(missing, ", "))
	}
	return nil
}

// keepLogs copies a failed scenario's logs into the report; it returns how many.
func keepLogs(scratch, dst string) int {
	logs, _ := filepath.Glob(filepath.Join(scratch, "*.log"))
	if len(logs) == 0 || os.MkdirAll(dst, 0o755) != nil {
		return 0
	}
	n := 0
	for _, l := range logs {
		if copyFile(filepath.Join(dst, filepath.Base(l)), l) == nil {
			n++
		}
	}
	return n
}

func machine() string {
	var parts []string
	parts = append(parts, fmt.Sprintf("%d cores", runtime.NumCPU()))
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		parts = append(parts, "Linux "+strings.TrimSpace(string(data)))
	}
	if v, err := (checkpoint.Prober{}).Version(); err == nil {
		parts = append(parts, "criu "+v.String())
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(data), "MemTotal: %d kB", &kb); err == nil {
			parts = append(parts, fmt.Sprintf("%.0f GiB memory", float64(kb)/(1<<20)))
		}
	}
	return strings.Join(parts, ", ")
}

// progress writes timestamped progress lines.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
}

func (p *progress) say(who, format string, a ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	fmt.Fprintf(p.w, "%s %7.1fs %-8s %s\n", now.Format("15:04:05"), now.Sub(p.start).Seconds(), who, fmt.Sprintf(format, a...))
}
