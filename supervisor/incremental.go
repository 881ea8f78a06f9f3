package supervisor

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/checkpoint/delta"
	"github.com/ftrun/ftrun/checkpoint/dirty"
	"github.com/ftrun/ftrun/internal/procfs"
	"github.com/ftrun/ftrun/supervisor/epochs"
)

// DirtyMode is how the program's written pages are told, for incremental dumps.
type DirtyMode string

const (
	// DirtyAuto picks the first of DirtySoftDirty and DirtyUffdWP this kernel has
	// (what `ftrun check` probes), else DirtyOff.
	DirtyAuto DirtyMode = "auto"
	// DirtyUffdWP: userfaultfd async write-protection, registered by ftrun in each
	// of the program's processes, read and reset by the project's CRIU patch, which
	// uses it exactly where the kernel has no soft-dirty bits.
	DirtyUffdWP DirtyMode = "uffd-wp"
	// DirtySoftDirty: the kernel's soft-dirty bits, CRIU's own --track-mem.
	DirtySoftDirty DirtyMode = "soft-dirty"
	// DirtyOff: every dump is a full one.
	DirtyOff DirtyMode = "off"
)

// DefaultDirtyMode is `ftrun run`'s and `ftrun standby`'s --incremental: whatever
// this kernel has, full dumps where it has nothing.
const DefaultDirtyMode = DirtyAuto

// DefaultFullEvery is how many dumps in a row may be incremental before a full one.
const DefaultFullEvery = 100

// ChooseDirtyMode resolves DirtyAuto for this kernel; any other mode is checked to be
// available. The error names what is missing.
func ChooseDirtyMode(m DirtyMode, criuPath string) (DirtyMode, error) {
	uffd := func() error {
		if r := dirty.Probe(); !r.OK {
			return errors.New(r.Detail)
		}
		return checkpoint.Prober{Path: criuPath}.UffdWP()
	}
	return chooseDirtyMode(m, uffd, checkpoint.Prober{Path: criuPath}.SoftDirty)
}

// chooseDirtyMode is the rule of ChooseDirtyMode, given the two probes.
func chooseDirtyMode(m DirtyMode, uffd, soft func() error) (DirtyMode, error) {
	switch m {
	case DirtyOff:
		return DirtyOff, nil
	case DirtyUffdWP:
		if soft() == nil {
			return "", errors.New("--incremental uffd-wp: this kernel has soft-dirty bits, which CRIU uses instead; use --incremental soft-dirty or auto")
		}
		if err := uffd(); err != nil {
			return "", fmt.Errorf("--incremental uffd-wp: this kernel cannot track written pages by write-protection (%v); use --incremental auto or off", err)
		}
		return DirtyUffdWP, nil
	case DirtySoftDirty:
		if err := soft(); err != nil {
			return "", fmt.Errorf("--incremental soft-dirty: this kernel has no soft-dirty bits (%v); use --incremental auto or off", err)
		}
		return DirtySoftDirty, nil
	case DirtyAuto, "":
		if soft() == nil {
			return DirtySoftDirty, nil
		}
		if uffd() == nil {
			return DirtyUffdWP, nil
		}
		return DirtyOff, nil
	}
	return "", fmt.Errorf("--incremental %q: want auto, uffd-wp, soft-dirty or off", m)
}

// incremental decides which dumps may leave pages in their parent, and holds what
// tracking needs between dumps: the set the last tracked dump produced, and (for
// DirtyUffdWP) a userfaultfd per process of the program.
//
// The one invariant: a page a tracked dump finds neither written nor outside
// tracking is unchanged since the dump that produced parent. Every dump resets
// tracking as it ends (CRIU protects what it saved, still frozen), so parent is
// valid only while the last dump that ran was committed, in the same incarnation;
// anything else (a failed dump or commit, a restore, a new program) makes the next
// dump a full one.
type incremental struct {
	mode      DirtyMode
	fullEvery int
	log       *slog.Logger

	parent      string // the committed set of the last tracked dump; "" after a failure
	parentEpoch uint64 // its epoch
	parentInc   int    // the incarnation it was dumped from
	dumpParent  uint64 // the epoch of the parent of the dump under way
	// history are the pages each committed incremental dump wrote, by epoch: what
	// changed between an older set and the parent (see reusable).
	history  map[uint64]dumpRecord
	inRow    int // incremental dumps since the last full one
	trackers map[int]*tracked
	failed   map[int]bool // processes whose tracking failed, not tried again
}

type tracked struct {
	t     *dirty.Tracker
	start uint64
}

