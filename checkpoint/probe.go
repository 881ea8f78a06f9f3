package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/checkpoint/dirty"
)

// MinVersion is the oldest CRIU ftrun accepts: 3.x cannot dump on current kernels
// ("vdso: Unexpected rt vDSO area bounds") and reads of 4.x images need 4.x.
var MinVersion = Version{4, 1, 0}

// ErrCriuMissing is returned when no usable criu binary is found.
var ErrCriuMissing = errors.New("criu not found")

// Version is a CRIU release number.
type Version struct{ Major, Minor, Sub int }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Sub) }

// Less orders versions.
func (v Version) Less(o Version) bool {
	if v.Major != o.Major {
		return v.Major < o.Major
	}
	if v.Minor != o.Minor {
		return v.Minor < o.Minor
	}
	return v.Sub < o.Sub
}

// ParseVersion reads the output of `criu --version` ("Version: 4.2.1", maybe "Version: 4.2").
func ParseVersion(out string) (Version, error) {
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), "Version:")
		if !ok {
			continue
		}
		parts := strings.Split(strings.TrimSpace(rest), ".")
		var nums [3]int
		for i := 0; i < len(parts) && i < 3; i++ {
			n, err := strconv.Atoi(parts[i])
			if err != nil {
				return Version{}, fmt.Errorf("parse criu version %q: %w", rest, err)
			}
			nums[i] = n
		}
		if len(parts) < 2 {
			return Version{}, fmt.Errorf("parse criu version %q: want MAJOR.MINOR", rest)
		}
		return Version{nums[0], nums[1], nums[2]}, nil
	}
	return Version{}, fmt.Errorf("no \"Version:\" line in %q", strings.TrimSpace(out))
}

// Finding is one line of a machine probe.
type Finding struct {
	Name     string
	OK       bool
	Required bool   // ftrun run cannot work without it
	Detail   string // what was found
	Fix      string // what to do when !OK
}

// Prober runs CRIU's own checks.
type Prober struct {
	Path    string // criu binary; empty: from PATH
	Timeout time.Duration
}

func (p Prober) run(args ...string) (string, error) {
	path, err := criuBinary(p.Path)
	if err != nil {
		return "", err
	}
	timeout := p.Timeout
	if timeout == 0 {
		timeout = 20 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
		err = fmt.Errorf("%w: %v", ErrCriuMissing, err)
	}
	return out.String(), err
}

// Version runs `criu --version`.
func (p Prober) Version() (Version, error) {
	out, err := p.run("--version")
	if err != nil {
		if errors.Is(err, ErrCriuMissing) {
			return Version{}, err
		}
		return Version{}, fmt.Errorf("criu --version: %w: %s", err, firstLine(out))
	}
	return ParseVersion(out)
}

// Usable checks that CRIU is present, new enough, and that `criu check` passes: the
// precondition of every dump. Its error is one line naming cause and fix.
func (p Prober) Usable() (Version, error) {
	v, err := p.Version()
	if err != nil {
		return v, fmt.Errorf("%w (install CRIU >= %s: run scripts/setup)", err, MinVersion)
	}
	if v.Less(MinVersion) {
		return v, fmt.Errorf("criu %s is too old: ftrun needs >= %s (run scripts/setup to build it)", v, MinVersion)
	}
	if out, err := p.run("check"); err != nil || !LooksGood(out) {
		return v, fmt.Errorf("`criu check` fails: %s (see `criu check -v4`)", firstLine(lastErrorOr(out)))
	}
	return v, nil
}

// LooksGood reports whether `criu check` output says the kernel is fine.
func LooksGood(out string) bool { return strings.Contains(out, "Looks good") }

