package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup2"
	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/internal/procfs"
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
	mnt, err := procfs.Cgroup2Mount()
	if err != nil || mnt != "" {
		return mnt, err
	}
	return "", fmt.Errorf("%w (cgroup mode %s): mount one (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`) or boot with systemd.unified_cgroup_hierarchy", ErrNoCgroup2, CgroupMode())
}

// Cgroup is a service's own cgroup2 group.
type Cgroup struct {
	Mount string // the cgroup2 mountpoint
	Group string // path below Mount, e.g. /ftrun/redis
	// Placement is how Group was chosen (under a systemd unit, or at CgroupRoot).
	Placement Placement
	m         *cgroup2.Manager
}

// SystemdView is what ftrun can see of a systemd service it may be running as.
type SystemdView struct {
	// InvocationID is $INVOCATION_ID, which systemd sets for every service process.
	InvocationID string
	// Own is ftrun's cgroup2 path (the "0::" line of /proc/self/cgroup).
	Own string
	// Delegated: the unit's group carries the trusted.delegate xattr that systemd
	// (since 251) sets on the group of a unit with Delegate=yes.
	Delegated bool
}

// Placement is where the program's cgroup goes, and where ftrun itself goes first.
type Placement struct {
	Group string // the program's group below the cgroup2 mount
	Self  string // a leaf group ftrun moves itself into first ("": it stays)
	Unit  string // the systemd unit's own group ("": not a delegated service)
	Note  string // why a systemd unit was not used, worth a warning ("": nothing to say)
}

// Groups below a delegated unit's own group (UNIT/supervisor, UNIT/program/NAME).
const (
	unitSupervisorGroup = "supervisor"
	unitProgramGroup    = "program"
)

// ChoosePlacement decides where a service's program lives. Under systemd, a unit
// with Delegate=yes hands ftrun its own cgroup subtree: the program goes to
// UNIT/program/NAME, so the unit's MemoryMax=, CPUQuota= and accounting cover it and
// `systemctl status` lists it. NAME keeps apart the programs of a standby that took
// over several services in one unit. ftrun moves itself to the sibling UNIT/supervisor
// first: cgroup2 lets only leaves hold processes once a group hands controllers to
// its children, and systemd's own DelegateSubgroup= (254) uses the same shape.
// Without systemd, or without delegation, the program goes to CgroupRoot/NAME,
// outside any unit, as a group nobody else manages.
func ChoosePlacement(name string, sd SystemdView) Placement {
	outside := Placement{Group: filepath.Join(CgroupRoot, name)}
	if sd.InvocationID == "" {
		return outside
	}
	unit, self := sd.Own, sd.Own
	if filepath.Base(unit) == unitSupervisorGroup {
		// A restarted ftrun is put back into the unit's group by systemd; this is
		// for one that systemd itself placed in the subgroup (DelegateSubgroup=).
		unit = filepath.Dir(unit)
	}
	if !strings.HasSuffix(unit, ".service") {
		outside.Note = fmt.Sprintf("INVOCATION_ID is set but ftrun's cgroup %q is no service's: the program goes to %q", sd.Own, outside.Group)
		return outside
	}
	if !sd.Delegated {
		outside.Note = fmt.Sprintf("the systemd unit's cgroup %q is not delegated to ftrun: the program goes to %q, outside the unit, "+
			"so the unit's MemoryMax=, CPUQuota= and accounting do not cover it (fix: Delegate=yes in the unit; systemd older than 251 does not mark delegation)", unit, outside.Group)
		return outside
	}
	p := Placement{Unit: unit, Group: filepath.Join(unit, unitProgramGroup, name)}
	if self == unit {
		p.Self = filepath.Join(unit, unitSupervisorGroup)
	}
	return p
}

// DetectSystemd reads what ChoosePlacement needs from the environment, /proc and the
// cgroup filesystem mounted at mnt.
func DetectSystemd(mnt string) SystemdView {
	sd := SystemdView{InvocationID: os.Getenv("INVOCATION_ID")}
	if sd.InvocationID == "" {
		return sd
	}
	data, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return sd
	}
	sd.Own = ownCgroup2(string(data))
	unit := sd.Own
	if filepath.Base(unit) == unitSupervisorGroup {
		unit = filepath.Dir(unit)
	}
	buf := make([]byte, 8)
	if n, err := unix.Getxattr(filepath.Join(mnt, unit), "trusted.delegate", buf); err == nil {
		sd.Delegated = string(buf[:n]) == "1"
	}
	return sd
}