func newIncremental(mode DirtyMode, fullEvery int, log *slog.Logger) *incremental {
	if fullEvery <= 0 {
		fullEvery = DefaultFullEvery
	}
	return &incremental{mode: mode, fullEvery: fullEvery, log: log, trackers: map[int]*tracked{}, failed: map[int]bool{}, history: map[uint64]dumpRecord{}}
}

// String is what status says of the mode.
func (inc *incremental) String() string {
	if !inc.on() {
		return string(DirtyOff)
	}
	return string(inc.mode)
}

// on says whether dumps track memory at all.
func (inc *incremental) on() bool { return inc != nil && inc.mode != DirtyOff && inc.mode != "" }

// parentFor is the rule: the set the next dump (of incarnation) may leave pages in,
// or "" for a full one.
func parentFor(parent string, parentInc, incarnation, inRow, fullEvery int) string {
	if parent == "" || parentInc != incarnation || inRow >= fullEvery {
		return ""
	}
	return parent
}

// prepare readies tracking for the dump o of procs (the program's processes): it
// tracks processes not tracked yet, registers their new mappings, forgets those gone,
// and sets o's TrackMem and ParentDir. The final dump, after which the program is
// gone, is a full one: nothing may stand between it and a standalone set.
func (inc *incremental) prepare(o *checkpoint.Options, procs []int, incarnation int, final bool) {
	if !inc.on() || final {
		return
	}
	parent, parentEpoch := inc.parent, inc.parentEpoch
	if inc.mode == DirtyUffdWP {
		inc.track(procs)
		if !inc.on() { // a process is under another's write-protection
			return
		}
		if !inc.noForeign(procs) {
			if !inc.on() {
				return
			}
			parent = "" // this dump saves every page
		}
	}
	o.TrackMem = true
	parent = parentFor(parent, inc.parentInc, incarnation, inc.inRow, inc.fullEvery)
	// Until this dump commits, no set is a valid parent: it resets tracking.
	inc.dropParent()
	if parent == "" {
		return
	}
	if rel, err := filepath.Rel(o.ImagesDir, parent); err == nil {
		o.ParentDir, inc.dumpParent = rel, parentEpoch
	}
}

// dropParent makes the next dump a full one.
func (inc *incremental) dropParent() {
	if inc != nil {
		inc.parent = ""
	}
}

// committed records the set a tracked dump of incarnation produced: the next dump's
// parent. written are the pages it wrote per pagemap when it left the rest in its
// own parent (an incremental dump), nil for a full one.
func (inc *incremental) committed(set checkpoint.Set, incarnation int, written map[string][]delta.CopyRun) {
	if !inc.on() {
		return
	}
	if written != nil {
		inc.inRow++
		inc.history[set.Epoch] = dumpRecord{parent: inc.dumpParent, written: written}
	} else {
		inc.inRow = 0
		clear(inc.history) // no chain reaches past a full set
	}
	inc.parent, inc.parentEpoch, inc.parentInc = set.Dir, set.Epoch, incarnation
}

// dumpRecord is what one committed incremental dump wrote, and over which set.
type dumpRecord struct {
	parent  uint64                     // the epoch of the set it left the rest in
	written map[string][]delta.CopyRun // per pagemap, the pages it wrote
}

// reusable is the rule that lets a commit write over a set the store is about to
// drop instead of copying its parent whole (delta.Retired): of drop (the sets the
// store will drop once the new epoch commits, newest first) it picks the newest that
// the chain of recorded dumps leads back to from parent, the new dump's parent, and
// returns it with the pages written since, per pagemap. Only a pagemap every dump
// of the chain had may be taken (a process that was not in one of them may have left
// and its pid come back). below, when not 0, bounds the set picked from above (see
// retiredFor).
func reusable(drop []checkpoint.Set, parent, below uint64, history map[uint64]dumpRecord) (checkpoint.Set, map[string][]delta.CopyRun, bool) {
	dropping := map[uint64]checkpoint.Set{}
	oldest := uint64(math.MaxUint64)
	for _, set := range drop {
		if below == 0 || set.Epoch < below {
			dropping[set.Epoch] = set
			oldest = min(oldest, set.Epoch)
		}
	}
	var since map[string][]delta.CopyRun
	for cur, steps := parent, 0; steps <= len(history) && cur >= oldest; steps++ {
		if set, ok := dropping[cur]; ok && since != nil {
			// Nothing to take when no pagemap was in every dump of the chain.
			return set, since, len(since) > 0
		}
		rec, ok := history[cur]
		if !ok {
			return checkpoint.Set{}, nil, false
		}
		if since == nil {
			since = map[string][]delta.CopyRun{}
			for name, runs := range rec.written {
				since[name] = slices.Clone(runs)
			}
		} else {
			for name, runs := range since {
				more, ok := rec.written[name]
				if !ok {
					delete(since, name)
					continue
				}
				since[name] = append(runs, more...)
			}
		}
		cur = rec.parent
	}
	return checkpoint.Set{}, nil, false
}

