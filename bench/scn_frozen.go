package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// FrozenRow is one program size of the frozen-time scenario: every sample, in ms.
type FrozenRow struct {
	DataMB      int       `json:"data_mb"`
	ImageMiB    float64   `json:"image_mib"`
	FtrunFrozen []float64 `json:"ftrun_frozen_ms"`
	CLIFrozen   []float64 `json:"cli_frozen_ms"`
	FtrunTotal  []float64 `json:"ftrun_total_ms"`
	CLITotal    []float64 `json:"cli_total_ms"`
	// Of an incremental checkpoint: what it wrote into the store, and the memory it
	// found changed since the one before (MiB).
	FtrunWritten []float64 `json:"ftrun_written_mib,omitempty"`
	FtrunChanged []float64 `json:"ftrun_changed_mib,omitempty"`
}

// Frozen measures how long a checkpoint freezes redis, and how long it takes in all,
// as the program grows: ftrun's checkpoint (`ftrun checkpoint` on the control socket;
// CRIU through its RPC, checksummed manifest, atomic rename) alternating with the
// `criu dump --leave-running` command line on the same process.
func Frozen(ctx context.Context, env Env) (sec Section, err error) {
	sizes, reps := []int{16, 64, 256, 512}, 5
	if env.Quick {
		sizes, reps = []int{16, 64}, 3
	}
	var rows []FrozenRow
	sec = Section{About: fmt.Sprintf("redis-server under `ftrun run` (checkpoints only on demand) is filled with DEBUG POPULATE to each size; "+
		"then, %d times and alternating who goes first, ftrun takes a checkpoint (`ftrun checkpoint`; frozen and total time from `ftrun status`) "+
		"and `criu dump --leave-running --tcp-established --file-locks --manage-cgroups=soft` dumps the same process "+
		"(frozen time from CRIU's stats-dump, total = wall time of the command). Both dump in full (`--incremental off`: "+
		"the incremental scenario measures the other kind). ftrun's background fsync is let finish before the next dump "+
		"and is not part of either figure. Medians.", reps)}
	defer func() { frozenReport(&sec, rows) }()

	svc, addr, err := onDemandRedis(ctx, env, "-frozen", "--incremental", "off")
	if err != nil {
		return sec, err
	}
	for _, mb := range sizes {
		if err := Populate(ctx, "", addr, mb); err != nil {
			return sec, err
		}
		row := FrozenRow{DataMB: mb}
		for i := 0; i < reps; i++ {
			steps := []func() error{
				func() error { return frozenFtrun(ctx, svc, &row) },
				func() error {
					return frozenCLI(ctx, svc, filepath.Join(env.Scratch, fmt.Sprintf("cli-%d-%d", mb, i)), &row)
				},
			}
			if i%2 == 1 {
				steps[0], steps[1] = steps[1], steps[0]
			}
			for _, step := range steps {
				if err := step(); err != nil {
					rows = append(rows, row)
					return sec, err
				}
			}
		}
		rows = append(rows, row)
		env.Logf("%d MB of data (%.0f MiB image): frozen ftrun %.1f ms, CLI %.1f ms; total ftrun %.1f ms, CLI %.1f ms",
			mb, row.ImageMiB, Median(row.FtrunFrozen), Median(row.CLIFrozen), Median(row.FtrunTotal), Median(row.CLITotal))
	}
	return sec, nil
}

// onDemandRedis runs redis-server on the host's loopback under `ftrun run`, with
// checkpoints only on demand, and returns it once it runs, with its address.
func onDemandRedis(ctx context.Context, env Env, label string, flags ...string) (*Service, string, error) {
	port, err := FreePort()
	if err != nil {
		return nil, "", err
	}
	data, err := env.Dir("redis")
	if err != nil {
		return nil, "", err
	}
	svc, err := env.RunFtrun(env.Name(label), "", append([]string{"--interval", "1h", "--discard", "--no-final-checkpoint"}, flags...),
		RedisArgs("127.0.0.1", port, data)...)
	if err != nil {
		return nil, "", err
	}
	if _, err := svc.WaitFor(ctx, "redis running", 30*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 && s.State == supervisor.StateRunning }); err != nil {
		return nil, "", err
	}
	return svc, fmt.Sprintf("127.0.0.1:%d", port), nil
}

