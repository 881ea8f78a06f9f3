package checkpoint

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func TestVerifyDir(t *testing.T) {
	file := func(dir, name string) string { return filepath.Join(dir, name) }
	rewriteManifest := func(t *testing.T, dir string, edit func(map[string]any)) {
		t.Helper()
		data, err := os.ReadFile(file(dir, ManifestName))
		if err != nil {
			t.Fatal(err)
		}
		// UseNumber: 64-bit checksums do not survive a trip through float64.
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
		edit(m)
		data, err = json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file(dir, ManifestName), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name        string
		damage      func(t *testing.T, dir string)
		wantCorrupt bool
	}{
		{"fresh set", func(t *testing.T, dir string) {}, false},
		{"CRIU's restore log next to the images", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string]string{RestoreLog: "(00.000001) Error (x.c:1): old failure\n"})
		}, false},
		{"other unlisted non-image files", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string]string{"stats-restore": "x", "notes.txt": "y", "img": "z"})
		}, false},
		{"flipped byte", func(t *testing.T, dir string) {
			path := file(dir, "pages-1.img")
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			data[len(data)/2] ^= 0x40
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"truncated file", func(t *testing.T, dir string) {
			if err := os.Truncate(file(dir, "pages-1.img"), 10); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"file grew", func(t *testing.T, dir string) {
			f, err := os.OpenFile(file(dir, "core-1.img"), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteString("more"); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"empty file gained bytes", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string]string{"empty.img": "x"})
		}, true},
		{"missing file", func(t *testing.T, dir string) {
			if err := os.Remove(file(dir, "inventory.img")); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"listed file replaced by a directory", func(t *testing.T, dir string) {
			if err := os.Remove(file(dir, "empty.img")); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(file(dir, "empty.img"), 0o700); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"extra unlisted image", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string]string{"fdinfo-2.img": "CRIU would read this"})
		}, true},
		{"garbage manifest", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string]string{ManifestName: "{not json"})
		}, true},
		{"empty manifest", func(t *testing.T, dir string) {
			writeFiles(t, dir, map[string]string{ManifestName: ""})
		}, true},
		{"missing manifest", func(t *testing.T, dir string) {
			if err := os.Remove(file(dir, ManifestName)); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"manifest rewritten without change", func(t *testing.T, dir string) {
			rewriteManifest(t, dir, func(m map[string]any) {})
		}, false},
		{"older manifest version", func(t *testing.T, dir string) {
			rewriteManifest(t, dir, func(m map[string]any) { m["version"] = manifestVersion - 1 })
		}, true},
		{"newer manifest version", func(t *testing.T, dir string) {
			rewriteManifest(t, dir, func(m map[string]any) { m["version"] = manifestVersion + 1 })
		}, true},
		{"manifest without version", func(t *testing.T, dir string) {
			rewriteManifest(t, dir, func(m map[string]any) { delete(m, "version") })
		}, true},
		{"manifest with a wrong checksum", func(t *testing.T, dir string) {
			rewriteManifest(t, dir, func(m map[string]any) {
				for _, f := range m["files"].([]any) {
					if sums, _ := f.(map[string]any)["xxh3"].([]any); len(sums) > 0 {
						n, err := strconv.ParseUint(string(sums[0].(json.Number)), 10, 64)
						if err != nil {
							t.Fatal(err)
						}
						sums[0] = n ^ 1
						return
					}
				}
				t.Fatal("no file with a checksum in the manifest")
			})
		}, true},
		{"manifest listing a file that was never written", func(t *testing.T, dir string) {
			rewriteManifest(t, dir, func(m map[string]any) {
				m["files"] = append(m["files"].([]any), map[string]any{"name": "ghost.img", "size": 0, "xxh3": nil})
			})
		}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t)
			set := commitSet(t, s, 1, sampleImages)
			tc.damage(t, set.Dir)
			m, err := VerifyDir(set.Dir)
			if !tc.wantCorrupt {
				if err != nil {
					t.Fatalf("VerifyDir: %v", err)
				}
				if m == nil || m.Epoch != 1 || len(m.Files) != len(sampleImages) {
					t.Errorf("VerifyDir manifest = %+v", m)
				}
				return
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("VerifyDir = %v, want an error that is ErrCorrupt", err)
			}
			if m != nil {
				t.Errorf("VerifyDir returned a manifest with its error: %+v", m)
			}
		})
	}
}

func TestReadManifestDoesNotVerifyFiles(t *testing.T) {
	s := openStore(t)
	set := commitSet(t, s, 4, sampleImages)
	if err := os.Truncate(filepath.Join(set.Dir, "pages-1.img"), 0); err != nil {
		t.Fatal(err)
	}
	m, err := ReadManifest(set.Dir)
	if err != nil {
		t.Fatalf("ReadManifest: %v", err)
	}
	if m.Epoch != 4 || m.Service != "svc" {
		t.Errorf("ReadManifest = %+v", m)
	}
	if _, err := ReadManifest(t.TempDir()); !errors.Is(err, ErrCorrupt) {
		t.Errorf("ReadManifest of a dir without manifest = %v, want ErrCorrupt", err)
	}
}
