package checkpoint

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	criu "github.com/checkpoint-restore/go-criu/v8"
	"github.com/checkpoint-restore/go-criu/v8/rpc"
	"github.com/checkpoint-restore/go-criu/v8/stats"
)

// Log files CRIU writes into the image directory.
const (
	DumpLog    = "dump.log"
	RestoreLog = "restore.log"
)

// ErrCriuFailed wraps every failure reported by CRIU itself.
var ErrCriuFailed = errors.New("criu failed")

// Options is everything ftrun asks of CRIU, in ftrun's words. It is turned into
// rpc.CriuOpts in exactly one place (rpcOpts), so what ftrun asks is easy to audit.
type Options struct {
	// ImagesDir is where the image set is written (dump) or read (restore).
	ImagesDir string
	// WorkDir receives CRIU's log and statistics; empty means ImagesDir. A restore uses
	// its own, so the committed image set it reads stays exactly as it was verified.
	WorkDir string
	// Pid is the host PID of the root of the tree to dump.
	Pid int
	// LeaveRunning keeps the program running after a dump (every epoch but the last).
	LeaveRunning bool
	// TCPEstablished dumps (or restores) established TCP connections.
	TCPEstablished bool
	// TCPClose restores established connections closed: right for a local restore after
	// a crash, where the peer already saw the old socket die. On a dump it leaves them
	// out (no repair mode, no network lock), and the set can then only be restored
	// with TCPClose.
	TCPClose bool
	// NetworkLockSkip leaves the network alone during dump/restore.
	NetworkLockSkip bool
	// CgroupRoot, on restore, is the cgroup2 group the tree is put back into (and the
	// same path in systemd's name=systemd v1 hierarchy, which mirrors cgroup2 on
	// hybrid hosts). Without it CRIU puts the tree back where it was dumped, which
	// holds only where the restoring ftrun is placed as the dumping one was; a
	// checkpoint taken outside systemd and restored by a unit, or taken on a primary
	// and restored on a standby placed otherwise, needs the group named. v1 resource
	// controllers are left as dumped: their groups are systemd's or the host's.
	CgroupRoot string
	// SystemdMirror puts the tree at CgroupRoot in the name=systemd v1 hierarchy too:
	// only under a systemd unit, which owns that mirror. Elsewhere nobody keeps it in
	// step, and a root given there nests a level deeper with every restore (CRIU
	// then walks the whole grown tree in every later dump).
	SystemdMirror bool
	// OwnCgroupsOnly, on dump, takes only the program's own groups into the images:
	// the cgroup2 hierarchy (and name=systemd with SystemdMirror). The v1 resource
	// controllers it sits at the root of are the host's, and CRIU would walk and dump
	// every group of each (tens of milliseconds, frozen); a restore leaves the program
	// in those of the ftrun restoring it, as a fresh start does.
	OwnCgroupsOnly bool
	// CgroupYard, on dump, is a directory where CRIU finds the cgroup hierarchies it
	// dumps already mounted (unified, and NAME for name=NAME), rather than mounting
	// each anew while the program is frozen.
	CgroupYard string
	// Inherit hands CRIU replacements for resources outside the tree, keyed the way
	// CRIU names them in the images ("pipe:[123]").
	Inherit map[string]*os.File
	// Timeout bounds how long CRIU may take to freeze the tree (0: CRIU's default).
	Timeout time.Duration
	// LogLevel is CRIU's verbosity (0-4); 0 means 4, since error reports quote the log.
	LogLevel int
	// PostDump runs after CRIU has dumped the tree and before it lets it run again, so
	// whatever it captures (the program's state files) matches the dumped memory.
	PostDump func() error
	// PreDump runs when CRIU starts a dump, before it stops the program.
	PreDump func() error
	// Restored lists the tasks a restore has made so far (the program's cgroup): at
	// the restore's deadline they are described and killed with CRIU.
	Restored func() []int
	// MountNS says the program has a mount namespace of its own (supervisor/container):
	// the mounts it shares with the host are external to the images (CRIU finds them
	// as bind mounts it can see), and a restore builds the namespace over the host's
	// root, where the program's files are.
	MountNS bool
	// TrackMem, on dump, has CRIU save what it needs to know which pages the next
	// dump may leave in this one, and with ParentDir (the parent set, relative to
	// ImagesDir) leave in the parent every page not written since its dump. On a kernel
	// without soft-dirty bits the tracking is userfaultfd write-protection (package
	// dirty): the tasks' mappings must have been registered, or they are dumped whole.
	// The set is incremental until Materialize makes it standalone.
	TrackMem  bool
	ParentDir string
	// Enter, when set, runs CRIU from inside the program's network namespace (it calls
	// its argument on a thread set into that namespace): CRIU must share the program's
	// network namespace, or it would try to dump the namespace itself.
	Enter func(func() error) error
}

