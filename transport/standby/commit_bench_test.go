package standby_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/internal/criutest"
	"github.com/ftrun/ftrun/transport/standby"
)

// BenchmarkStandbyCommit: a program with a 100 MiB heap that dirties 150 pages
// (600 KiB) spread over it between epochs is dumped by CRIU every epoch, and each
// epoch goes as page deltas over loopback TLS to two standbys on this machine, both
// fsyncing for real: one builds its sets the way this package does, the other the
// earlier way (UseCopyingCommit). Reported: the standby's commit time (EpochCommit
// to ack: rebuild, verify, fsync) for each, median, 90th percentile and worst, and the
// primary's Ship time (diff, send, standby commit, ack). An op is one epoch shipped
// to both. The first delta epoch cannot write over an older set yet (there is none):
// it copies the base, and is usually the worst of the new way.
//
//	go test -run '^$' -bench StandbyCommit -benchtime 20x ./transport/standby/
func BenchmarkStandbyCommit(b *testing.B) {
	criutest.Require(b, "gcc")
	c := newCreds(b)
	type side struct {
		name   string
		srv    *server
		p      *primary
		commit []time.Duration
		ship   []time.Duration
	}
	sides := []*side{{name: "new"}, {name: "old"}}
	for _, s := range sides {
		var setup func(*standby.Store)
		if s.name == "old" {
			setup = standby.UseCopyingCommit
		}
		s.srv = startServerWith(b, filepath.Join(b.TempDir(), "root"), c, setup)
		s.p = newPrimary(b, "bench")
		s.p.dial(b, s.srv.addr, c.primary.Client())
	}
	prog := criutest.Dirtier(b, 100, 150)
	primaryStore, err := checkpoint.OpenStore(filepath.Join(b.TempDir(), "checkpoints"))
	if err != nil {
		b.Fatal(err)
	}
	primaryStore.NoSync = true
	criu := &checkpoint.Criu{}
	epoch := uint64(0)
	var shipped []int64
	var setBytes int64
	one := func(measure bool) {
		epoch++
		if epoch > 1 {
			prog.MustDirty()
		}
		pd, err := primaryStore.Begin(epoch)
		if err != nil {
			b.Fatal(err)
		}
		st, err := criu.Dump(checkpoint.Options{ImagesDir: pd.Dir, Pid: prog.Pid, LeaveRunning: true})
		if err != nil {
			pd.Abort()
			b.Fatal(err)
		}
		set, err := pd.Commit(&checkpoint.Manifest{Service: "bench", Stats: st, Pid: prog.Pid})
		if err != nil {
			b.Fatal(err)
		}
		m, err := checkpoint.ReadManifest(set.Dir)
		if err != nil {
			b.Fatal(err)
		}
		setBytes = m.Bytes()
		// Alternate which standby goes first, so neither always gets the page cache
		// the other one left.
		order := sides
		if epoch%2 == 0 {
			order = []*side{sides[1], sides[0]}
		}
		for _, s := range order {
			// Each standby would have its own disk: let neither commit wait behind
			// writeback the other one (or the dump) left.
			syscall.Sync()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			err := s.p.ship.Ship(ctx, epoch, set.Dir)
			cancel()
			if err != nil {
				b.Fatalf("%s standby, epoch %d: %v", s.name, epoch, err)
			}
			ls := s.p.ship.LastStats()
			if ls.Full != (epoch == 1) {
				b.Fatalf("%s standby, epoch %d: full=%v", s.name, epoch, ls.Full)
			}
			if measure {
				s.commit = append(s.commit, s.srv.Status()["bench"].LastCommitTime)
				s.ship = append(s.ship, ls.Duration)
				if s.name == "new" {
					shipped = append(shipped, ls.Bytes)
				}
			}
		}
		if _, err := primaryStore.Prune(2, 0); err != nil {
			b.Fatal(err)
		}
	}
	one(false) // the full epoch
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		one(true)
	}
	b.StopTimer()
	for _, s := range sides {
		sameSet(b, filepath.Join(primaryStore.Dir(), fmt.Sprintf("%016d", epoch)), setDir(b, s.srv.store, "bench", epoch))
		b.ReportMetric(ms(pct(s.commit, 50)), s.name+"-commit-p50-ms")
		b.ReportMetric(ms(pct(s.commit, 90)), s.name+"-commit-p90-ms")
		b.ReportMetric(ms(pct(s.commit, 100)), s.name+"-commit-max-ms")
		b.ReportMetric(ms(pct(s.ship, 50)), s.name+"-ship-p50-ms")
	}
	b.ReportMetric(float64(pct64(shipped, 50))/1024, "shipped-KiB/epoch")
	b.ReportMetric(float64(setBytes)/(1<<20), "set-MiB")
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// pct is the p-th percentile of ds (nearest rank; 100 is the maximum).
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[min(len(s)-1, (len(s)*p)/100)]
}

func pct64(ns []int64, p int) int64 {
	s := slices.Clone(ns)
	slices.Sort(s)
	return s[min(len(s)-1, (len(s)*p)/100)]
}

// BenchmarkSyncedFile: a 64 MiB synced state file of which N scattered 4 KiB blocks
// change every epoch, shipped over loopback TLS to a standby that fsyncs: what goes
// on the wire per epoch (all of it, and the changed blocks alone) against the file's
// size, and the standby's commit time. An op is one epoch.
//
//	go test -run '^$' -bench SyncedFile -benchtime 10x ./transport/standby/
func BenchmarkSyncedFile(b *testing.B) {
	const size = 64 << 20
	for _, n := range []int{1, 16, 256, 4096} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			c := newCreds(b)
			srv := startServer(b, filepath.Join(b.TempDir(), "root"), c)
			p := newPrimary(b, "svc")
			p.dial(b, srv.addr, c.primary.Client())
			state := randomBytes(size)
			files := map[string][]byte{"core-1.img": []byte("core"), "sync-a.data": state}
			epoch := uint64(1)
			if err := p.shipSet(b, epoch, p.commitSynced(b, epoch, files, "sync-a.data")); err != nil {
				b.Fatal(err)
			}
			var bytes, blocks int64
			var commit []time.Duration
			var counter uint64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				epoch++
				stride := size / 4096 / n
				for k := range n { // n blocks spread evenly, each given a new counter
					counter++
					binary.LittleEndian.PutUint64(state[(k*stride+i%stride)*4096:], counter)
				}
				dir := p.commitSynced(b, epoch, files, "sync-a.data")
				b.StartTimer()
				if err := p.shipSet(b, epoch, dir); err != nil {
					b.Fatal(err)
				}
				st := p.ship.LastStats()
				if st.Full {
					b.Fatalf("epoch %d went full", epoch)
				}
				bytes += st.Bytes
				blocks += st.BlockBytes
				commit = append(commit, srv.Status()["svc"].LastCommitTime)
			}
			b.StopTimer()
			sameSet(b, filepath.Join(p.store.Dir(), fmt.Sprintf("%016d", epoch)), setDir(b, srv.store, "svc", epoch))
			b.ReportMetric(float64(bytes)/float64(b.N)/1024, "shipped-KiB/epoch")
			b.ReportMetric(float64(blocks)/float64(b.N)/1024, "block-KiB/epoch")
			b.ReportMetric(100*float64(bytes)/float64(b.N)/size, "%-of-file")
			b.ReportMetric(ms(pct(commit, 50)), "commit-p50-ms")
		})
	}
}
