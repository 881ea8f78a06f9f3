package memcheck

import (
	"fmt"
	"strings"
	"testing"
)

func TestReadFindsRepeatsAndMismatches(t *testing.T) {
	out := "memcheck heap 0x7f00001000\n" +
		"round 1 00000000000000aa\nround 2 00000000000000bb\nround 3 00000000000000cc\n" +
		"x round 2 00000000000000bb\nround 3 00000000000000cd\nround 4 00000000000000dd\n"
	rep := Read(out)
	if rep.Rounds != 4 || rep.Repeated != 1 || len(rep.Mismatch) != 1 {
		t.Fatalf("got %+v", rep)
	}
	if Heap(out) != 0x7f00001000 {
		t.Fatalf("heap %#x", Heap(out))
	}
}

func TestHeapPagesIsTheSources(t *testing.T) {
	if !strings.Contains(Source, fmt.Sprintf("#define HEAP_PAGES %d\n", HeapPages)) {
		t.Fatalf("Source does not define HEAP_PAGES as %d", HeapPages)
	}
}
