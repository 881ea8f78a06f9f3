// Package standby is the standby host's end of the epoch stream: it receives image
// sets from primaries over mutual TLS, rebuilds each epoch in a private directory,
// checks it against the primary's manifest, makes it durable and only then acks.
//
// The ack is what lets a primary release the output its epoch covers (the Output
// Rule), so the package is built around never acking anything a power cut could take
// back: an epoch is acked only after it verified, was renamed into place and fsynced.
// A failure at any step (a full disk, a frame that does not check out, a delta whose
// base is not the one held here) leaves the committed sets exactly as they were, and
// the primary is told which of those it was so that it can send a full set or wait.
//
// The standby keeps the newest two committed sets per service: the newest is what a
// failover restores and the base the next delta applies to; the one before is there
// while the newest is being replaced. It never runs them; failure detection and going
// live belong to other packages, which read LastHeard and the Store.
package standby