func frozenFtrun(ctx context.Context, svc *Service, row *FrozenRow) error {
	epoch, err := svc.Checkpoint()
	if err != nil {
		return err
	}
	st, err := svc.Status()
	if err != nil {
		return err
	}
	row.FtrunFrozen = append(row.FtrunFrozen, Ms(st.LastFrozen))
	row.FtrunTotal = append(row.FtrunTotal, Ms(st.LastCheckpointTime))
	row.ImageMiB = float64(st.ImageBytes) / (1 << 20)
	// The fsync that makes it durable runs behind the epoch loop: let it finish so it
	// does not slow the next dump, whoever takes it.
	_, err = svc.WaitFor(ctx, "checkpoint durable", 2*time.Minute, func(s supervisor.Status) bool { return s.DurableEpoch >= epoch })
	return err
}

func frozenCLI(ctx context.Context, svc *Service, dir string, row *FrozenRow) error {
	st, err := svc.Status()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	frozen, total, err := CLIDump(ctx, st.Pid, dir)
	if err != nil {
		return err
	}
	row.CLIFrozen = append(row.CLIFrozen, Ms(frozen))
	row.CLITotal = append(row.CLITotal, Ms(total))
	return nil
}

// frozenReport fills the section from the rows measured (pure).
func frozenReport(sec *Section, rows []FrozenRow) {
	sec.Raw = rows
	t := Table{Header: []string{"data", "image", "frozen: ftrun", "frozen: criu CLI", "ratio", "total: ftrun", "total: criu CLI", "ratio", "samples"}}
	fF := Series{Name: "ftrun frozen", Style: Line}
	cF := Series{Name: "criu CLI frozen", Style: Line}
	fT := Series{Name: "ftrun total", Style: Dashed}
	cT := Series{Name: "criu CLI total", Style: Dashed}
	var last *FrozenRow
	for i := range rows {
		r := &rows[i]
		if len(r.FtrunFrozen) == 0 || len(r.CLIFrozen) == 0 {
			continue
		}
		last = r
		mf, mc, tf, tc := Median(r.FtrunFrozen), Median(r.CLIFrozen), Median(r.FtrunTotal), Median(r.CLITotal)
		t.Rows = append(t.Rows, []string{fmt.Sprintf("%d MB", r.DataMB), FormatValue(r.ImageMiB, "MiB"),
			FormatValue(mf, "ms"), FormatValue(mc, "ms"), fmt.Sprintf("%.2f", Ratio(mf, mc)),
			FormatValue(tf, "ms"), FormatValue(tc, "ms"), fmt.Sprintf("%.2f", Ratio(tf, tc)),
			fmt.Sprintf("%d + %d", len(r.FtrunFrozen), len(r.CLIFrozen))})
		fF.Points = append(fF.Points, Point{r.ImageMiB, mf})
		cF.Points = append(cF.Points, Point{r.ImageMiB, mc})
		fT.Points = append(fT.Points, Point{r.ImageMiB, tf})
		cT.Points = append(cT.Points, Point{r.ImageMiB, tc})
	}
	sec.Tables = append(sec.Tables, t)
	sec.Plots = append(sec.Plots, NamedPlot{File: "frozen.svg", Plot: Plot{
		Title: "Checkpoint of redis: frozen and total time vs image size", XLabel: "image size (MiB)", YLabel: "time (ms), median",
		Series: []Series{fF, cF, fT, cT}}})
	if last == nil {
		return
	}
	sec.Targets = frozenTargets(rows)
	what := fmt.Sprintf("redis, %.0f MiB image", last.ImageMiB)
	ff := Figure{Name: "frozen time, " + what, Value: Median(last.FtrunFrozen), Baseline: Median(last.CLIFrozen), Unit: "ms", BaselineName: "criu dump CLI"}
	ff.Verdict = sec.Targets[len(sec.Targets)-1].Short()
	ft := Figure{Name: "total checkpoint time, " + what, Value: Median(last.FtrunTotal), Baseline: Median(last.CLITotal), Unit: "ms", BaselineName: "criu dump CLI"}
	if ft.Ratio() <= 1.1 {
		ft.Verdict = "target <= 1.1: met"
	} else {
		ft.Verdict = "target <= 1.1: not met"
	}
	sec.Figures = append(sec.Figures, ff, ft)
}