// enter runs fn through o.Enter, or directly.
func (o Options) enter(fn func() error) error {
	if o.Enter == nil {
		return fn()
	}
	return o.Enter(fn)
}

func ptr[T any](v T) *T { return &v }

// rpcOpts converts Options for CRIU; imagesFd is the open images directory.
func (o Options) rpcOpts(imagesFd, workFd int, logFile string) *rpc.CriuOpts {
	level := o.LogLevel
	if level == 0 {
		level = 4
	}
	opts := &rpc.CriuOpts{
		ImagesDirFd:       ptr(int32(imagesFd)),
		LogFile:           ptr(logFile),
		LogLevel:          ptr(int32(level)),
		FileLocks:         ptr(true),
		ManageCgroups:     ptr(true),
		ManageCgroupsMode: ptr(rpc.CriuCgMode_SOFT),
	}
	if workFd >= 0 {
		opts.WorkDirFd = ptr(int32(workFd))
	}
	if o.Pid != 0 {
		opts.Pid = ptr(int32(o.Pid))
	}
	if o.LeaveRunning {
		opts.LeaveRunning = ptr(true)
	}
	if o.TCPEstablished {
		opts.TcpEstablished = ptr(true)
		// A connection still in a listener's accept queue (or half-open) would fail the
		// whole dump; its client retries, a lost epoch is worse.
		opts.TcpSkipInFlight = ptr(true)
	}
	if o.MountNS {
		opts.AutoExtMnt, opts.ExtMasters, opts.ExtSharing = ptr(true), ptr(true), ptr(true)
		if o.Pid == 0 {
			opts.Root = ptr("/")
		}
	}
	if o.TCPClose {
		opts.TcpClose = ptr(true)
	}
	if o.NetworkLockSkip {
		opts.NetworkLock = ptr(rpc.CriuNetworkLockMethod_SKIP)
	}
	if o.CgroupRoot != "" {
		// CRIU names the cgroup2 hierarchy "" (a nil Ctrl would mean every hierarchy).
		opts.CgRoot = []*rpc.CgroupRoot{{Ctrl: ptr(""), Path: ptr(o.CgroupRoot)}}
		if o.SystemdMirror {
			opts.CgRoot = append(opts.CgRoot, &rpc.CgroupRoot{Ctrl: ptr("name=systemd"), Path: ptr(o.CgroupRoot)})
		}
	}
	if o.CgroupYard != "" && o.Pid != 0 {
		opts.CgroupYard = ptr(o.CgroupYard)
	}
	if o.OwnCgroupsOnly && o.Pid != 0 {
		// CRIU names the cgroup2 hierarchy "" in /proc/PID/cgroup's controller field.
		opts.CgroupDumpController = []string{""}
		if o.SystemdMirror {
			opts.CgroupDumpController = append(opts.CgroupDumpController, "name=systemd")
		}
	}
	if o.TrackMem && o.Pid != 0 {
		opts.TrackMem = ptr(true)
		if o.ParentDir != "" {
			opts.ParentImg = ptr(o.ParentDir)
		}
	}
	if o.Timeout > 0 {
		opts.Timeout = ptr(uint32((o.Timeout + time.Second - 1) / time.Second))
	}
	return opts
}

