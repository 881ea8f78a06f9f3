package delta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/magic"
	"google.golang.org/protobuf/proto"
)

// Pagemap entry flags (criu/include/pagemap.h).
const (
	peParent  = 1 << 0 // pages are in a parent image set (an incremental dump)
	peLazy    = 1 << 1 // pages may be restored lazily
	pePresent = 1 << 2 // pages are in the pages-<id>.img file
)

// pagemapFile is a decoded pagemap image: which pages file holds its data and, in the
// order of that file, the vaddr of every page present in it.
type pagemapFile struct {
	pagesID uint32
	present []uint64
}

func (p *pagemapFile) pagesName() string { return fmt.Sprintf("pages-%d.img", p.pagesID) }

// isPagemapName says whether a file of an image set may be a pagemap (pagemap-<pid>.img,
// pagemap-shmem-<ino>.img, ...); its magic decides.
func isPagemapName(name string) bool {
	return strings.HasPrefix(name, "pagemap-") && strings.HasSuffix(name, ".img")
}

var (
	magics        = magic.LoadMagic()
	magicCommon   = uint32(magics.ByName["IMG_COMMON"])
	magicService  = uint32(magics.ByName["IMG_SERVICE"])
	magicPagemap  = uint32(magics.ByName["PAGEMAP"])
	errNotPagemap = fmt.Errorf("not a pagemap image")
)

// decodePagemap reads a pagemap image from memory. It is crit's pagemap decoding (a
// PagemapHead, then PagemapEntry messages, each behind a 32-bit length) over a byte
// slice, so the receiver can check a delta before it writes anything. The messages are
// go-criu v8's, which read CRIU 4.x's 64-bit nr_pages (field 5) correctly.
//
// A pagemap may come from a peer, and each of its entries is a count of pages that
// becomes a slice of vaddrs: maxPages bounds the total before anything is allocated
// for it, so a 40-byte entry claiming 2^40 pages is an error, not an allocation.
func decodePagemap(data []byte, maxPages uint64) (*pagemapFile, error) {
	return decodePagemapFunc(data, func(uint32) (uint64, error) { return maxPages, nil })
}

// decodePagemapIn reads the pagemap name in dir, bounding its pages by the size of
// the pages file it names in dir (a pagemap cannot list more pages than that file
// holds). A missing pages file bounds it to nothing.
func decodePagemapIn(dir, name string) (*pagemapFile, []byte, error) {
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return nil, nil, err
	}
	pm, err := decodePagemapFunc(data, func(pagesID uint32) (uint64, error) {
		fi, err := os.Stat(filepath.Join(dir, fmt.Sprintf("pages-%d.img", pagesID)))
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil
		}
		if err != nil {
			return 0, err
		}
		return uint64(fi.Size()) / PageSize, nil
	})
	return pm, data, err
}

// pagemapImage is a pagemap image as CRIU wrote it: its magic words, the pages file
// its present entries index, and its entries in order.
type pagemapImage struct {
	magic   []byte
	pagesID uint32
	entries []*pagemap.PagemapEntry
}

