package checkpoint

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
)

func TestRPCOpts(t *testing.T) {
	cases := []struct {
		name   string
		opts   Options
		workFd int
		check  func(t *testing.T, o *rpc.CriuOpts)
	}{
		{name: "defaults", opts: Options{}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if o.LogLevel == nil || *o.LogLevel != 4 {
				t.Errorf("default log level = %v, want 4", o.LogLevel)
			}
			if o.WorkDirFd != nil {
				t.Errorf("work dir fd set without a work dir: %d", *o.WorkDirFd)
			}
			for name, set := range map[string]bool{
				"Pid": o.Pid != nil, "LeaveRunning": o.LeaveRunning != nil, "TcpEstablished": o.TcpEstablished != nil,
				"TcpClose": o.TcpClose != nil, "NetworkLock": o.NetworkLock != nil, "Timeout": o.Timeout != nil,
				"RstSibling": o.RstSibling != nil,
			} {
				if set {
					t.Errorf("%s set by default", name)
				}
			}
		}},
		{name: "images and log", opts: Options{}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if o.GetImagesDirFd() != 7 || o.GetLogFile() != DumpLog {
				t.Errorf("images fd %d, log %q; want 7, %q", o.GetImagesDirFd(), o.GetLogFile(), DumpLog)
			}
			if !o.GetFileLocks() || !o.GetManageCgroups() || o.GetManageCgroupsMode() != rpc.CriuCgMode_SOFT {
				t.Errorf("file locks %v, manage cgroups %v mode %v", o.GetFileLocks(), o.GetManageCgroups(), o.GetManageCgroupsMode())
			}
		}},
		{name: "explicit log level", opts: Options{LogLevel: 1}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if o.GetLogLevel() != 1 {
				t.Errorf("log level = %d, want 1", o.GetLogLevel())
			}
		}},
		{name: "work dir fd", opts: Options{WorkDir: "/somewhere"}, workFd: 9, check: func(t *testing.T, o *rpc.CriuOpts) {
			if o.WorkDirFd == nil || *o.WorkDirFd != 9 {
				t.Errorf("work dir fd = %v, want 9", o.WorkDirFd)
			}
		}},
		{name: "work dir fd 0 is a real fd", opts: Options{}, workFd: 0, check: func(t *testing.T, o *rpc.CriuOpts) {
			if o.WorkDirFd == nil || *o.WorkDirFd != 0 {
				t.Errorf("work dir fd = %v, want 0", o.WorkDirFd)
			}
		}},
		{name: "no cgroup root by default", opts: Options{}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if len(o.CgRoot) != 0 {
				t.Errorf("cgroup roots %v without CgroupRoot", o.CgRoot)
			}
		}},
		{name: "cgroup root: cgroup2 only, never every hierarchy", opts: Options{CgroupRoot: "/ftrun/x"}, workFd: -1,
			check: func(t *testing.T, o *rpc.CriuOpts) { checkCgRoots(t, o, "=/ftrun/x") }},
		{name: "cgroup root under a unit: cgroup2 and name=systemd", opts: Options{CgroupRoot: "/s.slice/x.service/program/x", SystemdMirror: true}, workFd: -1,
			check: func(t *testing.T, o *rpc.CriuOpts) {
				checkCgRoots(t, o, "=/s.slice/x.service/program/x", "name=systemd=/s.slice/x.service/program/x")
			}},
		{name: "pid", opts: Options{Pid: 4321}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if o.Pid == nil || *o.Pid != 4321 {
				t.Errorf("pid = %v, want 4321", o.Pid)
			}
		}},
		{name: "leave running", opts: Options{LeaveRunning: true}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if !o.GetLeaveRunning() {
				t.Error("LeaveRunning not set")
			}
		}},
		{name: "tcp established", opts: Options{TCPEstablished: true}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if !o.GetTcpEstablished() || o.TcpClose != nil {
				t.Errorf("tcp established %v, tcp close %v", o.GetTcpEstablished(), o.TcpClose)
			}
		}},
		{name: "tcp close", opts: Options{TCPEstablished: true, TCPClose: true}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if !o.GetTcpEstablished() || !o.GetTcpClose() {
				t.Errorf("tcp established %v, tcp close %v", o.GetTcpEstablished(), o.GetTcpClose())
			}
		}},
		{name: "network lock skip", opts: Options{NetworkLockSkip: true}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if o.NetworkLock == nil || *o.NetworkLock != rpc.CriuNetworkLockMethod_SKIP {
				t.Errorf("network lock = %v, want SKIP", o.NetworkLock)
			}
		}},
		{name: "timeout whole seconds", opts: Options{Timeout: 3 * time.Second}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if o.GetTimeout() != 3 {
				t.Errorf("timeout = %d, want 3", o.GetTimeout())
			}
		}},
		{name: "timeout rounded up", opts: Options{Timeout: 2500 * time.Millisecond}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if o.GetTimeout() != 3 {
				t.Errorf("timeout = %d, want 3", o.GetTimeout())
			}
		}},
		{name: "sub-second timeout is 1s, not none", opts: Options{Timeout: time.Millisecond}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if o.Timeout == nil || *o.Timeout != 1 {
				t.Errorf("timeout = %v, want 1", o.Timeout)
			}
		}},
		{name: "own cgroups only", opts: Options{Pid: 42, OwnCgroupsOnly: true}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if got := o.GetCgroupDumpController(); len(got) != 1 || got[0] != "" {
				t.Errorf("dump controllers %q, want only cgroup2's \"\"", got)
			}
		}},
		{name: "own cgroups under a unit", opts: Options{Pid: 42, OwnCgroupsOnly: true, SystemdMirror: true}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if got := o.GetCgroupDumpController(); len(got) != 2 || got[0] != "" || got[1] != "name=systemd" {
				t.Errorf("dump controllers %q, want cgroup2's and name=systemd", got)
			}
		}},
		{name: "every cgroup by default", opts: Options{Pid: 42}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if got := o.GetCgroupDumpController(); got != nil {
				t.Errorf("dump controllers %q, want none named (all)", got)
			}
		}},
		{name: "one nanosecond over", opts: Options{Timeout: time.Second + 1}, workFd: -1, check: func(t *testing.T, o *rpc.CriuOpts) {
			if o.GetTimeout() != 2 {
				t.Errorf("timeout = %d, want 2", o.GetTimeout())
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, tc.opts.rpcOpts(7, tc.workFd, DumpLog))
		})
	}
}

