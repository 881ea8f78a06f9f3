// Package epochs decides the Output Rule: how far the program's held output may leave,
// which committed epoch goes to the standby, which epochs the local store must keep,
// and whether the program is protected. It is one state machine, in the manner of etcd
// raft: the supervisor feeds it what happened (Step with a Cut, Abandoned, Committed,
// Durable, Acked, Nacked, LinkUp, LinkDown or Incarnation) and carries out the Ready
// each step returns. It has no goroutines, no clock, no I/O and no logging, and is deterministic;
// the supervisor keeps one Machine behind a mutex, so that the standby link and the
// background fsync release output the moment they learn an epoch is safe, whatever
// the epoch loop is doing meanwhile.
//
// The one release rule (Machine.Safe): under commit mode standby, the newest epoch the
// standby acknowledged while the link is up, and the newest epoch durable on local
// disk while it is down (the program is unprotected then and says so, and goes on
// rather than stalling behind a dead standby); under local, the newest durable epoch;
// under off, nothing (no gate). A release never goes backwards, and never past the
// newest cut, so news that arrives late or out of order releases nothing it should not.
//
// Epochs only grow within one ftrun. Every restore, fresh start, adoption or take-over
// begins an incarnation with a new gate, all of whose output belongs to epochs after
// the newest one known when it began: no ack or durable epoch from before it can
// release any of that output. Step reports an epoch that would break this
// (ErrBackwards) and keeps the machine on the safe side.
//
// It does not hold packets, cut the gate, ship, fsync or prune: the supervisor does,
// as the Ready says. Nor does it know why checkpoints fail; a program whose
// checkpoints fail is unprotected whatever the machine says.
package epochs
