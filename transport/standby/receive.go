package standby

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/checkpoint/delta"
	"github.com/ftrun/ftrun/transport/auth"
	"github.com/ftrun/ftrun/transport/frame"
)

// Bounds on one epoch's metadata, which stays in memory while its data goes to
// disk: far above what a real program's epoch holds (files: a few per process;
// runs: one per changed or unchanged stretch of memory), far below what would
// strain a standby (a run costs a few tens of bytes).
const (
	maxEpochFiles = 1 << 16
	maxEpochRuns  = 1 << 22
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
	err = fmt.Errorf("%s: %w", what, checkpoint.MarkNoSpace(err))
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
	// base is the manifest of the base set, which was verified against its files
	// (and made durable) by this process before the epoch began.
	base    *checkpoint.Manifest
	pending *checkpoint.Pending
	applier PageApplier
	// cached: commit without waiting for the disk (the primary acks from memory).
	cached bool

	// received names every file that arrived, whole or as a FileDelta.
	received map[string]bool
	cur      *os.File
	curName  string
	curOff   uint64
	pages    []frame.PageDelta
	// blocks are the files rebuilt from FileDeltas, by name.
	blocks map[string]*blockFile
	// spill holds the page data of pages (whose runs' Data stay nil) until the
	// commit: an epoch in flight takes disk, not memory, whatever a peer sends.
	spill *spill
	// basePages is how many pages the base's pages files hold, copied how many of
	// them the page deltas so far copy, runs how many runs and blocks arrived: all
	// bounded, so that metadata cannot grow without the data to back it.
	basePages, copied uint64
	runs              int
	// charge counts bytes this epoch will take on disk against the quota of the
	// service's certificate; onEnd closes the account. Both may be nil.
	charge func(int64) error
	onEnd  func()
	// retired is the older set taken out of the store so that its files are written
	// over (see retireOlder); it goes when the epoch ends, committed or not. older is
	// its manifest and chain what its successor, the base, changed of it.
	retired string
	older   *checkpoint.Manifest
	chain   *chain
	tried   bool // retireOlder ran
	fail    *epochError
	// now times the commit's phases (nil: the phases are not timed); took is what
	// build measured, for the Ack of a primary that asks for it.
	now  func() time.Time
	took frame.AckPhases
}

// since is the time from t to now in nanoseconds, with the time now as it was read.
func (in *incoming) since(t time.Time) (uint64, time.Time) {
	if in.now == nil {
		return 0, t
	}
	n := in.now()
	return uint64(max(n.Sub(t), 0)), n
}

