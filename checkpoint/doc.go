// Package checkpoint is the only part of ftrun that talks to CRIU: it dumps and
// restores a process tree (through go-criu's swrk RPC), probes the CRIU binary and the
// kernel for what ftrun needs, and keeps image sets on disk.
//
// An image set is only ever visible under its final name once it is complete: CRIU
// writes into a temporary directory, every file is checksummed into a manifest and
// fsynced, and the directory is renamed into place. A crash, a full disk or a CRIU
// failure halfway through therefore leaves earlier image sets untouched, and a set
// whose bytes were damaged later is caught by Verify before anyone restores from it.
//
// The files of a committed set are never written again, so a set built from another
// (a standby's delta epoch) may share the unchanged ones as hard links, and its
// verification may skip the chunks it took unchanged from a verified file
// (VerifyDirKnown); CommitDurable then fsyncs only what was written for it. The one
// exception is a set taken out of the store first (Retire): it is no longer
// committed, and its files are free to be written over.
//
// Every CRIU run has a deadline (Criu.DumpTimeout, Criu.RestoreTimeout). go-criu keeps
// the swrk process and its socket to itself, so this package starts swrk itself and
// finds both by what appeared across the start (one start at a time): on overrun, or
// when CRIU is killed from elsewhere, CRIU and every task it forked are killed and
// ftrun's end of the socket is shut down, since a half-restored task holding CRIU's
// end would otherwise keep the call waiting forever.
package checkpoint
