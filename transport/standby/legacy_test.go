package standby

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/checkpoint/delta"
	"github.com/ftrun/ftrun/transport/frame"
)

// UseCopyingCommit makes s build every epoch the way the standby did before it linked
// unchanged files and verified only what changed: copy every unchanged file from the
// base, rewrite each pages file whole through user space, checksum the set twice
// (verify, then commit) and fsync all of it. Benchmarks measure both in one run.
func UseCopyingCommit(s *Store) { s.build = (*incoming).buildCopying }

func (in *incoming) buildCopying(_ *checkpoint.Manifest, listed map[string]bool, manifest []byte) *epochError {
	if !in.begin.Full {
		if len(in.pages) != 0 {
			if err := rewritePages(in.baseDir, in.pages, in.pending.Dir); err != nil {
				return classify("apply page deltas", err)
			}
		}
		for name := range listed {
			dst := filepath.Join(in.pending.Dir, name)
			if _, err := os.Lstat(dst); err == nil {
				continue
			}
			if err := copyWhole(filepath.Join(in.baseDir, name), dst); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return badBase("%q is neither sent nor in base epoch %d", name, in.begin.BaseEpoch)
				}
				return classify("copy "+name+" from base", err)
			}
		}
	}
	if err := writeFile(filepath.Join(in.pending.Dir, checkpoint.ManifestName), manifest); err != nil {
		return classify("write manifest", err)
	}
	verified, err := checkpoint.VerifyDir(in.pending.Dir)
	if err != nil {
		return classify("verify", err)
	}
	p := in.pending
	in.pending = nil
	set, err := p.Commit(verified)
	if err != nil {
		return classify("commit", err)
	}
	if err := in.svc.store.Sync(set); err != nil {
		_ = in.svc.store.Remove(set)
		return classify("sync", err)
	}
	return nil
}

// rewritePages is the earlier DeltaPages: delta.Apply in a scratch directory, then
// the pages files it wrote moved into outDir.
func rewritePages(baseDir string, pages []frame.PageDelta, outDir string) error {
	d, err := collectPages(pages, outDir)
	if err != nil {
		return err
	}
	scratch, err := os.MkdirTemp(outDir, ".apply-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	if err := delta.Apply(baseDir, d, scratch); err != nil {
		return fmt.Errorf("%w: %w", checkpoint.ErrCorrupt, err)
	}
	ents, err := os.ReadDir(scratch)
	if err != nil {
		return err
	}
	for _, e := range ents {
		dst := filepath.Join(outDir, e.Name())
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		if err := os.Rename(filepath.Join(scratch, e.Name()), dst); err != nil {
			return err
		}
	}
	return nil
}

func copyWhole(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
