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
func Incremental(ctx context.Context, env Env) (sec Section, err error) {
	mb, reps := 512, 5
	if env.Quick {
		mb, reps = 64, 3
	}
	row := FrozenRow{DataMB: mb}
	sec = Section{About: fmt.Sprintf("redis-server under `ftrun run --incremental auto` (checkpoints only on demand) is filled with DEBUG POPULATE "+
		"to %d MB and checkpointed once (the full parent). Then %d times: SETRANGE rewrites 16 bytes of random keys, one per 1 %% of the "+
		"image's pages, and ftrun takes a checkpoint (incremental: frozen time from `ftrun status`); the keys are rewritten again and "+
		"`criu dump --leave-running` dumps the same process in full (frozen time from CRIU's stats-dump). Medians. The total time of the "+
		"incremental checkpoint includes making the set standalone (its unchanged pages copied from the parent, off the frozen time).", mb, reps)}
	defer func() { incrementalReport(&sec, row) }()

	svc, addr, err := onDemandRedis(ctx, env, "-incremental", "--incremental", "auto", "--full-every", "1000")
	if err != nil {
		return sec, err
	}
	if err := Populate(ctx, "", addr, mb); err != nil {
		return sec, err
	}
	c, err := DialRedis("", addr, 10*time.Second)
	if err != nil {
		return sec, err
	}
	defer c.Close()
	var parent FrozenRow
	if err := frozenFtrun(ctx, svc, &parent); err != nil {
		return sec, err
	}
	keys := mb * 1000
	for i := 0; i < reps; i++ {
		writes := int(parent.ImageMiB * 256 / 100) // 1 % of the image's pages
		if err := rewriteKeys(c, keys, writes); err != nil {
			return sec, err
		}
		before, err := svc.Status()
		if err != nil {
			return sec, err
		}
		if err := frozenFtrun(ctx, svc, &row); err != nil {
			return sec, err
		}
		after, err := svc.Status()
		if err != nil {
			return sec, err
		}
		if after.IncrementalCheckpoints != before.IncrementalCheckpoints+1 {
			return sec, fmt.Errorf("checkpoint %d was not incremental: this kernel has no dirty-page tracking ftrun can use (see `ftrun check`)", i+1)
		}
		if err := rewriteKeys(c, keys, writes); err != nil {
			return sec, err
		}
		if err := frozenCLI(ctx, svc, filepath.Join(env.Scratch, fmt.Sprintf("cli-%d", i)), &row); err != nil {
			return sec, err
		}
	}
	env.Logf("%d MB of data (%.0f MiB image), 1 %% of pages written: frozen incremental %.1f ms, full criu dump %.1f ms",
		mb, row.ImageMiB, Median(row.FtrunFrozen), Median(row.CLIFrozen))
	return sec, nil
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

// incrementalReport fills the section from what was measured (pure).
func incrementalReport(sec *Section, r FrozenRow) {
	sec.Raw = r
	if len(r.FtrunFrozen) == 0 || len(r.CLIFrozen) == 0 {
		return
	}
	mf, mc, tf, tc := Median(r.FtrunFrozen), Median(r.CLIFrozen), Median(r.FtrunTotal), Median(r.CLITotal)
	sec.Tables = append(sec.Tables, Table{Header: []string{"data", "image", "frozen: incremental", "frozen: full criu dump", "ratio",
		"total: incremental", "total: full criu dump", "samples"},
		Rows: [][]string{{fmt.Sprintf("%d MB", r.DataMB), FormatValue(r.ImageMiB, "MiB"), FormatValue(mf, "ms"), FormatValue(mc, "ms"),
			fmt.Sprintf("%.2f", Ratio(mf, mc)), FormatValue(tf, "ms"), FormatValue(tc, "ms"), fmt.Sprintf("%d + %d", len(r.FtrunFrozen), len(r.CLIFrozen))}}})
	what := fmt.Sprintf("redis, %.0f MiB image, 1 %% written", r.ImageMiB)
	ratio := Ratio(mf, mc)
	sec.Targets = []TargetResult{Evaluate(TargetIncrementalFrozen.At(what), ratio,
		fmt.Sprintf("%sx (%s / %s)", FormatValue(ratio, ""), FormatValue(mf, "ms"), FormatValue(mc, "ms")), nil)}
	f := Figure{Name: "frozen time, incremental checkpoint, " + what, Value: mf, Baseline: mc, Unit: "ms", BaselineName: "full criu dump"}
	f.Verdict = sec.Targets[0].Short()
	sec.Figures = append(sec.Figures, f)
}