// readPagemapImage is crit's pagemap decoding (magic words, a PagemapHead, then
// PagemapEntry messages, each behind a 32-bit length) over a byte slice. The messages
// are go-criu v8's, which read CRIU 4.x's 64-bit nr_pages (field 5) correctly. The
// entries are bounded by len(data); their page counts are the caller's to check.
func readPagemapImage(data []byte) (*pagemapImage, error) {
	if len(data) < 4 {
		return nil, errNotPagemap
	}
	img := &pagemapImage{}
	magicLen := 4
	m := binary.LittleEndian.Uint32(data)
	if m == magicCommon || m == magicService {
		if len(data) < 8 {
			return nil, errNotPagemap
		}
		m = binary.LittleEndian.Uint32(data[4:])
		magicLen = 8
	}
	if m != magicPagemap {
		return nil, errNotPagemap
	}
	img.magic, data = data[:magicLen], data[magicLen:]
	next := func(msg proto.Message) (bool, error) {
		if len(data) == 0 {
			return false, nil
		}
		if len(data) < 4 {
			return false, fmt.Errorf("truncated entry size")
		}
		size := binary.LittleEndian.Uint32(data)
		if uint64(size) > uint64(len(data)-4) {
			return false, fmt.Errorf("entry of %d bytes with %d left", size, len(data)-4)
		}
		if err := proto.Unmarshal(data[4:4+size], msg); err != nil {
			return false, err
		}
		data = data[4+size:]
		return true, nil
	}
	var head pagemap.PagemapHead
	if ok, err := next(&head); err != nil || !ok {
		return nil, fmt.Errorf("pagemap head: %v", orEmpty(err))
	}
	img.pagesID = head.GetPagesId()
	for {
		e := &pagemap.PagemapEntry{}
		ok, err := next(e)
		if err != nil {
			return nil, fmt.Errorf("pagemap entry %d: %w", len(img.entries), err)
		}
		if !ok {
			return img, nil
		}
		img.entries = append(img.entries, e)
	}
}

// encode writes img back the way CRIU does.
func (img *pagemapImage) encode() ([]byte, error) {
	out := append([]byte(nil), img.magic...)
	add := func(m proto.Message) error {
		b, err := proto.Marshal(m)
		if err != nil {
			return err
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(len(b)))
		out = append(out, b...)
		return nil
	}
	if err := add(&pagemap.PagemapHead{PagesId: proto.Uint32(img.pagesID)}); err != nil {
		return nil, err
	}
	for _, e := range img.entries {
		if err := add(e); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// entryPages is an entry's page count: CRIU 4.x writes it in nr_pages, older images
// only in compat_nr_pages.
func entryPages(e *pagemap.PagemapEntry) uint64 {
	if e.NrPages == nil {
		return uint64(e.GetCompatNrPages())
	}
	return e.GetNrPages()
}

// entryFlags is an entry's flags; images older than the flags field get them the way
// CRIU infers them.
func entryFlags(e *pagemap.PagemapEntry) uint32 {
	if e.Flags != nil {
		return e.GetFlags()
	}
	if e.GetInParent() {
		return peParent
	}
	return pePresent
}

// decodePagemapFunc is decodePagemap with the bound taken from the head's pages id.
func decodePagemapFunc(data []byte, maxPages func(pagesID uint32) (uint64, error)) (*pagemapFile, error) {
	img, err := readPagemapImage(data)
	if err != nil {
		return nil, err
	}
	pm := &pagemapFile{pagesID: img.pagesID}
	limit, err := maxPages(pm.pagesID)
	if err != nil {
		return nil, err
	}
	var total uint64
	for _, e := range img.entries {
		n, flags := entryPages(e), entryFlags(e)
		if flags&peParent != 0 {
			return nil, fmt.Errorf("entry at 0x%x has pages in a parent image set (incremental sets are made standalone before they are shipped)", e.GetVaddr())
		}
		if flags&pePresent == 0 {
			continue
		}
		if e.GetVaddr()%PageSize != 0 {
			return nil, fmt.Errorf("entry at 0x%x is not page aligned", e.GetVaddr())
		}
		if n > limit-total {
			return nil, fmt.Errorf("entry at 0x%x claims %d pages, more than the %d the pages file can hold (%w)", e.GetVaddr(), n, limit, ErrTooBig)
		}
		if e.GetVaddr() > math.MaxUint64-n*PageSize {
			return nil, fmt.Errorf("entry at 0x%x of %d pages overflows the address space", e.GetVaddr(), n)
		}
		total += n
		for i := uint64(0); i < n; i++ {
			pm.present = append(pm.present, e.GetVaddr()+i*PageSize)
		}
	}
	return pm, nil
}

func orEmpty(err error) error {
	if err == nil {
		return fmt.Errorf("missing")
	}
	return err
}