// Probe returns CRIU findings for `ftrun check`.
func (p Prober) Probe() []Finding {
	var fs []Finding
	v, err := p.Version()
	switch {
	case err != nil:
		fs = append(fs, Finding{Name: "criu", Required: true, Detail: err.Error(),
			Fix: fmt.Sprintf("install CRIU >= %s: run scripts/setup (builds it from Debian's source package)", MinVersion)})
		return fs
	case v.Less(MinVersion):
		fs = append(fs, Finding{Name: "criu", Required: true, Detail: "version " + v.String(),
			Fix: fmt.Sprintf("CRIU >= %s is needed (older ones fail on this kernel): run scripts/setup", MinVersion)})
		return fs
	default:
		fs = append(fs, Finding{Name: "criu", OK: true, Required: true, Detail: "version " + v.String()})
	}
	out, err := p.run("check")
	if err == nil && LooksGood(out) {
		fs = append(fs, Finding{Name: "criu check", OK: true, Required: true, Detail: "Looks good"})
	} else {
		fs = append(fs, Finding{Name: "criu check", Required: true, Detail: firstLine(lastErrorOr(out)),
			Fix: "`criu check -v4` names what is missing: a kernel feature, or (in a chroot or container) the host's whole mount tree"})
	}
	if err := p.SoftDirty(); err == nil {
		fs = append(fs, Finding{Name: "memory dirty tracking", OK: true, Detail: "soft-dirty available: CRIU tracks changed pages (--incremental soft-dirty)"})
	} else {
		fs = append(fs, Finding{Name: "memory dirty tracking", OK: false, Detail: "unavailable (" + err.Error() + ")",
			Fix: "optional: --incremental auto (the default) tracks written pages by write-protection instead where the next line finds it; CONFIG_MEM_SOFT_DIRTY enables CRIU's own tracking"})
	}
	fs = append(fs, writeProtectFinding(dirty.Probe()))
	fs = append(fs, p.netLock())
	if bin, err := criuBinary(p.Path); err == nil {
		dir := kdatDir(bin)
		fs = append(fs, kdatFinding(dir, isTmpfs(dir)))
	}
	vout, _ := p.run("--version")
	fs = append(fs, otherUIDFinding(hasCapability(unix.CAP_SYS_RESOURCE), RlimitsFromProc(vout)))
	return fs
}

// PatchesGitID is the GitID scripts/setup gives a CRIU built with the project's
// patches (scripts/criu-patches); a later set of patches raises its number.
const PatchesGitID = "ftrun-patches-"

// RlimitsFromProc reports whether the CRIU whose `--version` printed out reads a
// task's rlimits from /proc when prlimit64() is refused (the project's first patch).
func RlimitsFromProc(out string) bool { return patchLevel(out) >= 1 }

// UffdWPTracking reports whether the CRIU whose `--version` printed out tracks dirty
// pages by userfaultfd write-protection where soft-dirty bits are missing, as ftrun
// registers it (the project's patch 0003, in the form of patch set 7).
func UffdWPTracking(out string) bool { return patchLevel(out) >= 7 }

// patchLevel is the number of the project's patch set in a `criu --version` output
// (0: not built with them).
func patchLevel(out string) int {
	for _, l := range strings.Split(out, "\n") {
		if n, ok := strings.CutPrefix(strings.TrimSpace(l), "GitID: "+PatchesGitID); ok {
			if v, err := strconv.Atoi(n); err == nil {
				return v
			}
		}
	}
	return 0
}

// UffdWP says why the CRIU at p cannot take incremental dumps tracked by userfaultfd
// write-protection (nil: it can).
func (p Prober) UffdWP() error {
	out, err := p.run("--version")
	if err != nil {
		return fmt.Errorf("criu --version: %w", err)
	}
	if !UffdWPTracking(out) {
		return fmt.Errorf("this CRIU (%s) lacks the project's write-protection patch: run scripts/setup", strings.ReplaceAll(strings.TrimSpace(out), "\n", ", "))
	}
	return nil
}

// hasCapability reports whether ftrun's bounding set holds capability c: root without
// it in the bounding set does not have it either.
func hasCapability(c int) bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return true
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err != nil || mask&(1<<uint(c)) != 0
		}
	}
	return true
}

// otherUIDFinding says whether CRIU can dump a program that runs as another user
// (nginx's workers, memcached -u, postgres): prlimit64() on another user's task needs
// CAP_SYS_RESOURCE, unless CRIU reads the limits from /proc (pure).
func otherUIDFinding(capSysResource, fromProc bool) Finding {
	const name = "programs of other users"
	switch {
	case capSysResource:
		return Finding{Name: name, OK: true, Detail: "CAP_SYS_RESOURCE held: CRIU reads their rlimits"}
	case fromProc:
		return Finding{Name: name, OK: true, Detail: "no CAP_SYS_RESOURCE, but this CRIU reads their rlimits from /proc"}
	}
	return Finding{Name: name, Detail: "no CAP_SYS_RESOURCE in ftrun's bounding set (CapBnd lacks bit 24) and this CRIU has no fallback: " +
		"a program that runs as another user (--user, nginx's www-data workers, memcached -u, postgres) cannot be checkpointed (CRIU: \"Can't get rlimit 0: Operation not permitted\")",
		Fix: "run scripts/setup: it builds CRIU with scripts/criu-patches (rlimits read from /proc/PID/limits); or grant CAP_SYS_RESOURCE to ftrun's host or container"}
}