// DumpStats is what CRIU measured of one dump.
type DumpStats struct {
	// Frozen is how long the program was stopped: what a client of it notices.
	Frozen time.Duration `json:"frozen_ns"`
	// Freezing is the part of Frozen spent stopping all tasks.
	Freezing      time.Duration `json:"freezing_ns"`
	Memdump       time.Duration `json:"memdump_ns"`
	Memwrite      time.Duration `json:"memwrite_ns"`
	PagesScanned  uint64        `json:"pages_scanned"`
	PagesWritten  uint64        `json:"pages_written"`
	Total         time.Duration `json:"total_ns"`
	CriuImageSize int64         `json:"image_bytes"`
}

// Criu runs CRIU operations through its RPC interface.
type Criu struct {
	// Path is the criu binary; empty means "criu" from PATH.
	Path string
	// DumpTimeout and RestoreTimeout bound one dump and one restore; an overrun kills
	// CRIU (0: DefaultDumpTimeout, DefaultRestoreTimeout).
	DumpTimeout, RestoreTimeout time.Duration

	lockOnce sync.Once
	lock     rpc.CriuNetworkLockMethod

	kdatOnce sync.Once
	kdat     string // where CRIU keeps its kernel probe, or why it cannot
}

// KernelProbe says where CRIU keeps its kernel probe between runs, or why it probes
// the kernel anew each time. The first call (and the first dump or restore) mounts
// the cache's tmpfs when needed (see KeepKernelProbe).
func (c *Criu) KernelProbe() string {
	c.kdatOnce.Do(func() {
		path, err := KeepKernelProbe(c.Path)
		if err != nil {
			c.kdat = "not cached: " + err.Error()
			return
		}
		c.kdat = "cached in " + path
	})
	return c.kdat
}

// lockMethod is how CRIU holds TCP connections still while it dumps or restores them:
// nftables when this CRIU has it (in-process), else iptables (an iptables-restore run
// to lock and another to unlock, which the program spends frozen).
func (c *Criu) lockMethod() rpc.CriuNetworkLockMethod {
	c.lockOnce.Do(func() {
		c.lock = rpc.CriuNetworkLockMethod_IPTABLES
		if (Prober{Path: c.Path}).NFTablesLock() {
			c.lock = rpc.CriuNetworkLockMethod_NFTABLES
		}
	})
	return c.lock
}

// opts converts o for this CRIU. A dump (o.Pid set) takes the lock that freezes the
// program for less, given its connections (cheaperLock), or none when it leaves them
// out (TCPClose); a restore takes nftables where CRIU has it.
func (c *Criu) opts(o Options, imagesFd, workFd int, logFile string) *rpc.CriuOpts {
	opts := o.rpcOpts(imagesFd, workFd, logFile)
	switch {
	case opts.NetworkLock != nil || !o.TCPEstablished:
	case o.TCPClose && o.Pid != 0:
		opts.NetworkLock = ptr(rpc.CriuNetworkLockMethod_SKIP) // nothing to hold still
	case o.Pid != 0 && c.lockMethod() == rpc.CriuNetworkLockMethod_NFTABLES:
		lock := c.lockMethod()
		if n, err := establishedTCP(o.Pid, nftablesFrom); err == nil {
			lock = cheaperLock(n, true)
		}
		opts.NetworkLock = ptr(lock)
	default:
		opts.NetworkLock = ptr(c.lockMethod())
	}
	return opts
}

func (c *Criu) client() *criu.Criu {
	c.KernelProbe()
	cl := criu.MakeCriu()
	if c.Path != "" {
		cl.SetCriuPath(c.Path)
	}
	return cl
}

