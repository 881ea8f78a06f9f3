package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/checkpoint/dirty"
)

func TestParseVersion(t *testing.T) {
	cases := []struct {
		in      string
		want    Version
		wantErr bool
	}{
		{in: "Version: 4.2.1", want: Version{4, 2, 1}},
		{in: "Version: 4.2.1\n", want: Version{4, 2, 1}},
		{in: "Version: 4.2", want: Version{4, 2, 0}},
		{in: "Version: 4.1\nGitID: v4.1-3-gdeadbeef", want: Version{4, 1, 0}},
		{in: "  Version:   3.17.1  \nGitID: v3.17.1", want: Version{3, 17, 1}},
		{in: "Warn: something first\nVersion: 4.0.10", want: Version{4, 0, 10}},
		{in: "Version: 4", wantErr: true},
		{in: "Version: four.two", wantErr: true},
		{in: "Version: 4.x.1", wantErr: true},
		{in: "Version:", wantErr: true},
		{in: "criu: command not found", wantErr: true},
		{in: "GitID: v4.1-3-gdeadbeef", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%q", tc.in), func(t *testing.T) {
			got, err := ParseVersion(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Errorf("ParseVersion(%q) = %v, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ParseVersion(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestVersionLess(t *testing.T) {
	cases := []struct {
		a, b Version
		want bool
	}{
		{Version{3, 17, 1}, Version{4, 1, 0}, true},
		{Version{4, 1, 0}, Version{3, 17, 1}, false},
		{Version{4, 0, 9}, Version{4, 1, 0}, true},
		{Version{4, 1, 0}, Version{4, 1, 0}, false},
		{Version{4, 1, 0}, Version{4, 1, 1}, true},
		{Version{4, 1, 1}, Version{4, 1, 0}, false},
		{Version{4, 2, 0}, Version{4, 10, 0}, true}, // numeric, not lexical
		{Version{4, 10, 0}, Version{4, 2, 0}, false},
		{Version{5, 0, 0}, Version{4, 99, 99}, false},
		{Version{4, 1, 9}, Version{4, 2, 0}, true},
	}
	for _, tc := range cases {
		if got := tc.a.Less(tc.b); got != tc.want {
			t.Errorf("%v.Less(%v) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
	if s := (Version{4, 2, 1}).String(); s != "4.2.1" {
		t.Errorf("String() = %q", s)
	}
}

func TestLooksGood(t *testing.T) {
	cases := []struct {
		out  string
		want bool
	}{
		{"Looks good.\n", true},
		{"Warn  (criu/kerndat.c:1): something\nLooks good.", true},
		{"Error (criu/cr-check.c:1): Kernel doesn't support PTRACE_O_SUSPEND_SECCOMP\n", false},
		{"looks good", false},
		{"", false},
	}
	for _, tc := range cases {
		if got := LooksGood(tc.out); got != tc.want {
			t.Errorf("LooksGood(%q) = %v, want %v", tc.out, got, tc.want)
		}
	}
}

// fakeCriu writes a shell script that answers like criu, with its outputs in files
// next to it. Everything is written and closed before any exec, so no fork inherits
// the script open for writing ("text file busy").
func fakeCriu(t *testing.T, version string, versionExit int, check string, checkExit int) string {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"version.out": version + "\n", "check.out": check + "\n"})
	path := filepath.Join(dir, "criu")
	script := fmt.Sprintf(`#!/bin/sh
here=$(dirname "$0")
case "$1" in
--version)
	cat "$here/version.out"
	exit %d ;;
check)
	if [ "$2" = "--feature" ]; then
		echo "Error (criu/cr-check.c:1): $3 is not supported"
		exit 1
	fi
	cat "$here/check.out"
	exit %d ;;
esac
echo "unexpected arguments: $*" >&2
exit 99
`, versionExit, checkExit)
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestProberUsable(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh to run a fake criu")
	}
	cases := []struct {
		name        string
		version     string
		versionExit int
		check       string
		checkExit   int
		wantVersion Version
		wantErr     []string // substrings; nil: no error
	}{
		{name: "new and looks good", version: "Version: 4.2.1\nGitID: v4.2.1", check: "Looks good.",
			wantVersion: Version{4, 2, 1}},
		{name: "oldest accepted", version: "Version: 4.1", check: "Looks good.",
			wantVersion: Version{4, 1, 0}},
		{name: "too old", version: "Version: 3.17.1", check: "Looks good.",
			wantVersion: Version{3, 17, 1}, wantErr: []string{"too old", "3.17.1", "4.1.0", "scripts/setup"}},
		{name: "check fails", version: "Version: 4.2.1",
			check: "Warn  (criu/kerndat.c:1): minor\nError (criu/cr-check.c:1): Kernel lacks memfd", checkExit: 1,
			wantVersion: Version{4, 2, 1}, wantErr: []string{"criu check", "Kernel lacks memfd"}},
		{name: "check exits 0 without looking good", version: "Version: 4.2.1", check: "Error (x.c:1): no way",
			wantVersion: Version{4, 2, 1}, wantErr: []string{"criu check", "no way"}},
		{name: "check looks good but exits 1", version: "Version: 4.2.1", check: "Looks good.", checkExit: 1,
			wantVersion: Version{4, 2, 1}, wantErr: []string{"criu check"}},
		{name: "--version fails", version: "criu: broken install", versionExit: 1, check: "Looks good.",
			wantErr: []string{"criu --version", "broken install", "scripts/setup"}},
		{name: "--version prints garbage", version: "hello", check: "Looks good.",
			wantErr: []string{"Version:", "scripts/setup"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := Prober{Path: fakeCriu(t, tc.version, tc.versionExit, tc.check, tc.checkExit)}
			v, err := p.Usable()
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Usable: %v", err)
				}
			} else {
				if err == nil {
					t.Fatalf("Usable succeeded, want an error mentioning %q", tc.wantErr)
				}
				for _, s := range tc.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("Usable error %q does not mention %q", err, s)
					}
				}
				if strings.Contains(err.Error(), "\n") {
					t.Errorf("Usable error is not one line: %q", err)
				}
			}
			if v != tc.wantVersion {
				t.Errorf("Usable version = %v, want %v", v, tc.wantVersion)
			}
		})
	}
}

func TestProberProbe(t *testing.T) {
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh to run a fake criu")
	}
	type finding struct {
		name string
		ok   bool
	}
	wp := dirty.Probe().OK // the kernel's, whatever CRIU says
	cases := []struct {
		name    string
		version string
		check   string
		exit    int
		want    []finding
	}{
		{"usable", "Version: 4.2.1", "Looks good.", 0, []finding{{"criu", true}, {"criu check", true}, {"memory dirty tracking", false}, {"write-protect tracking", wp}, {"network lock", false}}},
		{"check fails", "Version: 4.2.1", "Error (a.c:1): nope", 1, []finding{{"criu", true}, {"criu check", false}, {"memory dirty tracking", false}, {"write-protect tracking", wp}, {"network lock", false}}},
		{"too old stops early", "Version: 3.17.1", "Looks good.", 0, []finding{{"criu", false}}},
	}
	// The last finding is about the host's /run, whatever CRIU says.
	kdat := finding{"CRIU kernel probe cache", false} // the fake CRIU names no cache
	// The fake CRIU has no GitID: programs of other users depend on the host's caps.
	others := finding{"programs of other users", hasCapability(unix.CAP_SYS_RESOURCE)}
	for i := range cases[:2] {
		cases[i].want = append(cases[i].want, kdat, others)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fs := Prober{Path: fakeCriu(t, tc.version, 0, tc.check, tc.exit)}.Probe()
			if len(fs) != len(tc.want) {
				t.Fatalf("Probe = %+v, want %d findings", fs, len(tc.want))
			}
			for i, f := range fs {
				if f.Name != tc.want[i].name || f.OK != tc.want[i].ok {
					t.Errorf("finding %d = %q ok=%v, want %q ok=%v", i, f.Name, f.OK, tc.want[i].name, tc.want[i].ok)
				}
				if !f.OK && f.Fix == "" {
					t.Errorf("failed finding %q has no fix", f.Name)
				}
			}
		})
	}
}

