package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// ManifestName is the file in every committed image set that lists its files.
const ManifestName = "MANIFEST.json"

// manifestVersion changes when the manifest's meaning changes; older ftruns refuse newer sets.
const manifestVersion = 2

// Checksums are XXH3-64 per chunk: it runs at memory speed with SIMD (about five times
// CRC32C's speed here), so checksumming a 100 MB image set stays within the 10% of a
// CRIU dump that ftrun may add. It guards against corruption (bit rot, torn writes,
// truncation), not against an attacker with write access to the state dir.

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
	// SyncRoots are the program's state paths (--sync); Synced the files under them as
	// they were while the program was frozen for this dump, kept in the set as Name.
	SyncRoots []string     `json:"sync_roots,omitempty"`
	Synced    []SyncedFile `json:"synced,omitempty"`
	// Net is the program's own network placement (--net), which a standby rebuilds
	// before it restores the program with its TCP connections.
	Net *NetPlacement `json:"net,omitempty"`
	// Container says the program ran in a mount namespace of its own, which a restore
	// must rebuild (see Options.MountNS).
	Container bool `json:"container,omitempty"`
	// Unsynced are files the program held open for writing, and its working
	// directories, outside SyncRoots; a restore refuses the set once one of them (or
	// anything under such a directory) changed after DumpStart.
	Unsynced  []string  `json:"unsynced,omitempty"`
	DumpStart time.Time `json:"dump_start,omitzero"`
}

// NetPlacement is the address a program serves on from its own network namespace.
type NetPlacement struct {
	Addr    string `json:"addr"` // CIDR
	MAC     string `json:"mac"`
	Gateway string `json:"gateway,omitempty"`
}

// SyncedFile is one of the program's state files captured with an image set.
type SyncedFile struct {
	Name    string    `json:"name"` // file in the image set
	Path    string    `json:"path"` // where it lives for the program
	Mode    uint32    `json:"mode"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
	// UID and GID own the file (Owned: they were recorded), for a restore that has to
	// create it anew.
	UID   uint32 `json:"uid,omitempty"`
	GID   uint32 `json:"gid,omitempty"`
	Owned bool   `json:"owned,omitempty"`
}

// ChunkSize is the unit of the per-file checksums: files are checksummed in chunks so
// that both cores work on the one large pages image at once.
const ChunkSize = 8 << 20

// FileSum is one file of an image set: its size and the XXH3-64 of each ChunkSize piece.
type FileSum struct {
	Name string   `json:"name"`
	Size int64    `json:"size"`
	XXH3 []uint64 `json:"xxh3"`
}

// SameContent reports whether f and o describe the same bytes: the same size and the
// same checksums, whatever their names.
func (f FileSum) SameContent(o FileSum) bool {
	return f.Size == o.Size && slices.Equal(f.XXH3, o.XXH3)
}

// File returns the entry of the file called name, if the manifest lists one.
func (m *Manifest) File(name string) (FileSum, bool) {
	for _, f := range m.Files {
		if f.Name == name {
			return f, true
		}
	}
	return FileSum{}, false
}

// Bytes is the total size of the files the manifest lists.
func (m *Manifest) Bytes() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// sumFile checksums one file. The image was just written, so its pages are in the page
// cache: mapping them avoids copying 100 MB through read(2), and the chunks (and the
// page faults that map them) are spread over all cores.
func sumFile(path string) (FileSum, error) {
	f, err := os.Open(path)
	if err != nil {
		return FileSum{}, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return FileSum{}, err
	}
	sum := FileSum{Name: filepath.Base(path), Size: fi.Size()}
	if fi.Size() == 0 {
		return sum, nil
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return FileSum{}, fmt.Errorf("map %q: %w", path, err)
	}
	defer unix.Munmap(data)
	if sum.XXH3, err = chunkSums(data, nil); err != nil {
		return FileSum{}, fmt.Errorf("read %q: %w", path, err)
	}
	return sum, nil
}

// chunkSums is the XXH3-64 of the ChunkSize pieces of mapped data named in which (all
// of them when which is nil), in the order of which, computed in parallel. A file
// truncated behind our back while mapped faults (SIGBUS): that becomes an error about
// the file, not a crash of the supervisor.
func chunkSums(data []byte, which []int) ([]uint64, error) {
	if which == nil {
		which = make([]int, chunkCount(int64(len(data))))
		for i := range which {
			which[i] = i
		}
	}
	n := len(which)
	sums := make([]uint64, n)
	workers := min(runtime.NumCPU(), n)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
			defer func() {
				if r := recover(); r != nil {
					errs[w] = fmt.Errorf("file changed while being checksummed: %v", r)
				}
			}()
			for k := w; k < n; k += workers {
				i := which[k]
				end := min((i+1)*ChunkSize, len(data))
				sums[k] = xxh3.Hash(data[i*ChunkSize : end])
			}
		}()
	}
	wg.Wait()
	return sums, errors.Join(errs...)
}

// syncFile forces one file to stable storage.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := fsync(f); err != nil {
		return fmt.Errorf("fsync %q: %w", path, err)
	}
	return nil
}

// fsync is (*os.File).Sync; the tests count it.
var fsync = (*os.File).Sync

// writeManifest writes m as dir/MANIFEST.json (Store.Sync makes it durable).
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

// VerifyDir checks every file the manifest in dir lists: present, same size, same checksums.
// It also refuses CRIU images that are present but unlisted, since CRIU would read them.
func VerifyDir(dir string) (*Manifest, error) {
	return VerifyDirKnown(dir, nil)
}

// VerifyDirKnown is VerifyDir for a set some of whose bytes are already known to be
// what its manifest says: known[name][i] true means that chunk i of file name (its
// bytes [i*ChunkSize, (i+1)*ChunkSize)) is not read again. That is for a set built
// from a verified one: a chunk copied from the same offsets of a verified file whose
// manifest gives that chunk the same extent and checksum holds what the new manifest
// says, so only the chunks that were written anew need reading. Every listed file is
// still checked for presence, size and a checksum count that fits its size, and every
// chunk not known is checksummed.
func VerifyDirKnown(dir string, known map[string][]bool) (*Manifest, error) {
	m, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	listed := make(map[string]bool, len(m.Files))
	for _, want := range m.Files {
		listed[want.Name] = true
		if err := checkFile(filepath.Join(dir, want.Name), want, known[want.Name]); err != nil {
			return nil, fmt.Errorf("%w: %q in %q: %v", ErrCorrupt, want.Name, dir, err)
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

// chunkCount is how many ChunkSize checksums a file of size bytes has.
func chunkCount(size int64) int {
	return int((size + ChunkSize - 1) / ChunkSize)
}

// checkFile compares the file at path with want, reading only the chunks known does
// not mark.
func checkFile(path string, want FileSum, known []bool) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != want.Size {
		return fmt.Errorf("%d bytes, manifest says %d", fi.Size(), want.Size)
	}
	if len(want.XXH3) != chunkCount(want.Size) {
		return fmt.Errorf("manifest has %d checksums for %d bytes", len(want.XXH3), want.Size)
	}
	var which []int
	for i := range want.XXH3 {
		if i >= len(known) || !known[i] {
			which = append(which, i)
		}
	}
	if len(which) == 0 {
		return nil
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(want.Size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map: %w", err)
	}
	defer unix.Munmap(data)
	sums, err := chunkSums(data, which)
	if err != nil {
		return err
	}
	for k, i := range which {
		if sums[k] != want.XXH3[i] {
			return fmt.Errorf("fails its checksum (chunk %d)", i)
		}
	}
	return nil
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
