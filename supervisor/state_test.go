package supervisor

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDecideBoot(t *testing.T) {
	running := &RunRecord{Pid: 321, Phase: PhaseRunning}
	stopped := &RunRecord{Pid: 321, Phase: PhaseStopped}
	finished := &RunRecord{Pid: 321, Phase: PhaseFinished}
	failed := &RunRecord{Pid: 321, Phase: PhaseFailed}
	cases := []struct {
		name       string
		in         BootInput
		want       BootAction
		wantKill   bool
		wantDrop   bool
		wantReason string // substring
	}{
		{name: "discard with nothing there",
			in:   BootInput{Discard: true},
			want: BootFresh, wantReason: "--discard"},
		{name: "discard drops checkpoints",
			in:   BootInput{Discard: true, Record: stopped, Checkpoints: 3},
			want: BootFresh, wantDrop: true, wantReason: "--discard"},
		{name: "discard kills strays",
			in:   BootInput{Discard: true, CgroupProcs: 2},
			want: BootFresh, wantKill: true, wantReason: "--discard"},
		{name: "discard kills strays and drops checkpoints",
			in:   BootInput{Discard: true, Record: running, CgroupProcs: 2, Checkpoints: 3},
			want: BootFresh, wantKill: true, wantDrop: true, wantReason: "--discard"},
		{name: "discard beats a live program",
			in:   BootInput{Discard: true, Record: running, RecordAlive: true, CgroupProcs: 1, Checkpoints: 1},
			want: BootFresh, wantKill: true, wantDrop: true, wantReason: "--discard"},
		{name: "live program is adopted",
			in:   BootInput{Record: running, RecordAlive: true, CgroupProcs: 3, Checkpoints: 2},
			want: BootAdopt, wantReason: "pid 321"},
		{name: "live program without checkpoints is adopted",
			in:   BootInput{Record: running, RecordAlive: true, CgroupProcs: 1},
			want: BootAdopt, wantReason: "adopting"},
		{name: "finished program starts fresh and drops checkpoints",
			in:   BootInput{Record: finished, Checkpoints: 2},
			want: BootFresh, wantDrop: true, wantReason: "finished cleanly"},
		{name: "finished program with strays",
			in:   BootInput{Record: finished, CgroupProcs: 1, Checkpoints: 2},
			want: BootFresh, wantKill: true, wantDrop: true, wantReason: "finished cleanly"},
		{name: "finished program with nothing left",
			in:   BootInput{Record: finished},
			want: BootFresh, wantReason: "finished cleanly"},
		{name: "stopped program is restored",
			in:   BootInput{Record: stopped, Checkpoints: 1},
			want: BootRestore, wantReason: "stopped with a final checkpoint"},
		{name: "stopped program with strays: strays are killed first",
			in:   BootInput{Record: stopped, CgroupProcs: 1, Checkpoints: 1},
			want: BootRestore, wantKill: true, wantReason: "killing them"},
		{name: "stopped program without checkpoints starts fresh",
			in:   BootInput{Record: stopped},
			want: BootFresh, wantReason: "no checkpoint yet"},
		{name: "dead program is restored",
			in:   BootInput{Record: running, Checkpoints: 4},
			want: BootRestore, wantReason: "not running"},
		{name: "failed program is restored",
			in:   BootInput{Record: failed, Checkpoints: 4},
			want: BootRestore, wantReason: "not running"},
		{name: "no record but checkpoints",
			in:   BootInput{Checkpoints: 1},
			want: BootRestore, wantReason: "restoring the newest checkpoint"},
		{name: "strays and checkpoints: kill, then restore",
			in:   BootInput{Record: running, CgroupProcs: 2, Checkpoints: 1},
			want: BootRestore, wantKill: true, wantReason: "killing them, then restoring"},
		{name: "strays and nothing else: kill, then fresh",
			in:   BootInput{CgroupProcs: 5},
			want: BootFresh, wantKill: true, wantReason: "killing processes"},
		{name: "strays of a dead program without checkpoints",
			in:   BootInput{Record: running, CgroupProcs: 1},
			want: BootFresh, wantKill: true, wantReason: "killing processes"},
		{name: "nothing at all",
			in:   BootInput{},
			want: BootFresh, wantReason: "no checkpoint yet"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := DecideBoot(tc.in)
			if got.Action != tc.want || got.KillStrays != tc.wantKill || got.DropCheckpoints != tc.wantDrop {
				t.Errorf("DecideBoot(%+v) = %s kill=%v drop=%v; want %s kill=%v drop=%v",
					tc.in, got.Action, got.KillStrays, got.DropCheckpoints, tc.want, tc.wantKill, tc.wantDrop)
			}
			if !strings.Contains(got.Reason, tc.wantReason) {
				t.Errorf("reason %q does not contain %q", got.Reason, tc.wantReason)
			}
			// Never two copies: anything but adopting a live program must clean the
			// cgroup when it holds processes.
			if got.Action != BootAdopt && tc.in.CgroupProcs > 0 && !got.KillStrays {
				t.Errorf("%s with %d processes in the cgroup does not kill them", got.Action, tc.in.CgroupProcs)
			}
			if got.Action == BootAdopt && (got.KillStrays || got.DropCheckpoints) {
				t.Error("adopting kills or drops what it adopts")
			}
		})
	}
}

func TestBootActionString(t *testing.T) {
	for a, want := range map[BootAction]string{BootFresh: "fresh start", BootRestore: "restore", BootAdopt: "adopt"} {
		if got := a.String(); got != want {
			t.Errorf("BootAction(%d).String() = %q, want %q", int(a), got, want)
		}
	}
}

