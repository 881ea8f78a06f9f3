package supervisor

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
)

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// A restore writes each state file through its own inode (SQLite remembers it),
// creates the missing ones as they were owned, and removes what came later.
func TestRestoreSyncedInPlace(t *testing.T) {
	set, root := t.TempDir(), t.TempDir()
	db, gone, later := filepath.Join(root, "app.db"), filepath.Join(root, "sub", "gone"), filepath.Join(root, "app.db-journal")
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	files := []checkpoint.SyncedFile{
		{Name: "a", Path: db, Mode: 0o640, Size: 5, ModTime: mtime},
		{Name: "b", Path: gone, Mode: 0o600, Size: 3, ModTime: mtime, UID: 12345, GID: 23456, Owned: true},
	}
	for name, data := range map[string]string{"a": "epoch", "b": "old"} {
		if err := os.WriteFile(filepath.Join(set, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(db, []byte("newer and longer content"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(later, []byte("journal of a later transaction"), 0o644); err != nil {
		t.Fatal(err)
	}
	ino := inode(t, db)
	if err := restoreSynced(set, []string{root}, files); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(db); string(got) != "epoch" {
		t.Errorf("db = %q, want the epoch's %q", got, "epoch")
	}
	if inode(t, db) != ino {
		t.Errorf("db got a new inode: SQLite would take it for moved")
	}
	fi, _ := os.Stat(db)
	if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mtime) {
		t.Errorf("db mode %v mtime %v", fi.Mode(), fi.ModTime())
	}
	if got, _ := os.ReadFile(gone); string(got) != "old" {
		t.Errorf("missing file restored as %q", got)
	}
	if st := statOf(t, gone); os.Geteuid() == 0 && (st.Uid != 12345 || st.Gid != 23456) {
		t.Errorf("recreated file owned by %d:%d, want 12345:23456", st.Uid, st.Gid)
	}
	if _, err := os.Stat(later); !os.IsNotExist(err) {
		t.Errorf("a file that came after the checkpoint is still there (%v)", err)
	}
}

// A symlink where a state file was is not followed.
func TestRestoreSyncedRefusesSymlink(t *testing.T) {
	set, root, elsewhere := t.TempDir(), t.TempDir(), t.TempDir()
	target := filepath.Join(elsewhere, "victim")
	if err := os.WriteFile(target, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(root, "app.db")
	if err := os.Symlink(target, db); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(set, "a"), []byte("epoch"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := restoreSynced(set, []string{root}, []checkpoint.SyncedFile{{Name: "a", Path: db, Mode: 0o600, Size: 5}})
	if err == nil {
		t.Error("restore wrote through a symlink")
	}
	if got, _ := os.ReadFile(target); string(got) != "keep" {
		t.Errorf("the symlink's target was overwritten: %q", got)
	}
}

func statOf(t *testing.T, p string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}
