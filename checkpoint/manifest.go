package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// ManifestName is the file in every committed image set that lists its files.
const ManifestName = "MANIFEST.json"

// manifestVersion changes when the manifest's meaning changes; older ftruns refuse newer sets.
const manifestVersion = 1

// castagnoli is CRC32C: hardware-accelerated on amd64 and arm64, so checksumming a
// 100 MB image set costs a few milliseconds. It guards against corruption (bit rot, torn
// writes, truncation), not against an attacker with write access to the state dir.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt marks an image set whose files do not match its manifest.
var ErrCorrupt = errors.New("image set corrupt")

// Manifest describes one committed image set.
type Manifest struct {
	Version int       `json:"version"`
	Epoch   uint64    `json:"epoch"`
	Created time.Time `json:"created"`
	Service string    `json:"service,omitempty"`
	// Command is what was started originally; a restore of a different command is refused.
	Command []string `json:"command,omitempty"`
	// Pid is the host PID of the dumped tree's root at dump time (informational).
	Pid int `json:"pid,omitempty"`
	// External maps a role ("stdout", "stderr") to the CRIU key of a resource outside the
	// dumped tree, e.g. "pipe:[12345]", so a restore can hand CRIU a replacement.
	External map[string]string `json:"external,omitempty"`
	Stats    DumpStats         `json:"stats"`
	Files    []FileSum         `json:"files"`
}

// FileSum is one file of an image set.
type FileSum struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	CRC32C uint32 `json:"crc32c"`
}

// Bytes is the total size of the files the manifest lists.
func (m *Manifest) Bytes() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// sumFile checksums one file and, when sync is set, forces it to stable storage. Both
// happen through the same open file so the bytes we vouch for are the bytes we fsynced.
func sumFile(path string, sync bool) (FileSum, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileSum{}, err
	}
	defer f.Close()
	h := crc32.New(castagnoli)
	n, err := io.Copy(h, f)
	if err != nil {
		return FileSum{}, fmt.Errorf("read %q: %w", path, err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			return FileSum{}, fmt.Errorf("fsync %q: %w", path, err)
		}
	}
	return FileSum{Name: filepath.Base(path), Size: n, CRC32C: h.Sum32()}, nil
}

// writeManifest writes m as dir/MANIFEST.json and fsyncs it.
func writeManifest(dir string, m *Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	path := filepath.Join(dir, ManifestName)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %q: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %q: %w", path, err)
	}
	return f.Close()
}

// ReadManifest reads the manifest of the image set in dir without verifying the files.
func ReadManifest(dir string) (*Manifest, error) {
	data, err := os.ReadFile(filepath.Join(dir, ManifestName))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest in %q: %v", ErrCorrupt, dir, err)
	}
	if m.Version != manifestVersion {
		return nil, fmt.Errorf("%w: manifest in %q has version %d, this ftrun reads %d", ErrCorrupt, dir, m.Version, manifestVersion)
	}
	return &m, nil
}

// VerifyDir checks every file the manifest in dir lists: present, same size, same CRC32C.
// It also refuses CRIU images that are present but unlisted, since CRIU would read them.
func VerifyDir(dir string) (*Manifest, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	listed := make(map[string]bool, len(m.Files))
	for _, want := range m.Files {
		listed[want.Name] = true
		got, err := sumFile(filepath.Join(dir, want.Name), false)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		if got.Size != want.Size {
			return nil, fmt.Errorf("%w: %q in %q is %d bytes, manifest says %d", ErrCorrupt, want.Name, dir, got.Size, want.Size)
		}
		if got.CRC32C != want.CRC32C {
			return nil, fmt.Errorf("%w: %q in %q fails its checksum", ErrCorrupt, want.Name, dir)
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	for _, e := range ents {
		if filepath.Ext(e.Name()) == ".img" && !listed[e.Name()] {
			return nil, fmt.Errorf("%w: %q in %q is not in the manifest", ErrCorrupt, e.Name(), dir)
		}
	}
	return m, nil
}

// listFiles returns the regular files in dir, sorted, except the manifest.
func listFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && e.Name() != ManifestName {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}
