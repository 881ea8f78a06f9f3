// Package frame is the wire protocol between an ftrun primary and its standby: a
// stream of self-delimiting, checksummed, sequence-numbered frames, the payloads they
// carry, and a pure checker for the order the epoch protocol allows.
//
// It is written by hand because the properties the standby relies on are the point
// and no framing library gives all of them together: every length is bounded before
// a byte is allocated (the peer is a network endpoint, and a forged 4 GiB length must
// cost nothing), every frame carries its own CRC32C over header and payload (a
// flipped bit in a page of the program's memory would otherwise be restored silently
// on failover), and sequence numbers make a replayed, dropped or reordered frame a
// detectable error instead of a corrupt checkpoint. Payload encodings are strict
// (no trailing bytes, no short fields, no out-of-range enums) so that one byte string
// has exactly one meaning, which is also what lets the fuzzers check round trips.
//
// The package does no I/O of its own beyond the io.Reader/io.Writer it is given and
// starts no goroutines: the transport loop owns the connection, this package only
// turns bytes into validated frames and back.
package frame
