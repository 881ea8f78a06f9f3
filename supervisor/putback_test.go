package supervisor

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
)

// putBackFixture is a set holding one synced copy, of path, and the root above it.
func putBackFixture(t *testing.T) (set, root string, s checkpoint.SyncedFile) {
	t.Helper()
	base := t.TempDir()
	set, root = filepath.Join(base, "set"), filepath.Join(base, "state")
	for _, d := range []string{set, filepath.Join(root, "sub")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s = checkpoint.SyncedFile{Name: "sync-1.data", Path: filepath.Join(root, "sub", "journal"), Mode: 0o640, Size: 3, ModTime: time.Unix(1700000000, 0)}
	if err := os.WriteFile(filepath.Join(set, s.Name), []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	return set, root, s
}

func TestPutBack(t *testing.T) {
	set, root, s := putBackFixture(t)
	if err := os.WriteFile(s.Path, []byte("old contents"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := restoreSynced(set, []string{root}, []checkpoint.SyncedFile{s}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(s.Path)
	fi, _ := os.Stat(s.Path)
	if err != nil || string(b) != "new" || fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(s.ModTime) {
		t.Fatalf("restored %q (%v), mode %v, mtime %v", b, err, fi.Mode(), fi.ModTime())
	}
	// Missing directories are made, also beneath a root that is gone.
	os.RemoveAll(root)
	if err := restoreSynced(set, []string{root}, []checkpoint.SyncedFile{s}); err != nil {
		t.Fatal(err)
	}
	// A file root.
	if err := restoreSynced(set, []string{s.Path}, []checkpoint.SyncedFile{s}); err != nil {
		t.Fatal(err)
	}
}

// What a program (unprivileged, owning its state directory) can plant there since the
// checkpoint: links where the file or a directory on its path should be, and a
// manifest naming paths outside its roots. Each fails with one line naming the path,
// and nothing outside changes.
func TestPutBackRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		plant func(t *testing.T, root, outside string, s *checkpoint.SyncedFile, roots *[]string)
		want  string
	}{
		{"link as the file", func(t *testing.T, root, outside string, s *checkpoint.SyncedFile, _ *[]string) {
			must(t, os.Symlink(filepath.Join(outside, "victim"), s.Path))
		}, "symbolic link"},
		{"link as a directory", func(t *testing.T, root, outside string, s *checkpoint.SyncedFile, _ *[]string) {
			must(t, os.RemoveAll(filepath.Join(root, "sub")))
			must(t, os.Symlink(outside, filepath.Join(root, "sub")))
		}, "symbolic link"},
		{"link as the temporary", func(t *testing.T, root, outside string, s *checkpoint.SyncedFile, _ *[]string) {
			// Removed, not followed: the restore then succeeds without touching outside.
			must(t, os.Symlink(filepath.Join(outside, "victim"), s.Path+".ftrun-restore"))
		}, ""},
		{"link as the root", func(t *testing.T, root, outside string, s *checkpoint.SyncedFile, roots *[]string) {
			link := root + "-link"
			must(t, os.Symlink(outside, link))
			*roots = []string{link}
			s.Path = filepath.Join(link, "victim")
		}, "symbolic link"},
		{"outside the roots", func(t *testing.T, root, outside string, s *checkpoint.SyncedFile, _ *[]string) {
			s.Path = filepath.Join(outside, "victim")
		}, "outside the --sync roots"},
		{"dot-dot", func(t *testing.T, root, outside string, s *checkpoint.SyncedFile, _ *[]string) {
			s.Path = root + "/../" + filepath.Base(outside) + "/victim"
		}, "not a clean absolute path"},
		{"copy outside the set", func(t *testing.T, root, outside string, s *checkpoint.SyncedFile, _ *[]string) {
			s.Name = "../../" + filepath.Base(outside) + "/victim"
		}, "not a file of the set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, root, s := putBackFixture(t)
			outside := t.TempDir()
			victim := filepath.Join(outside, "victim")
			must(t, os.WriteFile(victim, []byte("root's"), 0o600))
			roots := []string{root}
			tc.plant(t, root, outside, &s, &roots)
			err := restoreSynced(set, roots, []checkpoint.SyncedFile{s})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("restore = %v, want one line with %q", err, tc.want)
			}
			b, _ := os.ReadFile(victim)
			fi, _ := os.Stat(victim)
			if string(b) != "root's" || fi.Mode().Perm() != 0o600 {
				t.Fatalf("outside file changed: %q, mode %v", b, fi.Mode())
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 1 {
				t.Fatalf("outside directory holds %d entries, want 1", len(ents))
			}
			if tc.want != "" && errors.Is(err, os.ErrNotExist) {
				t.Fatalf("refused for the wrong reason: %v", err)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
