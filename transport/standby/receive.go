package standby

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/transport/frame"
)

// PageApplier rebuilds the page images of a delta epoch from the base set and the
// page runs that changed. DeltaPages does it with checkpoint/delta; another
// implementation (say, with CRIU's own dirty tracking) plugs in here.
type PageApplier interface {
	// ApplyPages writes into outDir every image file the page deltas describe,
	// reading unchanged pages from baseDir. Files it does not write are taken whole
	// from the base or from the epoch's ImageData.
	ApplyPages(baseDir string, pages []frame.PageDelta, outDir string) error
}

// epochError is why an epoch was refused, in the terms the primary acts on.
type epochError struct {
	code frame.NackCode
	// resync asks the primary for a full epoch next (a ResyncRequest goes first).
	resync bool
	err    error
}

func (e *epochError) Error() string { return fmt.Sprintf("%s: %v", e.code, e.err) }
func (e *epochError) Unwrap() error { return e.err }

func corrupt(format string, args ...any) *epochError {
	return &epochError{code: frame.NackCorrupt, resync: true, err: fmt.Errorf(format, args...)}
}

func badBase(format string, args ...any) *epochError {
	return &epochError{code: frame.NackBadBase, resync: true, err: fmt.Errorf(format, args...)}
}

// classify turns a storage error into the answer it deserves: a full disk may clear
// up (the primary keeps its base), a corrupt set needs a full epoch, anything else
// is the standby's own problem.
func classify(what string, err error) *epochError {
	err = fmt.Errorf("%s: %w", what, noSpace(err))
	switch {
	case errors.Is(err, checkpoint.ErrNoSpace):
		return &epochError{code: frame.NackDiskFull, err: err}
	case errors.Is(err, checkpoint.ErrCorrupt):
		return &epochError{code: frame.NackCorrupt, resync: true, err: err}
	}
	return &epochError{code: frame.NackInternal, err: err}
}

// incoming is one epoch being received into a pending directory. After the first
// failure it keeps reading the epoch's frames (the stream stays in step) but drops
// them, and answers EpochCommit with the failure.
type incoming struct {
	svc     *service
	epoch   uint64
	begin   frame.EpochBegin
	baseDir string
	pending *checkpoint.Pending
	applier PageApplier

	received map[string]bool
	cur      *os.File
	curName  string
	curOff   uint64
	pages    []frame.PageDelta
	fail     *epochError
}

// beginEpoch checks that the epoch can be received (for a delta: its base is this
// service's newest committed epoch and still verifies) and opens its pending
// directory. A refused epoch still yields an incoming, which drops its frames.
func beginEpoch(svc *service, epoch uint64, b frame.EpochBegin, applier PageApplier) *incoming {
	in := &incoming{svc: svc, epoch: epoch, begin: b, applier: applier, received: map[string]bool{}}
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if epoch <= svc.committed {
		in.fail = &epochError{code: frame.NackInternal, err: fmt.Errorf("epoch %d is not after committed epoch %d", epoch, svc.committed)}
		return in
	}
	if !b.Full {
		if svc.committed == 0 || b.BaseEpoch != svc.committed {
			in.fail = badBase("delta against epoch %d, newest committed here is %d", b.BaseEpoch, svc.committed)
			return in
		}
		sets, err := svc.store.List()
		if err != nil {
			in.fail = classify("list epochs", err)
			return in
		}
		for _, set := range sets {
			if set.Epoch == b.BaseEpoch {
				in.baseDir = set.Dir
			}
		}
		if in.baseDir == "" {
			in.fail = badBase("base epoch %d is gone from the store", b.BaseEpoch)
			return in
		}
		if svc.verified != b.BaseEpoch {
			if _, err := checkpoint.VerifyDir(in.baseDir); err != nil {
				in.fail = badBase("base epoch %d does not verify: %v", b.BaseEpoch, err)
				return in
			}
			svc.verified = b.BaseEpoch
		}
	}
	p, err := svc.store.Begin(epoch)
	if err != nil {
		in.fail = classify("begin", err)
		return in
	}
	in.pending = p
	return in
}

// failWith records the first failure and frees the pending directory at once, so a
// full disk is not kept full by the rest of a set that will not be committed.
func (in *incoming) failWith(e *epochError) {
	if in.fail == nil {
		in.fail = e
	}
	in.abort()
}

// abort drops everything received; committed sets are untouched.
func (in *incoming) abort() {
	if in.cur != nil {
		in.cur.Close()
		in.cur = nil
	}
	if in.pending != nil {
		_ = in.pending.Abort()
		in.pending = nil
	}
}

