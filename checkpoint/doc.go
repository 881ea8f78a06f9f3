// Package checkpoint is the only part of ftrun that talks to CRIU: it dumps and
// restores a process tree (through go-criu's swrk RPC), probes the CRIU binary and the
// kernel for what ftrun needs, and keeps image sets on disk.
//
// An image set is only ever visible under its final name once it is complete: CRIU
// writes into a temporary directory, every file is checksummed into a manifest and
// fsynced, and the directory is renamed into place. A crash, a full disk or a CRIU
// failure halfway through therefore leaves earlier image sets untouched, and a set
// whose bytes were damaged later is caught by Verify before anyone restores from it.
package checkpoint
