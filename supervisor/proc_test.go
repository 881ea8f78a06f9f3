package supervisor

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// statLine builds a /proc/PID/stat line as the kernel writes it (52 fields), with comm
// and starttime (field 22) chosen by the test.
func statLine(pid int, comm string, starttime string) string {
	fields := []string{
		fmt.Sprint(pid), "(" + comm + ")", "S", // 1-3: pid, comm, state
		"1", "1234", "1234", "0", "-1", // 4-8: ppid, pgrp, session, tty_nr, tpgid
		"4194560", "1023", "0", "12", "0", // 9-13: flags, minflt, cminflt, majflt, cmajflt
		"15", "7", "0", "0", // 14-17: utime, stime, cutime, cstime
		"20", "0", "1", "0", // 18-21: priority, nice, num_threads, itrealvalue
		starttime,        // 22
		"3133440", "376", // 23-24: vsize, rss
		"18446744073709551615",                                // 25: rsslim
		"94727558569984", "94727558589865", "140727041093968", // 26-28
		"0", "0", "0", "0", "0", "0", "0", "0", "0", // 29-37
		"17", "1", "0", "0", "0", "0", "0", // 38-44
		"94727558605872", "94727558607488", "94728248324096", // 45-47
		"140727041096377", "140727041096397", "140727041096397", "140727041097707", // 48-51
		"0", // 52: exit_code
	}
	return strings.Join(fields, " ") + "\n"
}

func TestStatLineHas52Fields(t *testing.T) {
	if n := len(strings.Fields(statLine(1, "init", "5"))); n != 52 {
		t.Fatalf("test stat line has %d fields, want 52", n)
	}
}

func TestParseStatStart(t *testing.T) {
	cases := []struct {
		name    string
		stat    string
		want    uint64
		wantErr bool
	}{
		{name: "plain comm", stat: statLine(1234, "redis-server", "433861"), want: 433861},
		{name: "comm with spaces", stat: statLine(1234, "my prog 2", "99"), want: 99},
		{name: "comm with a closing paren", stat: statLine(1234, "a) b", "987654321"), want: 987654321},
		{name: "comm that looks like fields", stat: statLine(1234, "x) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19", "42"), want: 42},
		{name: "comm of parens only", stat: statLine(7, "))((", "8"), want: 8},
		{name: "empty comm", stat: statLine(7, "", "11"), want: 11},
		{name: "large starttime", stat: statLine(7, "x", "18446744073709551615"), want: 18446744073709551615},
		{name: "no trailing newline", stat: strings.TrimSuffix(statLine(7, "x", "12"), "\n"), want: 12},
		{name: "no parens", stat: "1234 redis S 1 2 3", wantErr: true},
		{name: "empty", stat: "", wantErr: true},
		{name: "cut before starttime", stat: strings.Join(strings.Fields(statLine(7, "x", "12"))[:21], " "), wantErr: true},
		{name: "non-numeric starttime", stat: statLine(7, "x", "soon"), wantErr: true},
		{name: "negative starttime", stat: statLine(7, "x", "-5"), wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatStart(tc.stat)
			if tc.wantErr {
				if err == nil {
					t.Errorf("parseStatStart(%q) = %d, want an error", tc.stat, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("parseStatStart(%q) = %d, %v; want %d", tc.stat, got, err, tc.want)
			}
		})
	}
}

func TestProcStartTimeOfSelf(t *testing.T) {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	want := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))[19]
	got, err := procStartTime(os.Getpid())
	if err != nil {
		t.Fatalf("procStartTime: %v", err)
	}
	if fmt.Sprint(got) != want {
		t.Errorf("procStartTime(self) = %d, want %s", got, want)
	}
	if _, err := procStartTime(-1); err == nil {
		t.Error("procStartTime of a nonexistent process succeeded")
	}
}

func TestExitStatus(t *testing.T) {
	cases := []struct {
		name      string
		st        ExitStatus
		wantStr   string
		wantClean bool
	}{
		{"clean exit", ExitStatus{Exited: true, Code: 0}, "exited with code 0", true},
		{"failed exit", ExitStatus{Exited: true, Code: 3}, "exited with code 3", false},
		{"exit 255", ExitStatus{Exited: true, Code: 255}, "exited with code 255", false},
		{"killed", ExitStatus{Signal: "SIGKILL"}, "killed by SIGKILL", false},
		{"segfault", ExitStatus{Signal: "SIGSEGV"}, "killed by SIGSEGV", false},
		{"adopted", ExitStatus{Unknown: true}, "exited (status unknown: the program was adopted)", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.st.String(); got != tc.wantStr {
				t.Errorf("String() = %q, want %q", got, tc.wantStr)
			}
			if got := tc.st.Clean(); got != tc.wantClean {
				t.Errorf("Clean() = %v, want %v", got, tc.wantClean)
			}
		})
	}
}

// startProgram returns once the container's first process has become the program:
// a checkpoint from then on never sees ftrun's own binary still setting it up (whose
// fd 0, the host's /dev/null, CRIU cannot find among the container's mounts).
func TestStartProgramReturnsOnceExecd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the container needs root (new PID, mount and IPC namespaces)")
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep")
	}
	want, _ := filepath.EvalSymlinks(sleep)
	for i := 0; i < 5; i++ {
		pid, err := startProgram([]string{"sleep", "30"}, "/", os.Environ(), nil, os.Stdout, os.Stderr, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		_ = unix.Kill(pid, unix.SIGKILL)
		reap(pid)
		if err != nil || exe != want {
			t.Fatalf("right after startProgram, PID %d runs %q (%v), want the program %q", pid, exe, err, want)
		}
	}
}
