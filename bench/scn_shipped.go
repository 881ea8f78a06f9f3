package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ftrun/ftrun/internal/dirtier"
	"github.com/ftrun/ftrun/supervisor"
)

// ShippedRow is one dirty-page count: bytes shipped for each epoch, and the baselines.
type ShippedRow struct {
	Pages      int     `json:"pages_dirtied"`
	Shipped    []int64 `json:"shipped_bytes"`
	FullImage  int64   `json:"full_image_bytes"`
	TargetByte int64   `json:"target_bytes"`
}

// ShippedTarget is the most an epoch that dirtied n pages may cost on the wire.
func ShippedTarget(n int) int64 { return int64(1.1*float64(n)*4096) + 64*1024 }

// Shipped measures the bytes an epoch costs on the wire as a function of the pages the
// program dirtied in it: a 100 MiB heap under `ftrun run --standby` to a real
// `ftrun standby` on loopback, one forced checkpoint per round of dirtying.
func Shipped(ctx context.Context, env Env) (sec Section, err error) {
	counts, reps := []int{64, 256, 1024, 4096}, 5
	if env.Quick {
		counts, reps = []int{64, 1024}, 3
	}
	const heapMiB = 100
	sec = Section{About: fmt.Sprintf("A C program with a %d MiB heap (every page different) runs under `ftrun run --standby` streaming to "+
		"`ftrun standby` (`--takeover-timeout 1h`) on 127.0.0.1. Each round it writes to exactly N pages, ftrun takes a checkpoint and the bytes shipped for that "+
		"epoch are read from `ftrun status` once the standby has acknowledged it (median of %d rounds, after the first, whole epoch). "+
		"Baselines: the full image set, which a plain copy would ship every epoch, and the target 1.1·N·4 KiB + 64 KiB.", heapMiB, reps)}
	var rows []ShippedRow
	defer func() { shippedReport(&sec, rows) }()

	bin, err := compileDirtier(env)
	if err != nil {
		return sec, err
	}
	keys, err := env.Keys()
	if err != nil {
		return sec, err
	}
	for _, n := range counts {
		row := ShippedRow{Pages: n, TargetByte: ShippedTarget(n)}
		err := shippedOne(ctx, env, bin, keys, heapMiB, reps, &row)
		if len(row.Shipped) > 0 {
			rows = append(rows, row)
		}
		if err != nil {
			return sec, fmt.Errorf("N=%d: %w", n, err)
		}
		env.Logf("N=%d pages: shipped %.0f KiB per epoch (target %.0f KiB, full image %.0f KiB)",
			n, Median(kib(row.Shipped)), float64(row.TargetByte)/1024, float64(row.FullImage)/1024)
	}
	return sec, nil
}

func kib(bs []int64) []float64 {
	out := make([]float64, len(bs))
	for i, b := range bs {
		out[i] = float64(b) / 1024
	}
	return out
}

func compileDirtier(env Env) (string, error) { return dirtier.Build(env.Scratch) }

