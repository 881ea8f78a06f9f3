// Package ship is the primary's end of the epoch stream: it sends each committed
// image set to the standby and reports back only when the standby has made it
// durable, since that acknowledgement is what releases the program's held output.
//
// A set travels whole the first time, after the standby asked for it and after a
// reconnect that finds the standby holding something else than what was last acked;
// otherwise only what changed since the last acked epoch travels. What counts as
// "changed" is a Differ: by default the pages whose content changed (checkpoint/delta,
// because this kernel has no soft-dirty tracking and every epoch is a full dump), the
// blocks that changed of the program's synced state files (--sync: a 4 KiB write to a
// large database file ships 4 KiB, an append ships the tail; see FileBlockSize), plus
// the other small files whose checksums moved; FileDiffer (whole changed files) needs
// nothing but the manifests. Synced files go as blocks only to a standby whose Hello
// offers frame.FeatureFileDelta, whole otherwise. The standby rebuilds the full set
// and checks it against the manifest sent with it, so a wrong delta costs a resync,
// never a bad restore.
package ship