// ownCgroup2 picks the cgroup2 path out of /proc/self/cgroup ("0::/path").
func ownCgroup2(procCgroup string) string {
	for _, line := range strings.Split(procCgroup, "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	return ""
}

// OpenCgroup creates (or reuses) the group for service name, placed by
// ChoosePlacement; under a delegated unit it first moves ftrun into UNIT/supervisor.
// The intermediate UNIT/program holds no process, so cgroup2's rule that only leaves
// may hold processes (once controllers are handed down) is kept.
func OpenCgroup(name string) (*Cgroup, error) {
	mnt, err := cgroup2Mount()
	if err != nil {
		return nil, err
	}
	pl := ChoosePlacement(name, DetectSystemd(mnt))
	if pl.Self != "" {
		if err := moveSelf(mnt, pl.Self); err != nil {
			return nil, err
		}
	}
	return openPlaced(mnt, pl)
}

// openPlaced creates (or reuses) the program's group of pl.
func openPlaced(mnt string, pl Placement) (*Cgroup, error) {
	m, err := cgroup2.NewManager(mnt, pl.Group, &cgroup2.Resources{})
	if err != nil {
		return nil, fmt.Errorf("create cgroup %q under %q: %w", pl.Group, mnt, err)
	}
	return &Cgroup{Mount: mnt, Group: pl.Group, Placement: pl, m: m}, nil
}

// moveSelf puts the whole ftrun process (every thread) into group, creating it.
func moveSelf(mnt, group string) error {
	dir := filepath.Join(mnt, group)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create cgroup %q for ftrun itself: %w", group, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0); err != nil {
		return fmt.Errorf("move ftrun into cgroup %q: %w", group, err)
	}
	return nil
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
	for _, p := range procfs.Tree(pid) {
		if err := os.WriteFile(filepath.Join(c.Path(), "cgroup.procs"), []byte(strconv.Itoa(p)), 0); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("move restored process %d from cgroup %q to %q: %w", p, src, c.Group, err)
		}
	}
	return nil
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

// Frozen reports whether the group is frozen (cgroup.freeze is 1).
func (c *Cgroup) Frozen() bool {
	data, err := os.ReadFile(filepath.Join(c.Path(), "cgroup.freeze"))
	return err == nil && len(data) > 0 && data[0] == '1'
}

// cgroupYardLinks is what a CRIU cgroup yard for dumps holds: CRIU reads each
// hierarchy the program is in from YARD/unified (cgroup2) and YARD/NAME (name=NAME),
// and, given no yard, mounts a fresh cgroup file system for each on every dump,
// several milliseconds of the program's frozen time. The links point at the
// hierarchies mounted on this host (pure: from mountinfo's text); only the ones
// CRIU is asked to dump need be there (checkpoint.Options.OwnCgroupsOnly).
func cgroupYardLinks(mountinfo, cg2 string) map[string]string {
	links := map[string]string{"unified": cg2}
	for _, line := range strings.Split(mountinfo, "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, pf := strings.Fields(post), strings.Fields(pre)
		if len(f) < 3 || f[0] != "cgroup" || len(pf) < 5 {
			continue
		}
		for _, o := range strings.Split(f[2], ",") {
			if name, ok := strings.CutPrefix(o, "name="); ok && name != "" {
				links[name] = pf[4]
			}
		}
	}
	return links
}

// makeCgroupYard makes (or refreshes) the dump yard in dir: a directory of symlinks
// (see cgroupYardLinks); withSystemd asks for name=systemd too. It returns "" when it
// cannot, and CRIU then mounts its own.
func makeCgroupYard(dir, cg2 string, withSystemd bool) string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	links := cgroupYardLinks(string(data), cg2)
	if _, ok := links["systemd"]; withSystemd && !ok {
		return ""
	}
	if err := os.RemoveAll(dir); err != nil {
		return ""
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return ""
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			return ""
		}
	}
	return dir
}