// Dump checkpoints the tree rooted at o.Pid into o.ImagesDir.
func (c *Criu) Dump(o Options) (DumpStats, error) {
	start := time.Now()
	dir, err := os.Open(o.ImagesDir)
	if err != nil {
		return DumpStats{}, fmt.Errorf("open image dir: %w", err)
	}
	defer dir.Close()
	work, err := openWork(o)
	if err != nil {
		return DumpStats{}, err
	}
	defer closeWork(work)
	cl := c.client()
	var nfy criu.Notify
	if o.PostDump != nil || o.PreDump != nil {
		nfy = dumpNotify{pre: o.PreDump, post: o.PostDump}
	}
	dump := func() error { return cl.Dump(c.opts(o, int(dir.Fd()), workFd(work), DumpLog), nfy) }
	logPath := filepath.Join(o.logDir(), DumpLog)
	if err := o.enter(func() error { return c.withDeadline("dump", logPath, cl, nil, dump) }); err != nil {
		return DumpStats{}, criuError("dump", o, DumpLog, err)
	}
	st := DumpStats{Total: time.Since(start)}
	if ds, err := stats.CriuGetDumpStats(dir); err == nil {
		st.Frozen = time.Duration(ds.GetFrozenTime()) * time.Microsecond
		st.Freezing = time.Duration(ds.GetFreezingTime()) * time.Microsecond
		st.Memdump = time.Duration(ds.GetMemdumpTime()) * time.Microsecond
		st.Memwrite = time.Duration(ds.GetMemwriteTime()) * time.Microsecond
		st.PagesScanned = ds.GetPagesScanned()
		st.PagesWritten = ds.GetPagesWritten()
	}
	st.CriuImageSize = dirSize(o.ImagesDir)
	return st, nil
}

func (o Options) logDir() string {
	if o.WorkDir != "" {
		return o.WorkDir
	}
	return o.ImagesDir
}

func openWork(o Options) (*os.File, error) {
	if o.WorkDir == "" {
		return nil, nil
	}
	f, err := os.Open(o.WorkDir)
	if err != nil {
		return nil, fmt.Errorf("open CRIU work dir: %w", err)
	}
	return f, nil
}

func closeWork(f *os.File) {
	if f != nil {
		f.Close()
	}
}

func workFd(f *os.File) int {
	if f == nil {
		return -1
	}
	return int(f.Fd())
}

// dumpNotify runs PreDump as CRIU starts, and PostDump while the tree is still frozen.
type dumpNotify struct {
	criu.NoNotify
	pre, post func() error
}

func (n dumpNotify) PreDump() error {
	if n.pre == nil {
		return nil
	}
	return n.pre()
}

func (n dumpNotify) PostDump() error {
	if n.post == nil {
		return nil
	}
	return n.post()
}

// restoreNotify learns the PID of the restored root: go-criu's Restore does not return it.
type restoreNotify struct {
	criu.NoNotify
	pid int
}

func (n *restoreNotify) PostRestore(pid int32) error {
	n.pid = int(pid)
	return nil
}

// Restore brings back the tree in o.ImagesDir as a child of this process and returns
// the host PID of its root.
func (c *Criu) Restore(o Options) (int, error) {
	dir, err := os.Open(o.ImagesDir)
	if err != nil {
		return 0, fmt.Errorf("open image dir: %w", err)
	}
	defer dir.Close()
	work, err := openWork(o)
	if err != nil {
		return 0, err
	}
	defer closeWork(work)
	cl := c.client()
	for key, f := range o.Inherit {
		cl.AddInheritFd(key, f)
	}
	n := &restoreNotify{}
	opts := c.opts(o, int(dir.Fd()), workFd(work), RestoreLog)
	// Restored tasks become children of ftrun (siblings of the swrk helper), so ftrun can
	// wait for them like for a program it started.
	opts.RstSibling = ptr(true)
	restore := func() error { return cl.Restore(opts, n) }
	logPath := filepath.Join(o.logDir(), RestoreLog)
	if err := o.enter(func() error { return c.withDeadline("restore", logPath, cl, o.Restored, restore) }); err != nil {
		return 0, criuError("restore", o, RestoreLog, err)
	}
	if n.pid == 0 {
		return 0, fmt.Errorf("%w: restore reported no pid (see %s)", ErrCriuFailed, filepath.Join(o.logDir(), RestoreLog))
	}
	return n.pid, nil
}

