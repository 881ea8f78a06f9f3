package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strconv"
	"time"
)

// Incremental measures how long an incremental checkpoint freezes redis when about 1 %
// of its pages were written since the one before, next to a full `criu dump` of the
// same process in the same run: the frozen time follows what changed, not the size.
// Each size in env.IncrementalMB (default 512 MB; 64 MB quick) gets a redis of its own.
func Incremental(ctx context.Context, env Env) (sec Section, err error) {
	sizes, reps := env.IncrementalMB, 5
	if len(sizes) == 0 {
		sizes = []int{512}
		if env.Quick {
			sizes, reps = []int{64}, 3
		}
	}
	var rows []FrozenRow
	sec = Section{About: fmt.Sprintf("For each size, redis-server under `ftrun run --incremental auto` (checkpoints only on demand) is filled "+
		"with DEBUG POPULATE and checkpointed once (the full parent), then three times more (not measured) so that its store holds sets of the "+
		"layout redis settles in, which a commit writes over. Then %d times: SETRANGE rewrites 16 bytes of random keys, one per 1 %% "+
		"of the image's pages, and ftrun takes a checkpoint (incremental: frozen time from `ftrun status`); the keys are rewritten again and "+
		"`criu dump --leave-running` dumps the same process in full (frozen time from CRIU's stats-dump). Medians. The total time of the "+
		"incremental checkpoint includes making the set standalone (off the frozen time): over the pages file of the set the store drops, "+
		"copying only the pages written since it. Bytes written are CRIU's images and those copies, next to the memory the checkpoint found changed. "+
		"Sizes: `ftrun bench --only incremental --incremental-mb 512,4096`.", reps)}
	defer func() { incrementalReport(&sec, rows) }()
	for _, mb := range sizes {
		row, err := incrementalAt(ctx, env, mb, reps)
		rows = append(rows, row) // the report leaves out a size without samples
		if err != nil {
			return sec, fmt.Errorf("%d MB: %w", mb, err)
		}
	}
	return sec, nil
}

// incrementalAt measures one size.
func incrementalAt(ctx context.Context, env Env, mb, reps int) (row FrozenRow, err error) {
	row.DataMB = mb
	svc, addr, err := onDemandRedis(ctx, env, fmt.Sprintf("-incremental-%d", mb), "--incremental", "auto", "--full-every", "1000")
	if err != nil {
		return row, err
	}
	defer func() { _ = svc.Stop(30 * time.Second) }()
	if err := Populate(ctx, "", addr, mb); err != nil {
		return row, err
	}
	c, err := DialRedis("", addr, 10*time.Second)
	if err != nil {
		return row, err
	}
	defer c.Close()
	var parent FrozenRow
	if err := frozenFtrun(ctx, svc, &parent); err != nil {
		return row, err
	}
	keys := mb * 1000
	writes := int(parent.ImageMiB * 256 / 100) // 1 % of the image's pages
	// Three checkpoints, not measured, until the store holds sets of the layout
	// redis settles in after the populate (its allocator still maps and returns
	// pages for a while), which an incremental checkpoint writes over.
	for range 3 {
		if err := rewriteKeys(c, keys, writes); err != nil {
			return row, err
		}
		if err := frozenFtrun(ctx, svc, &FrozenRow{}); err != nil {
			return row, err
		}
	}
	for i := 0; i < reps; i++ {
		if err := rewriteKeys(c, keys, writes); err != nil {
			return row, err
		}
		before, err := svc.Status()
		if err != nil {
			return row, err
		}
		if err := frozenFtrun(ctx, svc, &row); err != nil {
			return row, err
		}
		after, err := svc.Status()
		if err != nil {
			return row, err
		}
		if after.IncrementalCheckpoints != before.IncrementalCheckpoints+1 {
			return row, fmt.Errorf("checkpoint %d was not incremental: this kernel has no dirty-page tracking ftrun can use (see `ftrun check`)", i+1)
		}
		if after.WrittenOver > before.WrittenOver {
			row.FtrunWritten = append(row.FtrunWritten, float64(after.LastCheckpointWritten)/(1<<20))
			row.FtrunChanged = append(row.FtrunChanged, float64(after.LastCheckpointChanged)/(1<<20))
		}
		if err := rewriteKeys(c, keys, writes); err != nil {
			return row, err
		}
		if err := frozenCLI(ctx, svc, filepath.Join(env.Scratch, fmt.Sprintf("cli-%d-%d", mb, i)), &row); err != nil {
			return row, err
		}
	}
	env.Logf("%d MB of data (%.0f MiB image), 1 %% of pages written: frozen incremental %.1f ms, full criu dump %.1f ms; incremental wrote %.1f MiB for %.1f MiB changed",
		mb, row.ImageMiB, Median(row.FtrunFrozen), Median(row.CLIFrozen), Median(row.FtrunWritten), Median(row.FtrunChanged))
	return row, nil
}

