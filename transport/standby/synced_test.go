package standby_test

import (
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/transport/ship"
)

// commitSynced is commit for a set whose files named in synced are copies of the
// program's state files (--sync), recorded as such in the manifest.
func (p *primary) commitSynced(t testing.TB, epoch uint64, files map[string][]byte, synced ...string) string {
	t.Helper()
	pd, err := p.store.Begin(epoch)
	if err != nil {
		t.Fatal(err)
	}
	m := &checkpoint.Manifest{Service: p.service, Created: time.Now(), SyncRoots: []string{"/state"}}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(pd.Dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
		if slices.Contains(synced, name) {
			m.Synced = append(m.Synced, checkpoint.SyncedFile{Name: name, Path: "/state/" + name, Mode: 0o644, Size: int64(len(data))})
		}
	}
	set, err := pd.Commit(m)
	if err != nil {
		t.Fatal(err)
	}
	return set.Dir
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// A 10 MiB synced file ships only the blocks that changed: one 4 KiB block for a 4 KiB
// write, two for a 4 KiB write across a block boundary, the tail after an append,
// nothing but its size when cut short; a new synced file goes whole. The standby's
// copy is byte for byte the primary's every time.
func TestSyncedFileShipsChangedBlocks(t *testing.T) {
	_, _, srv, p := connectedPrimary(t)

	const mib = 1 << 20
	state := randomBytes(10 * mib)
	files := map[string][]byte{"core-1.img": []byte("core"), "sync-a.data": state}
	epoch := uint64(0)
	shipEpoch := func(what string, synced ...string) ship.Stats {
		t.Helper()
		epoch++
		dir := p.commitSynced(t, epoch, files, synced...)
		if err := p.shipSet(t, epoch, dir); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		sameSet(t, dir, setDir(t, srv.store, "svc", epoch))
		st := p.ship.LastStats()
		t.Logf("%s: %d bytes on the wire, %d of them changed blocks", what, st.Bytes, st.BlockBytes)
		return st
	}
	// framing is what an epoch costs beyond the blocks: frame headers, the EpochBegin,
	// the FileDelta's name and offsets and the manifest, which is well under 2 KiB here.
	const framing = 4 << 10
	check := func(st ship.Stats, what string, blocks int64) {
		t.Helper()
		if st.Full || st.BlockBytes != blocks || st.Bytes > blocks+framing {
			t.Errorf("%s: full=%v, %d bytes of blocks in %d on the wire; want %d of blocks and at most %d more",
				what, st.Full, st.BlockBytes, st.Bytes, blocks, framing)
		}
	}
	if st := shipEpoch("first epoch", "sync-a.data"); !st.Full || st.Bytes < 10*mib {
		t.Fatalf("first epoch: %+v", st)
	}

	state = slices.Clone(state)
	copy(state[5*mib:], randomBytes(4096))
	files["sync-a.data"] = state
	check(shipEpoch("4 KiB written at 5 MiB", "sync-a.data"), "aligned write", 4096)

	first, err := os.Stat(filepath.Join(setDir(t, srv.store, "svc", 1), "sync-a.data"))
	if err != nil {
		t.Fatal(err)
	}
	state = slices.Clone(state)
	copy(state[3*mib+100:], randomBytes(4096))
	files["sync-a.data"] = state
	check(shipEpoch("4 KiB written at 3 MiB + 100", "sync-a.data"), "unaligned write", 8192)
	// From the third epoch on, the standby writes over the copy of two epochs before
	// instead of copying the base's.
	if third, err := os.Stat(filepath.Join(setDir(t, srv.store, "svc", 3), "sync-a.data")); err != nil || !os.SameFile(first, third) {
		t.Errorf("epoch 3 did not reuse the synced file of epoch 1 (%v)", err)
	}

	state = append(slices.Clone(state), randomBytes(10000)...)
	files["sync-a.data"] = state
	check(shipEpoch("10000 bytes appended", "sync-a.data"), "append", 10000)

	state = slices.Clone(state[:6*mib+123])
	files["sync-a.data"] = state
	check(shipEpoch("cut to 6 MiB + 123", "sync-a.data"), "truncation", 0)

	files["sync-b.data"] = randomBytes(mib)
	if st := shipEpoch("a new synced file", "sync-a.data", "sync-b.data"); st.Full || st.BlockBytes != 0 || st.Bytes < mib {
		t.Errorf("new synced file: %+v, want it whole in a delta epoch", st)
	}

	// A changed file that is not a synced state file still goes whole.
	files["core-1.img"] = []byte("core v2")
	if st := shipEpoch("core changed", "sync-a.data", "sync-b.data"); st.BlockBytes != 0 {
		t.Errorf("core changed: %+v", st)
	}
}

// A block whose bytes do not match the manifest (here: the primary's copy damaged
// after it was checksummed) makes the rebuilt file fail verification: the epoch is
// refused as corrupt, nothing of it is committed, and the next epoch goes whole.
func TestCorruptBlockIsCaught(t *testing.T) {
	cases := []struct {
		name string
		at   int
	}{
		{"inside the changed block", 1<<20 + 10},
		// another block of the chunk whose checksum moved: it now differs from the
		// base too, so it travels, with bytes the manifest does not describe
		{"in another block of the changed chunk", 1<<20 + 4096*3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			c := newCreds(t)
			root := filepath.Join(t.TempDir(), "root")
			srv := startServer(t, root, c)
			p := newPrimary(t, "svc")
			p.dial(t, srv.addr, c.primary.Client())

			state := randomBytes(4 << 20)
			dir1 := p.commitSynced(t, 1, map[string][]byte{"sync-a.data": state}, "sync-a.data")
			if err := p.shipSet(t, 1, dir1); err != nil {
				t.Fatal(err)
			}
			next := slices.Clone(state)
			copy(next[1<<20:], randomBytes(4096)) // the change the manifest records
			dir2 := p.commitSynced(t, 2, map[string][]byte{"sync-a.data": next}, "sync-a.data")
			next[tc.at] ^= 0x40
			if err := os.WriteFile(filepath.Join(dir2, "sync-a.data"), next, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := p.shipSet(t, 2, dir2); !errors.Is(err, ship.ErrResync) {
				t.Fatalf("damaged block: %v, want ErrResync", err)
			}
			if st := p.ship.LastStats(); st.Full || st.BlockBytes == 0 {
				t.Errorf("the damaged file did not go as a block delta: %+v", st)
			}
			srv.log.waitFor(t, "code=Corrupt")
			assertOnlyEpoch1(t, srv.store, root, dir1)

			dir3 := p.commitSynced(t, 3, map[string][]byte{"sync-a.data": state}, "sync-a.data")
			if err := p.shipSet(t, 3, dir3); err != nil {
				t.Fatal(err)
			}
			if !p.ship.LastStats().Full {
				t.Errorf("epoch after a corrupt one was not full")
			}
			sameSet(t, dir3, setDir(t, srv.store, "svc", 3))
		})
	}
}
