package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
)

// writtenFiles lists the regular files that the processes pids hold open for writing
// (not append-only logs, not their own /dev, /proc, /sys) outside roots (--sync).
// Their content is not in the checkpoint: a restore runs the program's memory of the
// epoch over whatever they hold by then.
func writtenFiles(pids []int, roots []string) []string {
	seen := map[string]bool{}
	for _, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			link, err := os.Readlink(filepath.Join(dir, e.Name()))
			if err != nil || seen[link] {
				continue
			}
			info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
			if err != nil {
				continue
			}
			if fi, err := os.Stat(link); err == nil && fi.Mode().IsRegular() && isWrittenFile(link, fdFlags(string(info)), roots) {
				seen[link] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// fdFlags reads the "flags:" line of a /proc/PID/fdinfo file (octal).
func fdFlags(info string) int {
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(l, "flags:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			return int(n)
		}
	}
	return 0
}

// isWrittenFile is the pure rule of writtenFiles for one open file.
func isWrittenFile(path string, flags int, roots []string) bool {
	const accmode, wronly, append = 0o3, 0o1, 0o2000
	switch {
	case !strings.HasPrefix(path, "/") || strings.HasSuffix(path, " (deleted)"):
		return false
	case flags&accmode == 0: // read-only
		return false
	case flags&accmode == wronly && flags&append != 0: // a log: CRIU takes it as it is
		return false
	case checkpoint.UnderAny(path, []string{"/dev", "/proc", "/sys"}):
		return false
	}
	return !checkpoint.UnderAny(path, roots)
}

// noteUnsynced warns, once per file, of files the program writes outside --sync.
func (s *Supervisor) noteUnsynced(files []string) {
	for _, f := range files {
		if s.warnedUnsynced[f] {
			continue
		}
		if s.warnedUnsynced == nil {
			s.warnedUnsynced = map[string]bool{}
		}
		s.warnedUnsynced[f] = true
		s.log.Warn("the program writes a file outside --sync: its checkpoints do not hold it, and once it changes "+
			"a restore would run older memory over newer data, so such restores are refused (name it, or its directory, with --sync)", "file", f)
	}
}

// staleFile returns the first of files modified after since (the epoch's dump began):
// restoring that epoch would run the program's older memory over newer data.
func staleFile(files []string, since time.Time) (string, time.Time) {
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && fi.ModTime().After(since) {
			return f, fi.ModTime()
		}
	}
	return "", time.Time{}
}