// rewriteKeys overwrites 16 bytes in place of n random keys of DEBUG POPULATE's
// key:0 .. key:keys-1 (1000-byte values: about one page each).
func rewriteKeys(c *RESP, keys, n int) error {
	v := fmt.Sprintf("%016x", rand.Uint64())
	for range n {
		if _, err := c.Do(10*time.Second, "SETRANGE", "key:"+strconv.Itoa(rand.IntN(keys)), strconv.Itoa(rand.IntN(984)), v); err != nil {
			return fmt.Errorf("SETRANGE: %w", err)
		}
	}
	return nil
}

// incrementalReport fills the section from what was measured (pure): the ratio
// target at every size, and the absolute one from 4 GiB of data up.
func incrementalReport(sec *Section, rows []FrozenRow) {
	sec.Raw = rows
	t := Table{Header: []string{"data", "image", "frozen: incremental", "frozen: full criu dump", "ratio",
		"total: incremental", "total: full criu dump", "samples", "written: incremental", "memory changed", "written / changed"}}
	for _, r := range rows {
		if len(r.FtrunFrozen) == 0 || len(r.CLIFrozen) == 0 {
			continue
		}
		mf, mc, tf, tc := Median(r.FtrunFrozen), Median(r.CLIFrozen), Median(r.FtrunTotal), Median(r.CLITotal)
		mw, mch := Median(r.FtrunWritten), Median(r.FtrunChanged)
		t.Rows = append(t.Rows, []string{fmt.Sprintf("%d MB", r.DataMB), FormatValue(r.ImageMiB, "MiB"), FormatValue(mf, "ms"), FormatValue(mc, "ms"),
			fmt.Sprintf("%.2f", Ratio(mf, mc)), FormatValue(tf, "ms"), FormatValue(tc, "ms"), fmt.Sprintf("%d + %d", len(r.FtrunFrozen), len(r.CLIFrozen)),
			FormatValue(mw, "MiB"), FormatValue(mch, "MiB"), fmt.Sprintf("%.2f", Ratio(mw, mch))})
		what := fmt.Sprintf("redis, %.0f MiB image, 1 %% written", r.ImageMiB)
		if len(r.FtrunWritten) > 0 {
			// The allowance of 64 KiB is CRIU's images besides the pages.
			ratio := Ratio(mw-1.0/16, mch)
			sec.Targets = append(sec.Targets, Evaluate(TargetIncrementalBytes.At(what), ratio,
				fmt.Sprintf("%sx (%s written for %s changed)", FormatValue(ratio, ""), FormatValue(mw, "MiB"), FormatValue(mch, "MiB")), nil))
			sec.Figures = append(sec.Figures, Figure{Name: "bytes written, incremental checkpoint, " + what, Value: mw, Baseline: mch, Unit: "MiB",
				BaselineName: "memory changed since the one before"})
		}
		ratio := Ratio(mf, mc)
		res := Evaluate(TargetIncrementalFrozen.At(what), ratio,
			fmt.Sprintf("%sx (%s / %s)", FormatValue(ratio, ""), FormatValue(mf, "ms"), FormatValue(mc, "ms")), nil)
		sec.Targets = append(sec.Targets, res)
		f := Figure{Name: "frozen time, incremental checkpoint, " + what, Value: mf, Baseline: mc, Unit: "ms", BaselineName: "full criu dump"}
		f.Verdict = res.Short()
		if r.DataMB >= 4096 {
			abs := Evaluate(TargetIncrementalFrozenLarge.At(what), mf, FormatValue(mf, "ms"), nil)
			sec.Targets = append(sec.Targets, abs)
			f.Verdict += "; " + abs.Short()
		}
		sec.Figures = append(sec.Figures, f)
	}
	if len(t.Rows) > 0 {
		sec.Tables = append(sec.Tables, t)
	}
}