// retireBelow is the epoch a set must be older than to be written over (0: none
// may): the newest durable set's, since fsyncs run in epoch order and none will touch
// an older set again, and with a standby also the standby's newest, since a newer one
// may be on its way to it.
func retireBelow(pins epochs.Pins, standby bool) uint64 {
	if standby {
		return min(pins.Durable, pins.Acked)
	}
	return pins.Durable
}

// forgetBefore drops the records of dumps older than epoch: no set the store still
// holds is reached through them.
func (inc *incremental) forgetBefore(epoch uint64) {
	for e := range inc.history {
		if e < epoch {
			delete(inc.history, e)
		}
	}
}

// track keeps one Tracker per live process of procs.
func (inc *incremental) track(procs []int) {
	live := map[int]bool{}
	for _, pid := range procs {
		live[pid] = true
		start, err := procStartTime(pid)
		if err != nil {
			continue
		}
		if tr, ok := inc.trackers[pid]; ok && tr.start == start {
			_, err := tr.t.Refresh()
			switch {
			case err == nil:
				continue
			case errors.Is(err, dirty.ErrForeign):
				inc.stop(err)
				return
			case !errors.Is(err, dirty.ErrGone):
				inc.log.Debug("register new mappings for dirty tracking", "pid", pid, "err", err)
				continue
			}
		}
		inc.forget(pid)
		if inc.failed[pid] || !trackable(pid) {
			continue
		}
		t, err := dirty.Track(pid)
		if errors.Is(err, dirty.ErrForeign) {
			inc.stop(err)
			return
		}
		if err != nil {
			// Untracked memory is dumped whole: slower, never wrong.
			inc.failed[pid] = true
			inc.log.Warn("cannot track the written pages of a process; its memory is dumped whole every epoch", "pid", pid, "err", err)
			continue
		}
		inc.trackers[pid] = &tracked{t: t, start: start}
	}
	for pid := range inc.trackers {
		if !live[pid] {
			inc.forget(pid)
		}
	}
	for pid := range inc.failed {
		if !live[pid] {
			delete(inc.failed, pid)
		}
	}
}

// noForeign checks every process of procs that is not tracked for async
// write-protection that is not ftrun's (dirty.CheckForeign; Refresh checks the
// tracked ones): found, tracking stops for good; a check that fails otherwise makes
// only this dump a full one (false).
func (inc *incremental) noForeign(procs []int) bool {
	for _, pid := range procs {
		if _, tracked := inc.trackers[pid]; tracked {
			continue
		}
		err := dirty.CheckForeign(pid)
		switch {
		case err == nil, errors.Is(err, os.ErrNotExist), errors.Is(err, unix.ESRCH):
			// ended meanwhile: nothing of it is dumped
		case errors.Is(err, dirty.ErrForeign):
			inc.stop(err)
			return false
		default:
			inc.log.Warn("cannot tell whether a process's memory is under write-protection of another tool; this checkpoint is a full one", "pid", pid, "err", err)
			return false
		}
	}
	return true
}

// trackable says whether pid may be stopped for an injected syscall now: not in an
// uninterruptible sleep (the stop would wait for it), stopped or dead.
func trackable(pid int) bool {
	st, err := procfs.State(pid)
	return err == nil && (st == 'S' || st == 'R')
}

// stop turns tracking off for good: memory under another userfaultfd's
// write-protection reads as unwritten whoever protected it, so no dump may trust it.
func (inc *incremental) stop(err error) {
	inc.log.Warn("incremental checkpoints off: the program's memory is under write-protection tracking of its own; every checkpoint is a full one", "err", err)
	inc.close()
	inc.mode, inc.parent = DirtyOff, ""
}

func (inc *incremental) forget(pid int) {
	if tr, ok := inc.trackers[pid]; ok {
		_ = tr.t.Close()
		delete(inc.trackers, pid)
	}
}

// close drops every tracker.
func (inc *incremental) close() {
	if inc == nil {
		return
	}
	for pid := range inc.trackers {
		inc.forget(pid)
	}
}
