package supervisor

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestIsWrittenFile(t *testing.T) {
	roots := []string{"/var/lib/app"}
	for _, tc := range []struct {
		path  string
		flags int
		want  bool
	}{
		{"/srv/db/rel", 0o2, true},                // O_RDWR
		{"/srv/db/rel", 0o1, true},                // O_WRONLY
		{"/srv/db/rel", 0o0, false},               // read-only
		{"/var/log/app.log", 0o1 | 0o2000, false}, // append-only log
		{"/srv/db/rel", 0o2 | 0o2000, true},       // read-write append: still data
		{"/var/lib/app/db", 0o2, false},           // under --sync
		{"/dev/shm/PostgreSQL.1", 0o2, false},     // the container's own tmpfs
		{"/srv/db/gone (deleted)", 0o2, false},    // nothing to compare
		{"socket:[123]", 0o2, false},              // not a path
		{"/var/lib/application/x", 0o2, true},     // a sibling of a root is not under it
	} {
		if got := isWrittenFile(tc.path, tc.flags, roots); got != tc.want {
			t.Errorf("isWrittenFile(%q, %o) = %v, want %v", tc.path, tc.flags, got, tc.want)
		}
	}
}

func TestFdFlags(t *testing.T) {
	if got := fdFlags("pos:\t0\nflags:\t0102002\nmnt_id:\t27\n"); got != 0o102002 {
		t.Errorf("fdFlags = %o", got)
	}
}

// Files written outside --sync are seen in a real process (this one) and a change
// after the dump makes the epoch stale.
func TestWrittenFilesAndStale(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "data")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := writtenFiles([]int{os.Getpid()}, nil)
	if !slices.Contains(got, p) {
		t.Fatalf("writtenFiles = %v, want %q among them", got, p)
	}
	if got := writtenFiles([]int{os.Getpid()}, []string{dir}); slices.Contains(got, p) {
		t.Errorf("a file under --sync listed: %v", got)
	}
	wd, _ := os.Getwd()
	if got := workDirs([]int{os.Getpid()}, nil, nil); len(got) != 0 {
		t.Errorf("a working directory the process writes nothing in counted: %v", got)
	}
	if got := workDirs([]int{os.Getpid()}, nil, []string{filepath.Join(wd, "x")}); !slices.Equal(got, []string{wd}) {
		t.Errorf("workDirs = %v, want [%s]", got, wd)
	}
	since := time.Now().Add(-time.Hour)
	old := since.Add(-time.Minute)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	if f, _ := staleFile([]string{p}, since); f != "" {
		t.Errorf("unchanged file called stale")
	}
	if _, err := f.WriteString("newer"); err != nil {
		t.Fatal(err)
	}
	if got, how := staleFile([]string{filepath.Join(dir, "missing"), p}, since); got != filepath.Join(dir, "missing") || !strings.Contains(how, "gone") {
		t.Errorf("staleFile = %q (%s), want the file gone since the checkpoint", got, how)
	}
	if got, how := staleFile([]string{p}, since); got != p || !strings.Contains(how, "changed at") {
		t.Errorf("staleFile = %q (%s), want %q", got, how, p)
	}
	// A directory is looked at whole: a file changed anywhere below it counts.
	sub := filepath.Join(dir, "base", "5")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{dir, filepath.Join(dir, "base"), sub, p} {
		if err := os.Chtimes(q, old, old); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := staleFile([]string{dir}, since); got != "" {
		t.Errorf("unchanged directory called stale at %q", got)
	}
	if err := os.WriteFile(filepath.Join(sub, "16384"), []byte("page"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := staleFile([]string{dir}, since); got == "" {
		t.Errorf("a new relation file below the directory was not seen")
	}
}
