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
// (/proc/<ftrun pid>/fd/<n>) or through /proc/<program pid>/ns/net.
//
// How the link is held: the program's eth0 does not lead to the host directly but to a
// second, link namespace that only ftrun's file holds, where a bridge joins it to a
// veth whose other end is on the host's bridge. When ftrun dies, however, the kernel
// frees the link namespace and deletes both veth pairs with it, so the service address
// stops answering from this host at once — while the program's own namespace may live
// on for minutes behind orphaned TCP sockets, or the program itself until a new ftrun
// adopts it. A dead primary's address never shadows a take-over elsewhere. When ftrun
// restarts while the program still runs, Adopt reopens the program's namespace and
// wires it anew; Create removes a stale host end of the same name.
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
