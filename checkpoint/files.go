package checkpoint

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
)

// RequiredFile is a regular file a restore of an image set opens by path: the
// program's binary, its libraries, files it has open.
type RequiredFile struct {
	Path string
	Size int64
}

// RequiredFiles lists the regular files the image set in dir refers to, from CRIU's
// files.img. A restore on another host fails when one is missing or has another size,
// so a standby checks them when it first receives a service, not at failover.
func RequiredFiles(dir string) ([]RequiredFile, error) {
	files, err := filesOfType(dir, fdinfo.FdTypes_REG)
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []RequiredFile
	for _, fe := range files {
		reg := fe.GetReg()
		if reg == nil {
			continue
		}
		name := reg.GetName()
		// Pseudo file systems come with the kernel, not with the host's disk; unlinked
		// files travel inside the images (CRIU's ghost files).
		if name == "" || seen[name] || strings.HasPrefix(name, "/proc/") || strings.HasPrefix(name, "/sys/") ||
			strings.HasPrefix(name, "/dev/") || strings.HasSuffix(name, " (deleted)") {
			continue
		}
		seen[name] = true
		out = append(out, RequiredFile{Path: name, Size: int64(reg.GetSize())})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out, nil
}

// MissingFiles returns, one line each, the required files this host lacks or has with
// another size, leaving out those under the synced roots (they travel with the set).
func MissingFiles(required []RequiredFile, synced []string) []string {
	var out []string
	for _, r := range required {
		if UnderAny(r.Path, synced) {
			continue
		}
		fi, err := os.Stat(r.Path)
		switch {
		case err != nil:
			out = append(out, fmt.Sprintf("%s: missing on this host", r.Path))
		case r.Size > 0 && fi.Size() != r.Size:
			out = append(out, fmt.Sprintf("%s: %d bytes here, %d on the primary", r.Path, fi.Size(), r.Size))
		}
	}
	return out
}

// UnderAny reports whether path p is one of roots or lies below one of them.
func UnderAny(p string, roots []string) bool {
	for _, r := range roots {
		if p == r || strings.HasPrefix(p, strings.TrimSuffix(r, "/")+"/") {
			return true
		}
	}
	return false
}

// filesOfType lists the entries of the image set's files.img of type t.
func filesOfType(dir string, t fdinfo.FdTypes) ([]*fdinfo.FileEntry, error) {
	entries, err := decodeImage(filepath.Join(dir, "files.img"), &fdinfo.FileEntry{})
	if err != nil {
		return nil, err
	}
	var out []*fdinfo.FileEntry
	for _, e := range entries {
		if fe, ok := e.(*fdinfo.FileEntry); ok && fe.GetType() == t {
			out = append(out, fe)
		}
	}
	return out, nil
}