func TestProberMissingBinary(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-criu")
	p := Prober{Path: missing}
	if _, err := p.Version(); err == nil {
		t.Fatal("Version of a missing binary succeeded")
	} else if !strings.Contains(err.Error(), missing) {
		t.Errorf("Version error %q does not name %q", err, missing)
	}
	_, err := p.Usable()
	if err == nil || !strings.Contains(err.Error(), "scripts/setup") {
		t.Errorf("Usable = %v, want an error pointing at scripts/setup", err)
	}
	if fs := p.Probe(); len(fs) != 1 || fs[0].OK || !fs[0].Required {
		t.Errorf("Probe = %+v, want one failed required finding", fs)
	}
}

// TestProberMissingPathIsErrCriuMissing states the contract callers rely on
// (errors.Is(err, ErrCriuMissing) for "install CRIU"), also for an explicit --criu path
// that does not exist (ENOENT from fork/exec, not a failed PATH lookup).
func TestProberMissingPathIsErrCriuMissing(t *testing.T) {
	p := Prober{Path: filepath.Join(t.TempDir(), "no-such-criu")}
	if _, err := p.Version(); !errors.Is(err, ErrCriuMissing) {
		t.Errorf("Version = %v, want ErrCriuMissing", err)
	}
	if _, err := p.Usable(); !errors.Is(err, ErrCriuMissing) {
		t.Errorf("Usable = %v, want ErrCriuMissing", err)
	}
}

