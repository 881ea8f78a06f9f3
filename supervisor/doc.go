// Package supervisor is the primary side of ftrun: it places the protected program in
// its own cgroup and PID namespace, checkpoints it every epoch, watches it for crashes
// and hangs, and brings it back through a recovery ladder that tries the cheapest
// recovery first (restore the newest checkpoint, then older ones, then a fresh start).
//
// Decisions — which rung of the ladder to climb, what to do on start-up with whatever a
// previous ftrun left behind, whether a checkpoint may be taken now — are pure
// functions, table-tested. The loop in Supervisor.Run only carries them out.
package supervisor