// shippedOne measures one dirty-page count with a standby of its own. A standby takes
// over a primary that goes silent, stopped or not, so it is stopped first.
func shippedOne(ctx context.Context, env Env, bin, keys string, heapMiB, reps int, row *ShippedRow) error {
	sport, err := FreePort()
	if err != nil {
		return err
	}
	standbyAddr := fmt.Sprintf("127.0.0.1:%d", sport)
	sb, _, err := env.RunStandby(fmt.Sprintf("standby-%d", row.Pages), "", standbyAddr, keys, NoTakeover...)
	if err != nil {
		return err
	}
	stateFile := filepath.Join(env.Scratch, fmt.Sprintf("dirtier-%d.state", row.Pages))
	svc, err := env.RunFtrun(env.Name(fmt.Sprintf("-ship%d", row.Pages)), "",
		[]string{"--interval", "1h", "--discard", "--no-final-checkpoint", "--standby", standbyAddr, "--keys", keys},
		bin, fmt.Sprint(heapMiB), fmt.Sprint(row.Pages), stateFile)
	if err != nil {
		return err
	}
	defer func() {
		_ = sb.Stop(30 * time.Second)
		_ = svc.Stop(30 * time.Second)
		KillCgroup(svc.Name)
	}()
	st, err := svc.WaitFor(ctx, "program running", 30*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 && s.State == supervisor.StateRunning })
	if err != nil {
		return err
	}
	if err := waitRecord(ctx, stateFile, "ready", 0); err != nil {
		return err
	}
	// The first epoch after the heap is filled carries it whole (or nearly): the base.
	epoch, err := svc.Checkpoint()
	if err != nil {
		return err
	}
	if _, err := svc.WaitFor(ctx, "standby holds the base epoch", time.Minute, func(s supervisor.Status) bool { return s.StandbyEpoch >= epoch }); err != nil {
		return err
	}
	for round := 1; round <= reps; round++ {
		if err := syscall.Kill(st.Pid, syscall.SIGUSR1); err != nil {
			return fmt.Errorf("signal the program: %w", err)
		}
		if err := waitRecord(ctx, stateFile, "done", round); err != nil {
			return err
		}
		epoch, err := svc.Checkpoint()
		if err != nil {
			return err
		}
		acked, err := svc.WaitFor(ctx, "standby acks the epoch", time.Minute, func(s supervisor.Status) bool { return s.StandbyEpoch >= epoch })
		if err != nil {
			return err
		}
		if acked.LastShipFull {
			return fmt.Errorf("epoch %d was shipped whole (a resync): no delta to measure", epoch)
		}
		row.Shipped = append(row.Shipped, acked.LastShippedBytes)
		row.FullImage = acked.ImageBytes
	}
	return nil
}

// waitRecord waits until the program's record file says what and round.
func waitRecord(ctx context.Context, path, what string, round int) error {
	want := fmt.Sprintf("%-5s %010d\n", what, round)
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, _ := os.ReadFile(path)
		if string(got) == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("program record %q, want %q", strings.TrimSpace(string(got)), strings.TrimSpace(want))
		}
		if err := Sleep(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
}

// shippedReport fills the section from the rows measured (pure).
func shippedReport(sec *Section, rows []ShippedRow) {
	sec.Raw = rows
	t := Table{Header: []string{"pages dirtied (N)", "dirtied", "shipped per epoch", "target", "full image", "shipped / full image", "rounds"}}
	shipped := Series{Name: "shipped per epoch", Style: Line}
	target := Series{Name: "target 1.1·N·4 KiB + 64 KiB", Style: Dashed}
	full := Series{Name: "full image set", Style: Dashed}
	for _, r := range rows {
		s := Median(kib(r.Shipped))
		tk, fk := float64(r.TargetByte)/1024, float64(r.FullImage)/1024
		t.Rows = append(t.Rows, []string{fmt.Sprint(r.Pages), FormatValue(float64(r.Pages)*4, "KiB"), FormatValue(s, "KiB"),
			FormatValue(tk, "KiB"), FormatValue(fk, "KiB"), fmt.Sprintf("%.4f", Ratio(s, fk)), fmt.Sprint(len(r.Shipped))})
		x := float64(r.Pages)
		shipped.Points = append(shipped.Points, Point{x, s})
		target.Points = append(target.Points, Point{x, tk})
		full.Points = append(full.Points, Point{x, fk})
		verdict := fmt.Sprintf("target <= %.0f KiB: met", tk)
		if s > tk {
			verdict = fmt.Sprintf("target <= %.0f KiB: not met", tk)
		}
		sec.Figures = append(sec.Figures, Figure{Name: fmt.Sprintf("bytes shipped per epoch, N = %d pages dirtied in a 100 MiB heap", r.Pages),
			Value: s, Baseline: fk, Unit: "KiB", BaselineName: "full image", Verdict: verdict})
	}
	sec.Tables = append(sec.Tables, t)
	sec.Plots = append(sec.Plots, NamedPlot{File: "shipped.svg", Plot: Plot{
		Title: "Bytes shipped per epoch vs pages dirtied", XLabel: "pages dirtied per epoch (N, 4 KiB each)", YLabel: "KiB per epoch",
		XLog: true, YLog: true, Series: []Series{shipped, target, full}}})
}