func TestRPCOptsEverything(t *testing.T) {
	o := Options{ImagesDir: "/img", WorkDir: "/work", Pid: 12, LeaveRunning: true, TCPEstablished: true,
		TCPClose: true, NetworkLockSkip: true, Timeout: 10 * time.Second, LogLevel: 2}.rpcOpts(3, 4, RestoreLog)
	if o.GetImagesDirFd() != 3 || o.GetWorkDirFd() != 4 || o.GetLogFile() != RestoreLog || o.GetLogLevel() != 2 ||
		o.GetPid() != 12 || !o.GetLeaveRunning() || !o.GetTcpEstablished() || !o.GetTcpClose() ||
		o.GetNetworkLock() != rpc.CriuNetworkLockMethod_SKIP || o.GetTimeout() != 10 {
		t.Errorf("rpcOpts = %v", o)
	}
}

// sampleDumpLog is shaped like a real CRIU dump.log at log level 4.
const sampleDumpLog = `(00.000000) Version: 4.2.1 (gitid 0)
(00.000012) Running on host Linux 6.18
(00.041901) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.050000) Warn  (criu/kerndat.c:890): Can't keep kdat cache on non-tempfs
(00.100100) Error (criu/proc_parse.c:120): first real error
(00.100200) Dumping task 1234
(00.100300) Error (criu/files-reg.c:900): second real error: ./relative/path (x) y
(00.100400) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.100500) Error (criu/cr-dump.c:2093): Dumping FAILED.
(00.100600) Something mentions Error but is not an Error line
`

func TestErrorLines(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, DumpLog)
	if err := os.WriteFile(path, []byte(sampleDumpLog), 0o600); err != nil {
		t.Fatal(err)
	}
	all := []string{
		"Error (criu/proc_parse.c:120): first real error",
		"Error (criu/files-reg.c:900): second real error: ./relative/path (x) y",
		"Error (criu/cr-dump.c:2093): Dumping FAILED.",
	}
	cases := []struct {
		name string
		path string
		max  int
		want []string
	}{
		{"all of them", path, 10, all},
		{"exactly max", path, 3, all},
		{"the first and the last", path, 2, []string{all[0], all[2]}},
		{"the first", path, 1, all[:1]},
		{"none wanted", path, 0, nil},
		{"missing log", filepath.Join(dir, "nope.log"), 3, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := ErrorLines(tc.path, tc.max)
			if !slices.Equal(got, tc.want) && !(len(got) == 0 && len(tc.want) == 0) {
				t.Errorf("ErrorLines(max %d) = %q, want %q", tc.max, got, tc.want)
			}
			for _, l := range got {
				if strings.HasPrefix(l, "(") || strings.Contains(l, "RLIMIT_NOFILE") {
					t.Errorf("line %q kept a timestamp or a benign error", l)
				}
			}
		})
	}
}

// A restore that cannot open a file the program mapped: CRIU's first Error line names
// the file, the later ones only give up, and its cgroup helper's complaint is noise.
func TestErrorLinesKeepTheCause(t *testing.T) {
	path := filepath.Join(t.TempDir(), RestoreLog)
	log := `(00.068034)      1: Error (criu/files-reg.c:2353): Can't open file tmp/hsperfdata_root/1 on restore: No such file or directory
(00.068036)      1: Error (criu/files-reg.c:2267): Can't open file tmp/hsperfdata_root/1: No such file or directory
(00.068038)      1: Error (criu/mem.c:1467): ` + "`" + `- Can't open vma
(00.070000) Error (criu/cr-restore.c:2331): Restoring FAILED.
(00.070100) Error (criu/cgroup.c:2055): cg: cgroupd: recv req error: No such file or directory
`
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	got := ErrorLines(path, 3)
	want := []string{
		"Error (criu/files-reg.c:2353): Can't open file tmp/hsperfdata_root/1 on restore: No such file or directory",
		"Error (criu/mem.c:1467): `- Can't open vma",
		"Error (criu/cr-restore.c:2331): Restoring FAILED.",
	}
	if !slices.Equal(got, want) {
		t.Errorf("ErrorLines = %q\nwant %q", got, want)
	}
}

