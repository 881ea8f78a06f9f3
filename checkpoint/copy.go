package checkpoint

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// CopyRange copies n bytes at offset srcOff of src to offset dstOff of dst inside the
// kernel (copy_file_range(2)). On a filesystem that shares extents (XFS with reflink,
// btrfs) the kernel clones instead of copying, so the copy costs neither time nor disk
// space and an fsync of dst writes only what is changed afterwards; elsewhere (ext4,
// tmpfs) the bytes are copied without passing through user space. Where the call is
// not supported for the pair of files, it reads and writes instead. A src that ends
// before srcOff+n is an error wrapping io.ErrUnexpectedEOF.
func CopyRange(dst, src *os.File, dstOff, srcOff, n int64) error {
	if n < 0 || dstOff < 0 || srcOff < 0 {
		return fmt.Errorf("copy %d bytes from %d to %d: negative range", n, srcOff, dstOff)
	}
	for n > 0 {
		got, err := unix.CopyFileRange(int(src.Fd()), &srcOff, int(dst.Fd()), &dstOff, int(min(n, 1<<30)), 0)
		switch {
		case err == nil && got == 0:
			return fmt.Errorf("copy from %q at %d: %w", src.Name(), srcOff, io.ErrUnexpectedEOF)
		case err == nil:
			n -= int64(got)
		case errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EXDEV), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EINVAL):
			return copyRangeRW(dst, src, dstOff, srcOff, n)
		default:
			return fmt.Errorf("copy from %q to %q: %w", src.Name(), dst.Name(), err)
		}
	}
	return nil
}

// copyRangeRW is CopyRange through a buffer.
func copyRangeRW(dst, src *os.File, dstOff, srcOff, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		b := buf[:min(n, int64(len(buf)))]
		got, err := src.ReadAt(b, srcOff)
		if got < len(b) {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("copy from %q at %d: %w", src.Name(), srcOff, err)
		}
		if _, err := dst.WriteAt(b, dstOff); err != nil {
			return err
		}
		n, srcOff, dstOff = n-int64(got), srcOff+int64(got), dstOff+int64(got)
	}
	return nil
}
