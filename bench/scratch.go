package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/internal/procfs"
)

// MountsUnder lists the mount points at or below dir in a /proc/self/mountinfo text,
// deepest first (pure).
func MountsUnder(mountinfo, dir string) []string {
	dir = filepath.Clean(dir)
	var out []string
	for _, line := range strings.Split(mountinfo, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := procfs.Unescape(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// removeScratch detaches whatever is mounted below dir, then removes dir. A CRIU
// restore that was killed half-way can leave its cgroup yard mounted in a state
// directory, and removing files through that mount would reach the host's cgroups.
func removeScratch(dir string) error {
	read := func() []string {
		data, _ := os.ReadFile("/proc/self/mountinfo")
		return MountsUnder(string(data), dir)
	}
	for _, m := range read() {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	if left := read(); len(left) > 0 {
		return fmt.Errorf("scratch %s left in place: still mounted below it: %s", dir, strings.Join(left, ", "))
	}
	return os.RemoveAll(dir)
}