func TestSameCommand(t *testing.T) {
	cases := []struct {
		name           string
		recorded, want []string
		same           bool
	}{
		{"nothing recorded", nil, []string{"redis-server", "--port", "6379"}, true},
		{"empty recorded", []string{}, []string{"x"}, true},
		{"identical", []string{"redis-server", "--port", "6379"}, []string{"redis-server", "--port", "6379"}, true},
		{"other argument", []string{"redis-server", "--port", "6379"}, []string{"redis-server", "--port", "6380"}, false},
		{"other program", []string{"memcached"}, []string{"redis-server"}, false},
		{"extra argument", []string{"prog"}, []string{"prog", "-v"}, false},
		{"missing argument", []string{"prog", "-v"}, []string{"prog"}, false},
		{"argument order", []string{"prog", "-a", "-b"}, []string{"prog", "-b", "-a"}, false},
		{"split differently", []string{"prog", "a b"}, []string{"prog", "a", "b"}, false},
		{"recorded but want nothing", []string{"prog"}, nil, false},
	}
	for _, tc := range cases {
		if got := SameCommand(tc.recorded, tc.want); got != tc.same {
			t.Errorf("%s: SameCommand(%q, %q) = %v, want %v", tc.name, tc.recorded, tc.want, got, tc.same)
		}
	}
}

func TestLockStateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "svc")
	first, err := lockStateDir(dir)
	if err != nil {
		t.Fatalf("first lock: %v", err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir: %v, %v; want mode 0700", fi, err)
	}
	pid := strconv.Itoa(os.Getpid())
	if data, err := os.ReadFile(filepath.Join(dir, lockFile)); err != nil || strings.TrimSpace(string(data)) != pid {
		t.Errorf("lock file holds %q, %v; want %s", data, err, pid)
	}

	// flock locks belong to the open file, so a second open in this process contends
	// exactly like a second ftrun would.
	second, err := lockStateDir(dir)
	if err == nil {
		second.close()
		t.Fatal("second lock on the same dir succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("second lock = %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), "pid "+pid) {
		t.Errorf("error %q does not name the holder pid %s", err, pid)
	}
	if !strings.Contains(err.Error(), dir) {
		t.Errorf("error %q does not name the dir", err)
	}
	// The failed attempt must not have clobbered the holder's pid.
	if data, _ := os.ReadFile(filepath.Join(dir, lockFile)); strings.TrimSpace(string(data)) != pid {
		t.Errorf("lock file holds %q after a failed lock", data)
	}

	if err := first.close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	third, err := lockStateDir(dir)
	if err != nil {
		t.Fatalf("lock after close: %v", err)
	}
	if err := third.close(); err != nil {
		t.Fatal(err)
	}
}

func TestLockStateDirNotADir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	sd, err := lockStateDir(file)
	if err == nil {
		sd.close()
		t.Fatal("locking a regular file as state dir succeeded")
	}
	if errors.Is(err, ErrLocked) {
		t.Errorf("a state dir that cannot be created is reported as locked: %v", err)
	}
}

func TestRunRecordRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "svc")
	sd, err := lockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer sd.close()

	if rec, err := readRunRecord(dir); rec != nil || err != nil {
		t.Fatalf("readRunRecord with no record = %+v, %v; want nil, nil", rec, err)
	}
	since := time.Date(2025, 11, 23, 9, 45, 0, 123456789, time.UTC)
	records := []*RunRecord{
		{Service: "redis", Command: []string{"redis-server", "--port", "6379"}, Pid: 4242, StartTime: 987654321,
			Phase: PhaseRunning, Since: since, Ftrun: 17},
		{Service: "redis", Command: []string{"redis-server", "--port", "6379"}, Pid: 4242, StartTime: 987654321,
			Phase: PhaseStopped, Since: since.Add(time.Hour), Ftrun: 17},
		{Service: "x", Phase: PhaseFinished},
	}
	for _, want := range records {
		if err := sd.writeRunRecord(want); err != nil {
			t.Fatalf("writeRunRecord: %v", err)
		}
		got, err := readRunRecord(dir)
		if err != nil {
			t.Fatalf("readRunRecord: %v", err)
		}
		if !got.Since.Equal(want.Since) {
			t.Errorf("since = %v, want %v", got.Since, want.Since)
		}
		g, w := *got, *want
		g.Since, w.Since = time.Time{}, time.Time{}
		if !reflect.DeepEqual(g, w) {
			t.Errorf("round trip = %+v, want %+v", g, w)
		}
		if _, err := os.Stat(filepath.Join(dir, runFile+".tmp")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("temporary record left behind: %v", err)
		}
	}
}

func TestReadRunRecordDamaged(t *testing.T) {
	cases := []struct{ name, data string }{
		{"garbage", "this is not json"},
		{"truncated", `{"service": "redis", "pid": 12`},
		{"wrong types", `{"pid": "twelve"}`},
		{"empty", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, runFile), []byte(tc.data), 0o600); err != nil {
				t.Fatal(err)
			}
			rec, err := readRunRecord(dir)
			if err == nil {
				t.Fatalf("readRunRecord of %q = %+v, want an error", tc.data, rec)
			}
			if rec != nil {
				t.Errorf("readRunRecord returned a record with its error: %+v", rec)
			}
		})
	}
}

func TestReadRunRecordUnreadable(t *testing.T) {
	dir := t.TempDir()
	// A directory where the record should be: not "no record", a real error.
	if err := os.Mkdir(filepath.Join(dir, runFile), 0o700); err != nil {
		t.Fatal(err)
	}
	if rec, err := readRunRecord(dir); err == nil {
		t.Errorf("readRunRecord = %+v, nil; want an error", rec)
	}
}
