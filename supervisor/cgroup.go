package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup2"
	"golang.org/x/sys/unix"
)

// CgroupRoot is the parent of every service's cgroup, relative to the cgroup2 mount.
// A variable only so that tests can give each host simulated on one machine its own.
var CgroupRoot = "/ftrun"

// ErrNoCgroup2 is returned on hosts with only cgroup v1: ftrun needs cgroup2 to freeze
// and kill a whole tree atomically (cgroup.freeze, cgroup.kill).
var ErrNoCgroup2 = errors.New("no cgroup2 hierarchy")

// CgroupMode names the host's cgroup setup for `ftrun check` and errors.
func CgroupMode() string {
	switch cgroups.Mode() {
	case cgroups.Unified:
		return "v2"
	case cgroups.Hybrid:
		return "hybrid"
	case cgroups.Legacy:
		return "v1"
	}
	return "unavailable"
}

// cgroup2Mount finds the cgroup2 mountpoint: /sys/fs/cgroup on v2 hosts, usually
// /sys/fs/cgroup/unified on hybrid ones (v1 controllers, v2 for grouping).
func cgroup2Mount() (string, error) {
	if cgroups.Mode() == cgroups.Unified {
		return "/sys/fs/cgroup", nil
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		// mountinfo: ... mountpoint ... - fstype source opts
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		if fields := strings.Fields(post); len(fields) > 0 && fields[0] == "cgroup2" {
			if pf := strings.Fields(pre); len(pf) >= 5 {
				return pf[4], nil
			}
		}
	}
	return "", fmt.Errorf("%w (cgroup mode %s): mount one (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`) or boot with systemd.unified_cgroup_hierarchy", ErrNoCgroup2, CgroupMode())
}

// Cgroup is a service's own cgroup2 group.
type Cgroup struct {
	Mount string // the cgroup2 mountpoint
	Group string // path below Mount, e.g. /ftrun/redis
	m     *cgroup2.Manager
}

// OpenCgroup creates (or reuses) the group for service name.
func OpenCgroup(name string) (*Cgroup, error) {
	mnt, err := cgroup2Mount()
	if err != nil {
		return nil, err
	}
	group := filepath.Join(CgroupRoot, name)
	m, err := cgroup2.NewManager(mnt, group, &cgroup2.Resources{})
	if err != nil {
		return nil, fmt.Errorf("create cgroup %q under %q: %w", group, mnt, err)
	}
	return &Cgroup{Mount: mnt, Group: group, m: m}, nil
}

// Gather moves the tree of a restored program into this group when CRIU put it back
// into the group its image names (which differs only where this host's groups live
// under another root: several hosts simulated on one machine, --cgroup-root).
func (c *Cgroup) Gather(pid int) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return err
	}
	var src string
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			src = rest
		}
	}
	if src == "" || src == c.Group {
		return nil
	}
	// Only the restored tree: another host's program may share the source group.
	for _, p := range processTree(pid) {
		if err := os.WriteFile(filepath.Join(c.Path(), "cgroup.procs"), []byte(strconv.Itoa(p)), 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("move restored process %d from cgroup %q to %q: %w", p, src, c.Group, err)
		}
	}
	return nil
}

// processTree is pid and its descendants, parents first.
func processTree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", out[i]))
		for _, t := range tasks {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", out[i], t.Name()))
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil && !slices.Contains(out, c) {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// Path is the group's directory.
func (c *Cgroup) Path() string { return filepath.Join(c.Mount, c.Group) }

// Open returns the group's directory, for placing a child into it at clone time.
func (c *Cgroup) Open() (*os.File, error) {
	return os.Open(c.Path())
}

// Procs lists the processes in the group.
func (c *Cgroup) Procs() ([]int, error) {
	pids, err := c.m.Procs(true)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list procs of cgroup %q: %w", c.Group, err)
	}
	out := make([]int, len(pids))
	for i, p := range pids {
		out[i] = int(p)
	}
	return out, nil
}

// Kill SIGKILLs every process in the group at once.
func (c *Cgroup) Kill() error {
	if err := c.m.Kill(); err != nil {
		return fmt.Errorf("kill cgroup %q: %w", c.Group, err)
	}
	return nil
}

// Freeze stops every process in the group (used to fence a program that lost its lease).
func (c *Cgroup) Freeze() error {
	if err := c.m.Freeze(); err != nil {
		return fmt.Errorf("freeze cgroup %q: %w", c.Group, err)
	}
	return nil
}

// Thaw undoes Freeze.
func (c *Cgroup) Thaw() error {
	if err := c.m.Thaw(); err != nil {
		return fmt.Errorf("thaw cgroup %q: %w", c.Group, err)
	}
	return nil
}

// Renew removes the (empty) group and creates it again. On this kernel a group that
// has seen cgroup.kill SIGKILLs every child cloned into it (CLONE_INTO_CGROUP) from
// then on, so after a kill ftrun starts over with a new group of the same name.
func (c *Cgroup) Renew() error {
	if err := c.Delete(); err != nil {
		return err
	}
	m, err := cgroup2.NewManager(c.Mount, c.Group, &cgroup2.Resources{})
	if err != nil {
		return fmt.Errorf("recreate cgroup %q: %w", c.Group, err)
	}
	c.m = m
	return nil
}

// Delete removes the (empty) group.
func (c *Cgroup) Delete() error {
	if err := c.m.Delete(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove cgroup %q: %w", c.Group, err)
	}
	return nil
}
