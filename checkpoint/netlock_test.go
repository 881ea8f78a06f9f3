package checkpoint

import (
	"net"
	"os"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/rpc"
)

func TestCheaperLock(t *testing.T) {
	ipt, nft := rpc.CriuNetworkLockMethod_IPTABLES, rpc.CriuNetworkLockMethod_NFTABLES
	for _, c := range []struct {
		conns int
		nft   bool
		want  rpc.CriuNetworkLockMethod
	}{
		{0, true, ipt}, // iptables costs nothing without connections
		{1, true, ipt},
		{2, true, nft},
		{500, true, nft},
		{500, false, ipt}, // no nftables in this CRIU
	} {
		if got := cheaperLock(c.conns, c.nft); got != c.want {
			t.Errorf("cheaperLock(%d, %v) = %v, want %v", c.conns, c.nft, got, c.want)
		}
	}
}

// The count is of this process's own established connections, both ends of a
// loopback pair included, and not of its listener.
func TestEstablishedTCP(t *testing.T) {
	const all = 1 << 20
	before, err := establishedTCP(os.Getpid(), all)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	after, err := establishedTCP(os.Getpid(), all)
	if err != nil {
		t.Fatal(err)
	}
	if after-before != 2 {
		t.Errorf("established connections went from %d to %d, want two more", before, after)
	}
	if n, err := establishedTCP(os.Getpid(), 1); err != nil || n != 1 {
		t.Errorf("counting up to 1 = %d, %v; want 1", n, err)
	}
	if _, err := establishedTCP(1<<30, all); err == nil {
		t.Error("no error for a process that does not exist")
	}
}
