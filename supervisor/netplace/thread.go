package netplace

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// threadNS names the network namespace of the calling OS thread.
const threadNS = "/proc/thread-self/ns/net"

// onThread runs fn on an OS thread of its own whose network namespace enter has
// switched, then switches the thread back. It waits for that goroutine, so none
// outlives the call.
//
// If enter fails, the thread is left as it was. If switching back fails, the thread
// stays locked: Go then ends it with the goroutine instead of reusing it in the wrong
// namespace. A panic in fn is carried back to the caller after the thread is dealt
// with.
func onThread(enter func() error, fn func() error) error {
	type outcome struct {
		err      error
		panicked bool
		panicVal any
	}
	done := make(chan outcome, 1)
	go func() {
		var out outcome
		defer func() { done <- out }()
		runtime.LockOSThread()
		orig, err := os.Open(threadNS)
		if err != nil {
			runtime.UnlockOSThread()
			out.err = fmt.Errorf("opening this thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := enter(); err != nil {
			// The thread has not moved: it may serve other goroutines again.
			runtime.UnlockOSThread()
			out.err = err
			return
		}
		defer func() {
			if v := recover(); v != nil {
				out.panicked, out.panicVal = true, v
			}
			if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
				// Stay locked: the thread ends with this goroutine.
				out.err = errors.Join(out.err, fmt.Errorf("returning the thread to its network namespace (the thread is discarded): %w", err))
				return
			}
			runtime.UnlockOSThread()
		}()
		out.err = fn()
	}()
	out := <-done
	if out.panicked {
		panic(out.panicVal)
	}
	return out.err
}

// unshareNet makes a new, empty network namespace and returns a file that holds it.
func unshareNet() (*os.File, error) {
	var ns *os.File
	err := onThread(
		func() error {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("creating a network namespace: %w%s", err, privilegeHint(err))
			}
			return nil
		},
		func() error {
			f, err := os.Open(threadNS)
			if err != nil {
				return fmt.Errorf("opening the new network namespace: %w", err)
			}
			ns = f
			return nil
		})
	if err != nil {
		if ns != nil {
			ns.Close()
		}
		return nil, err
	}
	return ns, nil
}

// inNS runs fn on a locked OS thread that entered the network namespace ns.
func inNS(ns *os.File, fn func() error) error {
	return onThread(func() error {
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("entering network namespace: %w%s", err, privilegeHint(err))
		}
		return nil
	}, fn)
}

// nsID identifies a namespace file by device and inode, as the kernel does.
type nsID struct{ dev, ino uint64 }

func statNS(f *os.File) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nsID{}, fmt.Errorf("stat %s: %w", f.Name(), err)
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// openNS opens a network namespace file and checks that it is one.
func openNS(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening network namespace: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("statfs %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		f.Close()
		return nil, fmt.Errorf("%s is not a namespace file", path)
	}
	return f, nil
}

func privilegeHint(err error) string {
	if errors.Is(err, unix.EPERM) {
		return " (ftrun --net needs root: CAP_SYS_ADMIN and CAP_NET_ADMIN)"
	}
	return ""
}