func TestErrorLinesOnlyBenign(t *testing.T) {
	path := filepath.Join(t.TempDir(), RestoreLog)
	log := "(00.041901) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted\n" +
		"(00.050000) Restore finished successfully.\n"
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := ErrorLines(path, 3); len(got) != 0 {
		t.Errorf("ErrorLines = %q, want none", got)
	}
}

// On a full disk CRIU's log line is cut short by the lack of space it reports; it still
// counts as a full disk.
func TestCriuErrorTruncatedNoSpace(t *testing.T) {
	dir := t.TempDir()
	log := "(00.120000) Error (criu/page-xfer.c:263): page-xfer: Unable to spice data: No space lef"
	if err := os.WriteFile(filepath.Join(dir, DumpLog), []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	err := criuError("dump", Options{ImagesDir: dir}, DumpLog, errors.New("criu exited 1"))
	if !errors.Is(err, ErrNoSpace) {
		t.Errorf("truncated ENOSPC line not taken for a full disk: %v", err)
	}
	if errors.Is(&CriuError{Op: "dump", Lines: []string{"Error: some other failure"}}, ErrNoSpace) {
		t.Error("an unrelated failure taken for a full disk")
	}
	if !errors.Is(&CriuError{Op: "dump", Full: true}, ErrNoSpace) {
		t.Error("a failure on a full filesystem not taken for a full disk")
	}
}

func TestCriuErrorQuotesLog(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, DumpLog), []byte(sampleDumpLog), 0o600); err != nil {
		t.Fatal(err)
	}
	err := criuError("dump", Options{ImagesDir: dir}, DumpLog, errors.New("criu exited 1"))
	if !errors.Is(err, ErrCriuFailed) {
		t.Errorf("criuError is not ErrCriuFailed: %v", err)
	}
	for _, want := range []string{"dump", "first real error", "Dumping FAILED."} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("criuError %q does not mention %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "RLIMIT_NOFILE") || strings.Contains(err.Error(), "\n") {
		t.Errorf("criuError quotes a benign line or spans lines: %q", err)
	}
}

// A program in a container of its own: the host's mounts are external, the restore
// is rooted at the host's root, and a client in an accept queue never fails a dump.
func TestRPCOptsMountNSAndInFlight(t *testing.T) {
	dump := Options{ImagesDir: "/img", Pid: 12, TCPEstablished: true, MountNS: true}.rpcOpts(3, -1, DumpLog)
	if !dump.GetAutoExtMnt() || !dump.GetExtMasters() || !dump.GetExtSharing() || dump.Root != nil || !dump.GetTcpSkipInFlight() {
		t.Errorf("dump opts = %v", dump)
	}
	rst := Options{ImagesDir: "/img", MountNS: true}.rpcOpts(3, -1, RestoreLog)
	if !rst.GetAutoExtMnt() || rst.GetRoot() != "/" {
		t.Errorf("restore opts = %v", rst)
	}
	if plain := (Options{ImagesDir: "/img", Pid: 12}).rpcOpts(3, -1, DumpLog); plain.AutoExtMnt != nil || plain.Root != nil {
		t.Errorf("a program without a mount namespace got %v", plain)
	}
}

// checkCgRoots checks the cgroup roots a restore gives CRIU, as CTRL=PATH.
func checkCgRoots(t *testing.T, o *rpc.CriuOpts, want ...string) {
	t.Helper()
	var got []string
	for _, r := range o.CgRoot {
		if r.Ctrl == nil {
			t.Errorf("a cgroup root without a controller (every hierarchy, v1 ones too): %v", r)
			continue
		}
		got = append(got, *r.Ctrl+"="+r.GetPath())
	}
	if !slices.Equal(got, want) {
		t.Errorf("cgroup roots %q, want %q", got, want)
	}
}

// A dump that leaves the connections out takes no network lock, and probes nothing
// to choose one.
func TestDumpLeavingConnectionsOutTakesNoLock(t *testing.T) {
	c := &Criu{Path: "/nonexistent/criu"} // a probe would find no CRIU and choose iptables
	o := c.opts(Options{Pid: 1, TCPEstablished: true, TCPClose: true, LeaveRunning: true}, 3, -1, DumpLog)
	if !o.GetTcpClose() || o.NetworkLock == nil || o.GetNetworkLock() != rpc.CriuNetworkLockMethod_SKIP {
		t.Fatalf("tcp close %v, network lock %v; want close and SKIP", o.GetTcpClose(), o.NetworkLock)
	}
}
