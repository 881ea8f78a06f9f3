package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/stats"

	"github.com/ftrun/ftrun/checkpoint"
)

// CLIDump is one `criu dump --leave-running` of the tree at pid into dir, with the
// options ftrun gives CRIU (established TCP, file locks, cgroups in soft mode): the
// baseline a user would get from the CRIU command line. It returns the frozen time
// CRIU measured (stats-dump) and the wall time of the command.
func CLIDump(ctx context.Context, pid int, dir string) (frozen, total time.Duration, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, 0, fmt.Errorf("criu dump dir: %w", err)
	}
	t0 := time.Now()
	out, err := exec.CommandContext(ctx, "criu", "dump", "-t", strconv.Itoa(pid), "-D", dir, "--leave-running", "--tcp-established",
		"--file-locks", "--manage-cgroups=soft", "-v4", "-o", "dump.log").CombinedOutput()
	total = time.Since(t0)
	if err != nil {
		return 0, 0, fmt.Errorf("criu dump -t %d: %w: %s %v", pid, err, out, checkpoint.ErrorLines(filepath.Join(dir, "dump.log"), 3))
	}
	d, err := os.Open(dir)
	if err != nil {
		return 0, 0, err
	}
	defer d.Close()
	ds, err := stats.CriuGetDumpStats(d)
	if err != nil {
		return 0, 0, fmt.Errorf("criu stats-dump: %w", err)
	}
	return time.Duration(ds.GetFrozenTime()) * time.Microsecond, total, nil
}
