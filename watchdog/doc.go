// Package watchdog holds ftrun's failure detectors: the systemd notify and
// watchdog protocol, health probes of the protected program, and the
// heartbeat/lease timer the standby uses to decide that a primary is gone.
//
// A process that is running is not necessarily a process that works, and a
// peer that is silent is not necessarily dead yet; every detector here exists
// to turn such evidence into a yes/no that the supervisor can act on. The
// decisions (ShouldPing, Tracker, Detector) are pure so they can be tested by
// table; the effects (datagrams, commands, sockets, timers) stay at the edge
// and run on an injected clock.
package watchdog
