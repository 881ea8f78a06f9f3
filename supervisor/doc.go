// Package supervisor is the primary side of ftrun: it places the protected program in
// its own cgroup and PID namespace, checkpoints it every epoch, watches it for crashes
// and hangs, and brings it back through a recovery ladder that tries the cheapest
// recovery first (restore the newest checkpoint, then older ones, then a fresh start).
//
// Before it restores or starts anything, a supervisor with a peer (--standby) asks it
// whether the service is live there; if so it serves as that live copy's standby
// (through package failover's loop) and takes over only once the live copy goes
// silent. With --listen given (both hosts of a symmetric pair run the same command)
// it also answers a peer that is deciding too, and the two compare claims (DecideRole).
// A copy the peer refuses because it went live meanwhile fences itself, unless it
// took over later than the peer's copy (yields). A standby's live copies (LiveCopy)
// are supervisors too, streaming to their peer, and a restarted standby adopts one
// its predecessor left running (AdoptLive).
//
// Decisions — which rung of the ladder to climb, what to do on start-up with whatever a
// previous ftrun left behind, which role to take at boot, whether a checkpoint may be
// taken now — are pure functions, table-tested. The loop in Supervisor.Run only
// carries them out. When the program's held output may leave is one state machine
// (package epochs) that the loop, the standby link and the background fsync all
// step, so that each lets output out the moment it learns an epoch is safe.
package supervisor
