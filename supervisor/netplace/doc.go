// Package netplace gives the protected program of `ftrun run --net` a network of its
// own: a network namespace whose eth0 carries the service address and a MAC fixed per
// service, joined by a veth pair to a bridge on the host (the client-facing LAN
// bridge, "br0" unless told otherwise). Clients reach the program at the service
// address, whichever host it runs on.
//
// Why: on failover a standby host builds the same namespace — same address, same MAC —
// on its own bridge, CRIU restores the program there with its TCP connections intact,
// and Announce sends gratuitous ARP so bridge forwarding tables and the clients'
// neighbour caches follow the address to its new port. Keeping the MAC fixed per
// service means a client that missed the announcement still reaches the program
// once the switches have learned its new port.
//
// How the namespace is held: there is no bind mount under /run/netns. Create makes the
// namespace with unshare(CLONE_NEWNET) on a locked OS thread and keeps an *os.File of
// it for as long as ftrun runs; other tools reach it through Path
// (/proc/<ftrun pid>/fd/<n>) or through /proc/<program pid>/ns/net. When ftrun
// restarts while the program still runs, Adopt reopens the program's namespace. When
// nothing holds the namespace any more — no file, no process — the kernel frees it
// and its veth pair with it, so a crash leaks nothing but, at worst, a host-side veth
// whose peer a still-running program keeps alive; Create removes such a stale one.
//
// Processes that CRIU will checkpoint must enter only the network namespace (like
// `nsenter --net=PATH`), never `ip netns exec`, which adds a mount namespace that makes
// dumps fail. Place.Do runs a function on a locked OS thread that did setns into the
// namespace and nothing else, so a child forked from it (the program, CRIU's swrk
// helper) starts in exactly that namespace.
//
// The pure parts — deriving the MAC and the host-side link name from the service
// name, validating a Spec, building the announcement packets — are separate from the
// effects and table-tested. The effects configure each namespace through a netlink
// socket opened in it, and switch a thread's namespace only on a locked thread that
// is switched back (or discarded) before it serves any other goroutine.
package netplace
