package supervisor

import (
	"fmt"
	"time"

	"github.com/ftrun/ftrun/supervisor/gate"
	"github.com/ftrun/ftrun/supervisor/phase"
	"github.com/ftrun/ftrun/transport/progress"
)

// State is where the supervised program is in its life.
type State string

const (
	StateStarting   State = "starting"
	StateRunning    State = "running"
	StateRecovering State = "recovering"
	StateStopping   State = "stopping"
	StateStopped    State = "stopped"
	StateFailed     State = "failed"
	// StateStandby: the service is live on the peer; this host holds its epochs.
	StateStandby State = "standby"
)

// Status is what `ftrun status` shows.
type Status struct {
	Service          string   `json:"service"`
	Role             string   `json:"role"`
	State            State    `json:"state"`
	Protection       string   `json:"protection"`
	Pid              int      `json:"pid"`
	Command          []string `json:"command"`
	Epoch            uint64   `json:"epoch"`
	DurableEpoch     uint64   `json:"durable_epoch"`
	Peer             string   `json:"peer,omitempty"`
	StandbyEpoch     uint64   `json:"standby_epoch"`
	LastShippedBytes int64    `json:"last_shipped_bytes"`
	LastShipFull     bool     `json:"last_ship_full"`
	// Epoch commit latency, checkpoint start -> standby ack, over recent epochs.
	CommitLatencyP50 time.Duration `json:"commit_latency_p50_ns"`
	CommitLatencyP99 time.Duration `json:"commit_latency_p99_ns"`
	// Phases splits the commit latency of the last PhaseEpochs epochs (without a
	// standby: up to the local commit), each phase's p50 and p99 (see package phase).
	Phases      map[phase.Name]phase.Quantiles `json:"phases,omitempty"`
	PhaseEpochs int                            `json:"phase_epochs,omitempty"`
	// PhaseSums is each phase's time summed over all PhaseEpochsTotal epochs so far:
	// two readings give exact means over the time between them.
	PhaseSums          map[phase.Name]time.Duration `json:"phase_sums_ns,omitempty"`
	PhaseEpochsTotal   int                          `json:"phase_epochs_total,omitempty"`
	LastCheckpoint     time.Time                    `json:"last_checkpoint,omitzero"`
	LastCheckpointAge  time.Duration                `json:"last_checkpoint_age_ns"`
	LastFrozen         time.Duration                `json:"last_frozen_ns"`
	LastCheckpointTime time.Duration                `json:"last_checkpoint_total_ns"`
	ImageBytes         int64                        `json:"image_bytes"`
	Checkpoints        int                          `json:"checkpoints"`
	// IncrementalCheckpoints counts those of Checkpoints that froze the program only
	// for the pages it wrote since the one before (--incremental).
	IncrementalCheckpoints int `json:"incremental_checkpoints"`
	// WrittenOver counts those of IncrementalCheckpoints made standalone over an
	// older set the store dropped, which needed only the pages written since it.
	WrittenOver int `json:"written_over_checkpoints"`
	// LastCheckpointWritten is what the last checkpoint wrote into the store: CRIU's
	// images, and the pages copied to make an incremental set standalone.
	LastCheckpointWritten int64 `json:"last_checkpoint_written_bytes"`
	// LastCheckpointChanged is what of the program's memory the last checkpoint
	// found written since the one before (0 when it was a full one).
	LastCheckpointChanged int64  `json:"last_checkpoint_changed_bytes"`
	CheckpointFailures    int    `json:"checkpoint_failures"`
	LastError             string `json:"last_error,omitempty"`
	// FailingSince is the first of the checkpoints failing (or skipped) in a row now,
	// FailingCause why the newest failed: the program is unprotected since then.
	FailingSince   time.Time `json:"checkpoints_failing_since,omitzero"`
	FailingCause   string    `json:"checkpoints_failing_cause,omitempty"`
	Restores       int       `json:"restores"`
	FreshStarts    int       `json:"fresh_starts"`
	Adoptions      int       `json:"adoptions"`
	HealthFailures int       `json:"health_failures"`
	Since          time.Time `json:"since"`
	StateDir       string    `json:"state_dir"`
	// With --net: the service address, the program's network namespace (a path
	// nsenter --net= takes), when output may leave, and what the gate holds.
	Addr   string      `json:"addr,omitempty"`
	NetNS  string      `json:"netns,omitempty"`
	Commit string      `json:"commit,omitempty"`
	Held   *gate.Stats `json:"held,omitempty"`
	// TCPDump says how the last dump treated the program's established TCP
	// connections: saved (and who held their input still) or left out.
	TCPDump string `json:"tcp_dump,omitempty"`
	// Incremental says how dumps find the pages written since the last one
	// (--incremental, as this kernel resolved it; "off": every dump is full).
	Incremental string `json:"incremental,omitempty"`
	// Shipping is the epoch on its way to the standby, if one is.
	Shipping *progress.Transfer `json:"shipping,omitempty"`
}

// Lag is how many epochs the standby is behind (0 without a standby).
func (s Status) Lag() uint64 {
	if s.Peer == "" || s.StandbyEpoch >= s.Epoch {
		return 0
	}
	return s.Epoch - s.StandbyEpoch
}

// FailingProtection is what Protection says while checkpoints fail: whatever else
// holds, nothing newer than the last good checkpoint is kept.
func (s Status) FailingProtection() string {
	return fmt.Sprintf("unprotected: checkpoints failing since %s: %s", s.FailingSince.UTC().Format(time.RFC3339), s.FailingCause)
}

// Summary is the one-line form used for systemd's STATUS= and logs.
func (s Status) Summary() string {
	age := "no checkpoint yet"
	if !s.LastCheckpoint.IsZero() {
		age = fmt.Sprintf("last checkpoint %s ago", s.LastCheckpointAge.Round(time.Millisecond))
	}
	return fmt.Sprintf("%s: pid %d, epoch %d, %s, %s", s.State, s.Pid, s.Epoch, age, s.Protection)
}
