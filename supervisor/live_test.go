package supervisor

import (
	"log/slog"
	"testing"

	"github.com/ftrun/ftrun/checkpoint"
)

// Every `ftrun standby` flag a live copy is run under reaches the copy's Config, on
// take-over as on adoption: the take-over's copy used to lose --standby-durability,
// --epoch-on-output and --incremental.
func TestLiveCopyConfigKeepsTheStandbysFlags(t *testing.T) {
	live := LiveConfig{Log: slog.New(slog.DiscardHandler), AckFromMemory: true, EpochOnOutput: true, Incremental: DirtyUffdWP, FullEvery: 7}
	c := live.config("svc", "/d", &checkpoint.Manifest{Command: []string{"redis-server"}}, nil)
	if !c.AckFromMemory || !c.EpochOnOutput || c.Incremental != DirtyUffdWP || c.FullEvery != 7 || !c.Failover {
		t.Fatalf("live copy config %+v", c)
	}
}
