// Package failover is the standby's side of ftrun: it holds every primary's newest
// committed epoch (transport/standby), watches each service's primary, and takes a
// service over when its primary has gone silent — with an arbiter, only once it holds
// the service's key. What a take-over means (restoring the program and supervising it)
// is the caller's, handed over through Config.GoLive, so the same loop serves `ftrun
// standby` and a `ftrun run` that serves as the standby of its service's live copy.
// Config.Adopt takes back, at start, a copy that an earlier standby here took over and
// left running; a copy that ends leaves its service to whichever primary connects.
//
// The decision per service is a pure function (TakeOver), table-tested; Run is the
// thin loop around it that owns the server, the timers and every goroutine.
package failover