func TestProberMissingFromPath(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := Prober{}.Version()
	if !errors.Is(err, ErrCriuMissing) {
		t.Errorf("Version with no criu in PATH = %v, want ErrCriuMissing", err)
	}
	if _, err := (Prober{}).Usable(); !errors.Is(err, ErrCriuMissing) || !strings.Contains(err.Error(), "scripts/setup") {
		t.Errorf("Usable with no criu in PATH = %v, want ErrCriuMissing pointing at scripts/setup", err)
	}
}

func TestMissingFiles(t *testing.T) {
	dir := t.TempDir()
	present := filepath.Join(dir, "present")
	os.WriteFile(present, []byte("12345"), 0o644)
	synced := filepath.Join(dir, "state")
	req := []RequiredFile{
		{Path: present, Size: 5},
		{Path: filepath.Join(dir, "gone"), Size: 3},
		{Path: present, Size: 9},
		{Path: filepath.Join(synced, "db"), Size: 1},
		{Path: synced + "x/db", Size: 1},
	}
	got := MissingFiles(req, []string{synced + "/"})
	want := []string{
		filepath.Join(dir, "gone") + ": missing on this host",
		present + ": 5 bytes here, 9 on the primary",
		synced + "x/db: missing on this host",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("MissingFiles:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestKdatFinding(t *testing.T) {
	if f := kdatFinding("/run", true); !f.OK {
		t.Errorf("tmpfs /run reported as a problem: %+v", f)
	}
	if f := kdatFinding("/run/criu", false); !f.OK || !strings.Contains(f.Detail, "mounts one") {
		t.Errorf("CRIU's own directory, not a tmpfs yet: %+v, want OK: ftrun mounts one", f)
	}
	for _, dir := range []string{"/run", ""} {
		f := kdatFinding(dir, false)
		if f.OK || f.Required || !strings.Contains(f.Fix, "tmpfs") {
			t.Errorf("cache dir %q, no tmpfs: %+v, want an optional finding whose fix names a tmpfs", dir, f)
		}
	}
}

func TestKdatDirIn(t *testing.T) {
	for bin, want := range map[string]string{
		"\x00junk\x00/run/criu.kdat\x00more":                        "/run",
		"\x00%s/%s\x00criu.kdat\x00/run/criu/criu.kdat\x00":         "/run/criu",
		"\x00relative/criu.kdat\x00\x00/var/run/criu/criu.kdat\x00": "/var/run/criu",
		"no cache here":  "",
		"/run/criu.kdat": "", // not NUL-terminated: not a C string
	} {
		if got := kdatDirIn([]byte(bin)); got != want {
			t.Errorf("kdatDirIn(%q) = %q, want %q", bin, got, want)
		}
	}
}

// The CRIU scripts/setup builds keeps its probe in a directory of its own, and
// KeepKernelProbe leaves a tmpfs there (as root).
func TestKeepKernelProbe(t *testing.T) {
	bin, err := criuBinary("")
	if err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and criu")
	}
	dir := kdatDir(bin)
	if dir != "/run/criu" {
		t.Fatalf("criu at %s keeps its probe in %q; scripts/setup builds it with RUNDIR=/run/criu", bin, dir)
	}
	path, err := KeepKernelProbe("")
	if err != nil {
		t.Fatal(err)
	}
	if path != "/run/criu/criu.kdat" || !isTmpfs(dir) {
		t.Fatalf("KeepKernelProbe = %q, tmpfs %v; want /run/criu/criu.kdat on a tmpfs", path, isTmpfs(dir))
	}
	if _, err := KeepKernelProbe(""); err != nil { // a second time: nothing to do
		t.Fatal(err)
	}
}

// What each patch level of the CRIU build brings: rlimits read from /proc from set
// 1, write-protection tracking from set 7 (set 5 selected it by an environment
// variable ftrun no longer sets: with it every incremental dump would fail).
func TestPatchLevels(t *testing.T) {
	for _, c := range []struct {
		gitID           string
		rlimits, uffdWP bool
	}{
		{"", false, false},
		{"v4.2.1-12-gabc", false, false},
		{"ftrun-patches-0", false, false},
		{"ftrun-patches-x", false, false},
		{"old-ftrun-patches-1", false, false},
		{"ftrun-patches-1", true, false},
		{"ftrun-patches-5", true, false},
		{"ftrun-patches-7", true, true},
		{"ftrun-patches-12", true, true},
	} {
		out := "Version: 4.2.1\n"
		if c.gitID != "" {
			out += "GitID: " + c.gitID + "\n"
		}
		if got := RlimitsFromProc(out); got != c.rlimits {
			t.Errorf("RlimitsFromProc(%q) = %v, want %v", out, got, c.rlimits)
		}
		if got := UffdWPTracking(out); got != c.uffdWP {
			t.Errorf("UffdWPTracking(%q) = %v, want %v", out, got, c.uffdWP)
		}
	}
}

func TestOtherUIDFinding(t *testing.T) {
	if f := otherUIDFinding(true, false); !f.OK {
		t.Errorf("with CAP_SYS_RESOURCE: %+v", f)
	}
	if f := otherUIDFinding(false, true); !f.OK {
		t.Errorf("with the /proc fallback: %+v", f)
	}
	f := otherUIDFinding(false, false)
	if f.OK || !strings.Contains(f.Detail, "CAP_SYS_RESOURCE") || !strings.Contains(f.Fix, "scripts/setup") {
		t.Errorf("without either: %+v", f)
	}
}

// A feature check that failed on something else than the build says so, not that
// CRIU lacks libnftables: in a chroot `criu check` fails on the mount tree first.
func TestNetLockFinding(t *testing.T) {
	if f := netLockFinding("network_lock_nftables is supported\n", nil); !f.OK {
		t.Errorf("supported: %+v", f)
	}
	built := "Warn  (criu/cr-check.c:1580): Nftables based locking requires libnftables and set concatenations support\n"
	if f := netLockFinding(built, errors.New("exit status 1")); f.OK || !strings.Contains(f.Detail, "without libnftables") {
		t.Errorf("built without: %+v", f)
	}
	chroot := "Error (criu/mount.c:381): mnt: No parent found for mountpoint 52 (@./dev)\n"
	if f := netLockFinding(chroot, errors.New("exit status 1")); f.OK || strings.Contains(f.Detail, "without libnftables") || !strings.Contains(f.Detail, "No parent found") {
		t.Errorf("check failed otherwise: %+v", f)
	}
}
