package delta

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ftrun/ftrun/internal/criutest"
)

// BenchmarkDelta dumps a program with a ~100 MB heap that dirties N pages per epoch and
// reports what one epoch ships against the full image set of the same run, and the
// target a delta must meet (the dirtied pages plus 10% plus 64 KiB of stack and libc).
// An op is one epoch: dirty, dump, diff against the previous epoch, apply.
func BenchmarkDelta(b *testing.B) {
	criutest.Require(b, "gcc")
	for _, n := range []int{64, 1024, 4096} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			p := startDirtier(b, 100, n)
			root := b.TempDir()
			prev := filepath.Join(root, "0")
			p.dump(prev)
			idx, err := BuildIndex(prev)
			must(b, err)
			full := dirBytes(b, prev)
			var shipped int64
			var diffTime, applyTime time.Duration
			b.ResetTimer()
			for i := 1; i <= b.N; i++ {
				p.MustDirty()
				dir := filepath.Join(root, fmt.Sprint(i))
				p.dump(dir)
				start := time.Now()
				d, next, err := Diff(idx, dir, uint64(i-1), uint64(i))
				must(b, err)
				diffTime += time.Since(start)
				shipped += d.Bytes()
				out := filepath.Join(root, fmt.Sprintf("applied-%d", i))
				must(b, os.Mkdir(out, 0o700))
				start = time.Now()
				must(b, Apply(prev, d, out))
				applyTime += time.Since(start)
				must(b, os.RemoveAll(prev))
				must(b, os.RemoveAll(out))
				prev, idx = dir, next
			}
			b.StopTimer()
			b.ReportMetric(float64(shipped)/float64(b.N)/1024, "shipped-KiB")
			b.ReportMetric(float64(full)/1024, "full-KiB")
			b.ReportMetric(1.1*float64(n)*4+64, "target-KiB")
			b.ReportMetric(float64(diffTime.Milliseconds())/float64(b.N), "diff-ms")
			b.ReportMetric(float64(applyTime.Milliseconds())/float64(b.N), "apply-ms")
		})
	}
}
