package supervisor

import (
	"testing"
	"time"
)

func TestStatusSummary(t *testing.T) {
	at := time.Date(2025, 11, 23, 10, 0, 0, 0, time.UTC)
	cases := []struct {
		name string
		st   Status
		want string
	}{
		{"starting, no checkpoint",
			Status{State: StateStarting, Protection: "local checkpoints"},
			"starting: pid 0, epoch 0, no checkpoint yet, local checkpoints"},
		{"running, no checkpoint yet",
			Status{State: StateRunning, Pid: 4242, Protection: "local checkpoints"},
			"running: pid 4242, epoch 0, no checkpoint yet, local checkpoints"},
		{"age without a checkpoint time is ignored",
			Status{State: StateRunning, Pid: 4242, LastCheckpointAge: time.Second, Protection: "local checkpoints"},
			"running: pid 4242, epoch 0, no checkpoint yet, local checkpoints"},
		{"with a checkpoint, age rounded to ms",
			Status{State: StateRunning, Pid: 4242, Epoch: 17, LastCheckpoint: at, LastCheckpointAge: 1234567891 * time.Nanosecond, Protection: "local checkpoints"},
			"running: pid 4242, epoch 17, last checkpoint 1.235s ago, local checkpoints"},
		{"checkpoint just now",
			Status{State: StateRecovering, Epoch: 3, LastCheckpoint: at, Protection: "standby 198.18.0.2:7000"},
			"recovering: pid 0, epoch 3, last checkpoint 0s ago, standby 198.18.0.2:7000"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.st.Summary(); got != tc.want {
				t.Errorf("Summary() = %q, want %q", got, tc.want)
			}
		})
	}
}