// image takes one chunk of a whole file. Chunks of a file come in order and files one
// after another, so one open file is enough and a gap or an overlap is corruption.
func (in *incoming) image(d *frame.ImageData) {
	if in.fail != nil {
		return
	}
	if in.cur == nil {
		if in.received[d.Name] {
			in.failWith(corrupt("%q sent twice", d.Name))
			return
		}
		if d.Offset != 0 {
			in.failWith(corrupt("%q starts at offset %d", d.Name, d.Offset))
			return
		}
		f, err := os.OpenFile(filepath.Join(in.pending.Dir, d.Name), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			in.failWith(classify("create "+d.Name, err))
			return
		}
		in.cur, in.curName, in.curOff = f, d.Name, 0
	} else if d.Name != in.curName || d.Offset != in.curOff {
		in.failWith(corrupt("got %q at offset %d while %q is at offset %d", d.Name, d.Offset, in.curName, in.curOff))
		return
	}
	if _, err := in.cur.Write(d.Data); err != nil {
		in.failWith(classify("write "+d.Name, err))
		return
	}
	in.curOff += uint64(len(d.Data))
	if d.Last {
		err := in.cur.Close()
		if err == nil {
			// Images hold the program's memory: owner-only, whatever the umask.
			err = os.Chmod(filepath.Join(in.pending.Dir, d.Name), 0o600)
		}
		in.cur = nil
		if err != nil {
			in.failWith(classify("close "+d.Name, err))
			return
		}
		in.received[d.Name] = true
	}
}

func (in *incoming) pageDelta(p *frame.PageDelta) {
	if in.fail != nil {
		return
	}
	if in.begin.Full {
		in.failWith(corrupt("page delta for %q in a full epoch", p.Pagemap))
		return
	}
	in.pages = append(in.pages, *p)
}

// fileDelta refuses changes to the program's own files: where they live on the
// standby is not decided yet, and silently dropping them would restore a program
// whose files do not match its memory.
func (in *incoming) fileDelta(p *frame.FileDelta) {
	if in.fail != nil {
		return
	}
	in.failWith(&epochError{code: frame.NackInternal, err: fmt.Errorf("file delta for %q: not supported by this standby", p.Path)})
}

// commit rebuilds the complete set, verifies it against the primary's manifest,
// commits it atomically and makes it durable. Only a nil return may be acked.
func (in *incoming) commit(manifest []byte, prune func(error)) *epochError {
	defer in.abort()
	if in.fail != nil {
		return in.fail
	}
	if in.cur != nil {
		return corrupt("%q ended at %d bytes without its last chunk", in.curName, in.curOff)
	}
	if len(in.received) != int(in.begin.Files) {
		return corrupt("%d whole files received, EpochBegin announced %d", len(in.received), in.begin.Files)
	}
	var m checkpoint.Manifest
	if err := json.Unmarshal(manifest, &m); err != nil {
		return corrupt("manifest: %v", err)
	}
	if m.Epoch != in.epoch {
		return corrupt("manifest is for epoch %d, not %d", m.Epoch, in.epoch)
	}
	listed := make(map[string]bool, len(m.Files))
	for _, f := range m.Files {
		if filepath.Base(f.Name) != f.Name || f.Name == checkpoint.ManifestName || f.Name == "." || f.Name == ".." {
			return corrupt("manifest lists %q", f.Name)
		}
		listed[f.Name] = true
	}
	for name := range in.received {
		if !listed[name] {
			return corrupt("%q was sent but is not in the manifest", name)
		}
	}

	svc := in.svc
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if in.epoch <= svc.committed {
		return &epochError{code: frame.NackInternal, err: fmt.Errorf("epoch %d is not after committed epoch %d", in.epoch, svc.committed)}
	}
	if !in.begin.Full {
		// Another connection for the same service may have committed meanwhile.
		if in.begin.BaseEpoch != svc.committed {
			return badBase("base epoch %d is no longer the newest (%d)", in.begin.BaseEpoch, svc.committed)
		}
		if e := in.fromBase(listed); e != nil {
			return e
		}
	} else if len(in.pages) != 0 {
		return corrupt("page deltas in a full epoch")
	}
	if err := writeFile(filepath.Join(in.pending.Dir, checkpoint.ManifestName), manifest); err != nil {
		return classify("write manifest", err)
	}
	verified, err := checkpoint.VerifyDir(in.pending.Dir)
	if err != nil {
		return classify("verify", err)
	}
	p := in.pending
	in.pending = nil // Commit removes the directory itself on failure
	set, err := p.Commit(verified)
	if err != nil {
		return classify("commit", err)
	}
	if err := svc.store.Sync(set); err != nil {
		// Not durable means not committed: the primary must not release output on it.
		_ = svc.store.Remove(set)
		return classify("sync", err)
	}
	svc.committed, svc.verified = in.epoch, in.epoch
	_, err = svc.store.Prune(keep, in.epoch)
	prune(err)
	return nil
}

// fromBase completes a delta epoch: page images through the applier, then every
// listed file that did not travel is copied from the base (it did not change).
func (in *incoming) fromBase(listed map[string]bool) *epochError {
	if len(in.pages) != 0 {
		if in.applier == nil {
			return corrupt("page deltas received, this standby has no page applier")
		}
		if err := in.applier.ApplyPages(in.baseDir, in.pages, in.pending.Dir); err != nil {
			return classify("apply page deltas", err)
		}
	}
	for name := range listed {
		dst := filepath.Join(in.pending.Dir, name)
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		if err := copyFile(filepath.Join(in.baseDir, name), dst); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return badBase("%q is neither sent nor in base epoch %d", name, in.begin.BaseEpoch)
			}
			return classify("copy "+name+" from base", err)
		}
	}
	return nil
}

func writeFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

func copyFile(src, dst string) error {
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
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, 0o600)
}