// kdatFinding says whether CRIU can cache its kernel probe between runs, given the
// cache directory compiled into it and whether that is a tmpfs (pure).
func kdatFinding(dir string, tmpfs bool) Finding {
	const name = "CRIU kernel probe cache"
	mount, why := kdatPlan(dir, tmpfs)
	switch {
	case why == "" && !mount:
		return Finding{Name: name, OK: true, Detail: dir + " is a tmpfs: CRIU probes the kernel once per boot"}
	case why == "":
		return Finding{Name: name, OK: true, Detail: dir + " is not a tmpfs yet: ftrun mounts one there when it first runs CRIU, which then probes the kernel once per boot"}
	}
	return Finding{Name: name, Detail: why + ", so CRIU cannot keep its criu.kdat: every checkpoint and restore probes the kernel anew (tens of milliseconds each)",
		Fix: "optional: run scripts/setup (it builds CRIU with RUNDIR=/run/criu, where ftrun mounts a tmpfs), or mount a tmpfs on /run (systemd does)"}
}

// SoftDirty says why the kernel cannot give CRIU soft-dirty bits (nil: it can).
func (p Prober) SoftDirty() error {
	out, err := p.run("check", "--feature", "mem_dirty_track")
	if err != nil {
		return errors.New(firstLine(lastErrorOr(out)))
	}
	return nil
}

// NFTablesLock reports whether CRIU can lock TCP connections with nftables, in its
// own process, rather than by running iptables-restore twice per dump.
func (p Prober) NFTablesLock() bool { return p.netLock().OK }

// netLock is the finding of CRIU's check of its nftables lock.
func (p Prober) netLock() Finding {
	return netLockFinding(p.run("check", "--feature", "network_lock_nftables"))
}

// netLockFinding is what `criu check --feature network_lock_nftables` (out, err)
// says of the network lock: a check that failed on something else (a chroot's
// partial mount tree, say) says nothing of how CRIU was built, and the finding says
// so rather than blame the build.
func netLockFinding(out string, err error) Finding {
	switch why := firstLine(lastErrorOr(out)); {
	case err == nil:
		return Finding{Name: "network lock", OK: true, Detail: "nftables, in-process"}
	case strings.Contains(out, "libnftables"):
		return Finding{Name: "network lock", Detail: "iptables (CRIU built without libnftables)",
			Fix: "optional: scripts/setup rebuilds CRIU with libnftables; iptables-restore adds ~45 ms per TCP connection to the frozen time of a program with several"}
	default:
		return Finding{Name: "network lock", Detail: "unknown: CRIU's check of it failed (" + why + ")",
			Fix: "see `criu check` above"}
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// lastErrorOr returns the last CRIU "Error"/"Warn" line of out, or out itself.
func lastErrorOr(out string) string {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := lines[i]
		if (strings.Contains(l, "Error") || strings.Contains(l, "Warn")) && !strings.Contains(l, "Can't setup RLIMIT_NOFILE") &&
			!strings.Contains(l, "non-tempfs") && !strings.Contains(l, "libnftables") {
			return l
		}
	}
	return out
}

// writeProtectFinding reports the kernel's other way to tell written pages, the one
// that needs no soft-dirty bits: ftrun's probe runs it on memory of its own.
func writeProtectFinding(r dirty.ProbeResult) Finding {
	if !r.OK {
		return Finding{Name: "write-protect tracking", Detail: r.Detail,
			Fix: "optional: Linux 6.7 or later has userfaultfd async write-protection and PAGEMAP_SCAN"}
	}
	return Finding{Name: "write-protect tracking", OK: true,
		Detail: fmt.Sprintf("%s (protect %s, scan %s; --incremental uffd-wp uses it)", r.Detail,
			r.Protect.Round(time.Microsecond), r.Scan.Round(time.Microsecond))}
}