// beginEpoch checks that the epoch can be received (for a delta: its base is this
// service's newest committed epoch and still verifies) and opens its pending
// directory. A refused epoch still yields an incoming, which drops its frames.
func beginEpoch(svc *service, epoch uint64, b frame.EpochBegin, applier PageApplier) *incoming {
	in := &incoming{svc: svc, epoch: epoch, begin: b, applier: applier, received: map[string]bool{}, blocks: map[string]*blockFile{}}
	svc.mu.Lock()
	defer svc.mu.Unlock()
	if b.Files > maxEpochFiles {
		in.fail = corrupt("EpochBegin announces %d files, more than the %d an epoch may hold", b.Files, maxEpochFiles)
		return in
	}
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
		var base checkpoint.Set
		for _, set := range sets {
			if set.Epoch == b.BaseEpoch {
				base = set
			}
		}
		if base.Dir == "" {
			in.fail = badBase("base epoch %d is gone from the store", b.BaseEpoch)
			return in
		}
		in.baseDir = base.Dir
		if svc.verified != b.BaseEpoch {
			// A set found on disk: check it once, and make it durable, since a set
			// left by a crash between its rename and its fsync may still be only in
			// the page cache, and the next epoch hard-links its files.
			m, err := checkpoint.VerifyDir(base.Dir)
			if err != nil {
				in.fail = badBase("base epoch %d does not verify: %v", b.BaseEpoch, err)
				return in
			}
			if err := svc.store.Sync(base); err != nil {
				in.fail = classify("sync base epoch", err)
				return in
			}
			svc.verified, in.base = b.BaseEpoch, m
		} else {
			m, err := checkpoint.ReadManifest(base.Dir)
			if err != nil {
				in.fail = badBase("base epoch %d: %v", b.BaseEpoch, err)
				return in
			}
			in.base = m
		}
		for _, f := range in.base.Files {
			if strings.HasPrefix(f.Name, "pages-") {
				in.basePages += uint64(f.Size) / delta.PageSize
			}
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
	if in.spill != nil {
		in.spill.close()
		in.spill = nil
	}
	if in.onEnd != nil {
		in.onEnd()
		in.onEnd = nil
	}
	if in.pending != nil {
		_ = in.pending.Abort()
		in.pending = nil
	}
	if in.retired != "" {
		_ = os.RemoveAll(in.retired)
		in.retired = ""
	}
}

// image takes one chunk of a whole file. Chunks of a file come in order and files one
// after another, so one open file is enough and a gap or an overlap is corruption.
func (in *incoming) image(d *frame.ImageData) {
	if in.fail != nil {
		return
	}
	if e := in.take(int64(len(d.Data))); e != nil {
		in.failWith(e)
		return
	}
	if in.cur == nil {
		if in.received[d.Name] {
			in.failWith(corrupt("%q sent twice", d.Name))
			return
		}
		if len(in.received)+len(in.blocks) >= int(in.begin.Files) {
			in.failWith(corrupt("%q is one file more than the %d EpochBegin announced", d.Name, in.begin.Files))
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
	writtenBack(in.cur, int64(in.curOff), int64(len(d.Data)))
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

// take counts n bytes of this epoch against the quota.
func (in *incoming) take(n int64) *epochError {
	if in.charge == nil {
		return nil
	}
	if err := in.charge(n); err != nil {
		return &epochError{code: frame.NackDiskFull, err: err}
	}
	return nil
}

// pageDelta checks one frame of page runs against what bounds it (the base's
// pages, the quota) and spills its page data to disk: only the runs' addresses and
// offsets stay in memory.
func (in *incoming) pageDelta(p *frame.PageDelta) {
	if in.fail != nil {
		return
	}
	switch {
	case in.begin.Full:
		in.failWith(corrupt("page delta for %q in a full epoch", p.Pagemap))
		return
	case len(p.Pages)+len(p.CopyRuns) == 0:
		in.failWith(corrupt("page delta for %q carries no run", p.Pagemap))
		return
	case !plainName(p.Pagemap):
		in.failWith(corrupt("page delta for %q, which is not a file name of a set", p.Pagemap))
		return
	}
	if in.runs += len(p.Pages) + len(p.CopyRuns); in.runs > maxEpochRuns {
		in.failWith(corrupt("more than %d page runs in one epoch", maxEpochRuns))
		return
	}
	var copied, shipped uint64
	for _, c := range p.CopyRuns {
		copied += uint64(c.NrPages)
	}
	if in.copied += copied; in.copied > in.basePages {
		in.failWith(corrupt("page deltas copy %d pages from a base that holds %d (%v)", in.copied, in.basePages, delta.ErrTooBig))
		return
	}
	for _, r := range p.Pages {
		shipped += uint64(len(r.Data))
	}
	// The rebuilt pages files take the copied pages too.
	if e := in.take(int64(shipped + copied*delta.PageSize)); e != nil {
		in.failWith(e)
		return
	}
	kept := frame.PageDelta{Pagemap: p.Pagemap, CopyRuns: p.CopyRuns, Pages: make([]frame.PageRun, len(p.Pages))}
	for i, r := range p.Pages {
		if in.spill == nil {
			sp, err := newSpill(in.pending.Dir)
			if err != nil {
				in.failWith(classify("spill page deltas", err))
				return
			}
			in.spill = sp
		}
		off, err := in.spill.write(r.Data)
		if err != nil {
			in.failWith(classify("spill page deltas", err))
			return
		}
		kept.Pages[i] = frame.PageRun{Vaddr: r.Vaddr}
		in.spill.runs = append(in.spill.runs, spillRun{frame: len(in.pages), run: i, off: off, n: int64(len(r.Data))})
	}
	in.pages = append(in.pages, kept)
}

// fileDelta rebuilds a file of the set (a synced state file) from its base copy and
// the blocks that changed: its first frame makes the file (see startBlockFile), every
// frame writes its blocks. Whether the result is right, the verification against the
// manifest at commit tells.
func (in *incoming) fileDelta(p *frame.FileDelta) {
	if in.fail != nil {
		return
	}
	name := p.Path
	switch {
	case in.begin.Full:
		in.failWith(corrupt("file delta for %q in a full epoch", name))
		return
	case !plainName(name):
		in.failWith(corrupt("file delta for %q, which is not a file name of a set", name))
		return
	case p.Deleted:
		in.failWith(corrupt("file delta deletes %q; a file left out of the manifest is simply not taken", name))
		return
	case in.cur != nil:
		in.failWith(corrupt("file delta for %q while %q is incomplete", name, in.curName))
		return
	}
	bf := in.blocks[name]
	if bf == nil {
		if in.received[name] {
			in.failWith(corrupt("%q sent twice", name))
			return
		}
		if len(in.received)+len(in.blocks) >= int(in.begin.Files) {
			in.failWith(corrupt("%q is one file more than the %d EpochBegin announced", name, in.begin.Files))
			return
		}
		if e := in.take(int64(p.Size)); e != nil {
			in.failWith(e)
			return
		}
		in.svc.mu.Lock()
		in.retireOlder()
		in.svc.mu.Unlock()
		var e *epochError
		if bf, e = in.startBlockFile(name, int64(p.Size)); e != nil {
			in.failWith(e)
			return
		}
		in.blocks[name] = bf
		in.received[name] = true
	} else if bf.size != int64(p.Size) {
		in.failWith(corrupt("file delta for %q of %d bytes, earlier ones said %d", name, p.Size, bf.size))
		return
	}
	if in.runs += len(p.Blocks); in.runs > maxEpochRuns {
		in.failWith(corrupt("more than %d runs and blocks in one epoch", maxEpochRuns))
		return
	}
	if e := bf.write(in.pending.Dir, name, p.Blocks); e != nil {
		in.failWith(e)
	}
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
		return corrupt("%d files received, EpochBegin announced %d", len(in.received), in.begin.Files)
	}
	var m checkpoint.Manifest
	if err := json.Unmarshal(manifest, &m); err != nil {
		return corrupt("manifest: %v", err)
	}
	if m.Epoch != in.epoch {
		return corrupt("manifest is for epoch %d, not %d", m.Epoch, in.epoch)
	}
	if m.Service != in.svc.name {
		// What a take-over runs comes from the manifest: it must be this service's.
		return &epochError{code: frame.NackCorrupt, err: fmt.Errorf("%w: the manifest is of service %q, this connection's is %q", auth.ErrForbidden, m.Service, in.svc.name)}
	}
	listed := make(map[string]bool, len(m.Files))
	for _, f := range m.Files {
		if !plainName(f.Name) {
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
	} else if len(in.pages) != 0 {
		return corrupt("page deltas in a full epoch")
	}
	build := svc.build
	if build == nil {
		build = (*incoming).build
	}
	if e := build(in, &m, listed, manifest); e != nil {
		return e
	}
	svc.committed, svc.verified, svc.chain = in.epoch, in.epoch, in.nextChain()
	_, err := svc.store.Prune(keep, in.epoch)
	prune(err)
	return nil
}

// nextChain is what the next epoch needs to write over this one's base: the copy
// runs of this epoch's page deltas and the blocks of its file deltas. A full epoch,
// or one with neither, has none.
func (in *incoming) nextChain() *chain {
	if in.begin.Full || len(in.pages)+len(in.blocks) == 0 {
		return nil
	}
	c := &chain{epoch: in.epoch, base: in.begin.BaseEpoch, copies: map[string][]delta.CopyRun{}, blocks: map[string][]delta.Span{}}
	for name, bf := range in.blocks {
		c.blocks[name] = bf.blocks
	}
	for _, p := range in.pages {
		runs := c.copies[p.Pagemap]
		for _, r := range p.CopyRuns {
			runs = append(runs, delta.CopyRun{Vaddr: r.Vaddr, NrPages: r.NrPages})
		}
		c.copies[p.Pagemap] = runs
	}
	return c
}

// build turns the pending directory into the committed, durable set of m: it
// completes a delta epoch from the base, checks the result against the manifest
// (re-reading only what was written anew, see knownChunks) and commits it, fsyncing
// only the files written for it.
func (in *incoming) build(m *checkpoint.Manifest, listed map[string]bool, manifest []byte) *epochError {
	origins := map[string]origin{}
	var t time.Time
	if in.now != nil {
		t = in.now()
	}
	if !in.begin.Full {
		if e := in.fromBase(listed, origins); e != nil {
			return e
		}
	}
	in.took.ApplyNs, t = in.since(t)
	if err := writeFile(filepath.Join(in.pending.Dir, checkpoint.ManifestName), manifest); err != nil {
		return classify("write manifest", err)
	}
	if e := onlyListed(in.pending.Dir, listed); e != nil {
		return e
	}
	verified, err := checkpoint.VerifyDirKnown(in.pending.Dir, knownChunks(m, origins))
	if err != nil {
		return classify("verify", err)
	}
	in.took.VerifyNs, t = in.since(t)
	p := in.pending
	in.pending = nil // a failed commit removes the directory itself
	commit := func() (checkpoint.Set, error) { return p.CommitDurable(verified, written(m, origins)) }
	if in.cached {
		commit = func() (checkpoint.Set, error) { return p.CommitCached(verified) }
	}
	if _, err := commit(); err != nil {
		// Not committed as asked: the primary must not release output on it.
		return classify("commit", err)
	}
	in.took.DurableNs, _ = in.since(t)
	return nil
}

// fromBase completes a delta epoch: page images through the applier, files rebuilt
// from FileDeltas as they are, then every listed file that did not travel is taken
// from the base, which holds it unchanged. Files of committed sets are never written
// again (the standby creates every file of a set new, and restores read a set without
// writing into it), so taking one is a hard link: no copy, and nothing to fsync but
// the directory. origins records how each file came to be.
func (in *incoming) fromBase(listed map[string]bool, origins map[string]origin) *epochError {
	if len(in.pages) != 0 {
		if e := in.applyPages(origins); e != nil {
			return e
		}
	}
	for name, bf := range in.blocks {
		from := in.base
		if bf.reused {
			from = in.older
		}
		if sum, err := fileSum(from, name); err == nil {
			origins[name] = bf.origin(sum)
		}
	}
	for name := range listed {
		dst := filepath.Join(in.pending.Dir, name)
		if _, err := os.Lstat(dst); err == nil {
			continue
		}
		o, err := takeFromBase(filepath.Join(in.baseDir, name), dst)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return badBase("%q is neither sent nor in base epoch %d", name, in.begin.BaseEpoch)
			}
			return classify("take "+name+" from base", err)
		}
		if o.from, err = fileSum(in.base, name); err == nil {
			origins[name] = o
		}
	}
	return nil
}

// applyPages rebuilds the pages files; with a PagePatcher, over the retired older
// set's where there is one (see retireOlder).
func (in *incoming) applyPages(origins map[string]origin) *epochError {
	pages, release, err := in.spill.load(in.pages)
	if err != nil {
		return classify("read spilled page deltas", err)
	}
	defer release()
	in.spill.close()
	in.spill = nil
	return in.applyLoaded(pages, origins)
}

// applyLoaded is applyPages with the page data in memory (mapped from the spill).
func (in *incoming) applyLoaded(pages []frame.PageDelta, origins map[string]origin) *epochError {
	pp, ok := in.applier.(PagePatcher)
	if !ok {
		if in.applier == nil {
			return corrupt("page deltas received, this standby has no page applier")
		}
		if err := in.applier.ApplyPages(in.baseDir, pages, in.pending.Dir); err != nil {
			return classify("apply page deltas", err)
		}
		return nil
	}
	in.retireOlder()
	var reuse *delta.Reuse
	if in.older != nil {
		reuse = &delta.Reuse{Dir: in.retired, Unchanged: in.chain.copies}
	}
	files, err := pp.PatchPages(in.baseDir, pages, in.pending.Dir, reuse)
	if err != nil {
		return classify("apply page deltas", err)
	}
	for _, f := range files {
		from := in.base
		if f.Reused {
			from = in.older
		}
		if f.Base == "" || from == nil {
			continue
		}
		if sum, err := fileSum(from, f.Base); err == nil {
			origins[f.Name] = origin{from: sum, same: f.Same}
		}
	}
	return nil
}

// retireOlder takes the set the base's epoch was a delta from out of the store (it
// would be pruned once this epoch commits) so that its files can be written over
// instead of copying the base's: where the program's memory layout held still, a
// pages file two epochs old needs only the pages that changed in the base's epoch or
// in this one, and so does a synced file's copy need only those blocks. That takes
// knowing what the base's epoch changed, so only a base this process committed as a
// delta qualifies. It runs once per epoch, when a file first needs it, with svc.mu
// held; any failure only means the base is copied instead.
func (in *incoming) retireOlder() {
	if in.tried || in.begin.Full {
		return
	}
	in.tried = true
	c := in.svc.chain
	if c == nil || c.epoch != in.begin.BaseEpoch || in.svc.committed != c.epoch {
		return
	}
	sets, err := in.svc.store.List()
	if err != nil {
		return
	}
	for _, set := range sets {
		if set.Epoch != c.base {
			continue
		}
		m, err := checkpoint.ReadManifest(set.Dir)
		if err != nil || m.Epoch != set.Epoch {
			return
		}
		dir, err := in.svc.store.Retire(set, true)
		if dir != "" {
			in.retired = dir
		}
		if err == nil {
			in.older, in.chain = m, c
		}
		return
	}
}

// fileSum is the entry of name in m.
func fileSum(m *checkpoint.Manifest, name string) (checkpoint.FileSum, error) {
	if f, ok := m.File(name); ok {
		return f, nil
	}
	return checkpoint.FileSum{}, fmt.Errorf("%q is not in the manifest of epoch %d", name, m.Epoch)
}

// takeFromBase hard-links the base's file src as dst or, where the filesystem refuses
// the link (too many links, no links at all), copies it.
func takeFromBase(src, dst string) (origin, error) {
	err := os.Link(src, dst)
	if err == nil {
		return origin{linked: true}, nil
	}
	if errors.Is(err, fs.ErrNotExist) {
		return origin{}, err
	}
	n, err := copyFile(src, dst)
	if err != nil {
		return origin{}, err
	}
	return origin{same: []delta.Span{{Off: 0, Len: n}}}, nil
}

// onlyListed refuses a pending set holding a file its manifest does not list: a
// committed set is exactly what the primary committed.
func onlyListed(dir string, listed map[string]bool) *epochError {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return classify("list pending set", err)
	}
	for _, e := range ents {
		if e.Name() != checkpoint.ManifestName && !listed[e.Name()] {
			return corrupt("%q is in the rebuilt set but not in the manifest", e.Name())
		}
	}
	return nil
}

// plainName says whether name can be a file of a set: a plain name, not the manifest.
func plainName(name string) bool {
	return name != "" && filepath.Base(name) == name && name != "." && name != ".." && name != checkpoint.ManifestName
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

// copyFile copies src to a new file dst (in the kernel, see checkpoint.CopyRange)
// and returns its size.
func copyFile(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return 0, err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	if err := checkpoint.CopyRange(out, in, 0, 0, fi.Size()); err != nil {
		out.Close()
		return 0, err
	}
	if err := out.Close(); err != nil {
		return 0, err
	}
	return fi.Size(), os.Chmod(dst, 0o600)
}
