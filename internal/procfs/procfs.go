// Package procfs reads the few things ftrun needs from /proc: a process's one-letter
// state, its threads, its tree of descendants, the sockets it holds, the cgroup2 mount, and
// mountinfo's escaped paths. Each was written again by every package that needed it
// (the supervisor's stopped check and cgroups, CRIU's deadline, the network locks,
// the container's mounts, the bench's scratch clean-up); the standard library has
// none of them, and the libraries that do (prometheus/procfs, moby/sys/mountinfo)
// would bring a great deal for a few small functions.
package procfs

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// State is the one-letter state of a process (R, S, D, T, t, Z, ...).
func State(pid int) (byte, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	// The command name may hold spaces and parentheses: the state follows the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return 0, fmt.Errorf("malformed stat of process %d", pid)
	}
	return s[i+2], nil
}

// Stopped says whether a state is stopped: by a signal (T) or by a tracer (t).
func Stopped(state byte) bool { return state == 'T' || state == 't' }

// maxTree bounds a walk of descendants, in case /proc changes under it.
const maxTree = 4096

// Threads are the thread IDs of process pid, pid itself among them.
func Threads(pid int) ([]int, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, t := range tasks {
		if tid, err := strconv.Atoi(t.Name()); err == nil {
			out = append(out, tid)
		}
	}
	return out, nil
}

// Children are pid's children: those of each of its threads.
func Children(pid int) []int {
	var out []int
	tids, _ := Threads(pid)
	for _, tid := range tids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, tid))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if c, err := strconv.Atoi(f); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

// Tree is pid and its descendants, parents first. Processes that end during the
// walk are simply left out.
func Tree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out) && len(out) < maxTree; i++ {
		for _, c := range Children(out[i]) {
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	return out
}

// Cgroup2Mount finds where this process's mountinfo has a cgroup2 mount: "" without
// one.
func Cgroup2Mount() (string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		// mountinfo: id parent dev root mountpoint opts ... - fstype source opts
		pre, post, found := strings.Cut(line, " - ")
		if !found {
			continue
		}
		if fields := strings.Fields(post); len(fields) > 0 && fields[0] == "cgroup2" {
			if pf := strings.Fields(pre); len(pf) >= 5 {
				return Unescape(pf[4]), nil
			}
		}
	}
	return "", nil
}

// Sockets calls visit with the inode of each socket pid holds open, once per
// descriptor, until visit returns false.
func Sockets(pid int, visit func(ino uint64) bool) error {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		l, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed meanwhile
		}
		rest, ok := strings.CutPrefix(l, "socket:[")
		if !ok {
			continue
		}
		if ino, err := strconv.ParseUint(strings.TrimSuffix(rest, "]"), 10, 64); err == nil && !visit(ino) {
			return nil
		}
	}
	return nil
}

// Unescape undoes mountinfo's octal escapes (\040 for a space).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
