// Package standby is the standby host's end of the epoch stream: it receives image
// sets from primaries over mutual TLS, rebuilds each epoch in a private directory,
// checks it against the primary's manifest, makes it durable and only then acks.
//
// The ack is what lets a primary release the output its epoch covers (the Output
// Rule), so the package is built around never acking anything a power cut could take
// back: an epoch is acked only after it verified, was fsynced and renamed into place.
// A failure at any step (a full disk, a frame that does not check out, a delta whose
// base is not the one held here) leaves the committed sets exactly as they were, and
// the primary is told which of those it was so that it can send a full set or wait.
//
// Rebuilding a delta epoch is on the critical path of every epoch (the primary holds
// the program's output until the ack), so it writes, reads and fsyncs only what is
// new. That rests on one rule: a file of a committed set is never written again (the
// standby creates every file of a set new, and a restore reads a set and writes its
// logs elsewhere). So
//   - a file the epoch did not change is a hard link to the base's: no copy, and no
//     fsync beyond the directory's, since the base is durable already;
//   - a pages file, or a synced state file sent as changed blocks (FileDelta), is
//     written over the copy of the set before the base (which would be pruned when
//     this epoch commits, and is first taken out of the store): where the program's
//     memory layout held still, only the pages or blocks that changed in the base's
//     epoch or in this one are written. Where that set is not there or not known
//     (the first delta after a full epoch or a restart), the unchanged part is copied
//     from the base with copy_file_range, a reflink on filesystems that share extents
//     (XFS, btrfs) and an in-kernel copy elsewhere (ext4, tmpfs);
//   - the verification against the manifest re-reads only the checksum chunks that
//     were written anew: a chunk copied or kept from a file this process verified,
//     at the same offsets, whose checksum in that file's manifest is the new one,
//     holds the bytes the manifest describes. A delta that wrote a wrong byte, or
//     left out a change the manifest records, leaves a chunk that is read and fails.
//
// A standby holds many primaries' programs and runs them as root on take-over, so
// it trusts no peer beyond its certificate (auth.Identity): a connection serves the
// one service its Hello names, which the certificate must name too, and an epoch's
// manifest must be of that service. What a peer can make the standby hold is
// bounded whatever it sends: counts are checked against the images before they
// size anything, an epoch in flight spills its page data to disk, per-certificate
// quotas bound services, bytes on disk and connections, and connections not yet past
// their Hello are capped in all and per host. Accept never ends Serve; while the
// standby cannot accept, or turns connections away for want of slots, it counts the
// silence of its primaries as its own (LastHeard), so it takes nothing over that it
// merely could not hear.
//
// The standby keeps the newest two committed sets per service: the newest is what a
// failover restores and the base the next delta applies to; the one before is the
// material the next delta epoch is written over. It never runs them; failure
// detection and going live belong to other packages, which read LastHeard and the
// Store.
package standby