// CriuError is a failed CRIU operation, told in CRIU's own Error lines.
type CriuError struct {
	Op    string   // "dump" or "restore"
	Lines []string // Error lines of CRIU's log: the first (the cause) and the last
	Log   string   // the log file (it may live in a directory that is removed later)
	Err   error    // what go-criu reported
	Full  bool     // the images' filesystem was (nearly) full when the operation failed
}

func (e *CriuError) Error() string {
	if len(e.Lines) > 0 {
		return fmt.Sprintf("criu %s failed: %s", e.Op, strings.Join(e.Lines, " | "))
	}
	return fmt.Sprintf("criu %s failed: %s", e.Op, oneLine(e.Err.Error()))
}

func (e *CriuError) Unwrap() []error {
	errs := []error{ErrCriuFailed, e.Err}
	if e.Full {
		return append(errs, ErrNoSpace)
	}
	for _, l := range e.Lines {
		// "No space", not the whole message: on a full disk CRIU's own log line is
		// often cut short ("No space lef") by the very lack of space it reports.
		if strings.Contains(l, "No space") {
			return append(errs, ErrNoSpace)
		}
	}
	return errs
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// criuError turns a failed RPC into one line that carries CRIU's own Error lines.
func criuError(op string, o Options, logName string, err error) error {
	if _, ok := errors.AsType[*DeadlineError](err); ok {
		return err
	}
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("%w: %s: criu binary not found: %v (run scripts/setup, or pass --criu PATH)", ErrCriuMissing, op, err)
	}
	log := filepath.Join(o.logDir(), logName)
	full := op == "dump" && (nearlyFull(o.ImagesDir) || nearlyFull(o.logDir()))
	return &CriuError{Op: op, Lines: ErrorLines(log, 3), Log: log, Err: err, Full: full}
}

// fullBelow is the free space under which a failed CRIU run is put down to a full disk:
// CRIU may die of ENOSPC before its log says so, when the log shares that disk.
const fullBelow = 1 << 20

func nearlyFull(dir string) bool {
	var fs syscall.Statfs_t
	if syscall.Statfs(dir, &fs) != nil {
		return false
	}
	return fs.Bavail*uint64(fs.Bsize) < fullBelow
}

// benignErrors are Error lines CRIU prints on every run here, or after every failed
// restore (its cgroup helper losing its peer), and that explain nothing.
var benignErrors = []string{
	"Can't setup RLIMIT_NOFILE",
	"cgroupd: recv req error",
}

// ErrorLines returns max "Error" lines of a CRIU log: the first, which names the cause
// (CRIU's later lines are its callers giving up: "Can't open vma", "Restoring FAILED"),
// and the last max-1, without CRIU's timestamps and without the lines it prints on
// every run.
func ErrorLines(path string, max int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
scan:
	for sc.Scan() {
		line := sc.Text()
		i := strings.Index(line, "Error (")
		if i < 0 {
			continue
		}
		for _, b := range benignErrors {
			if strings.Contains(line, b) {
				continue scan
			}
		}
		out = append(out, strings.TrimSpace(line[i:]))
		if len(out) > max && max > 0 {
			out = slices.Delete(out, 1, 2) // keep the first, drop the oldest after it
		}
	}
	if max <= 0 {
		return nil
	}
	return out
}

func dirSize(dir string) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var n int64
	for _, e := range ents {
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() {
			n += info.Size()
		}
	}
	return n
}
