package supervisor

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// firstExtraFd is the first descriptor after stdin, stdout and stderr.
const firstExtraFd = 3

// SealInheritedFds marks every descriptor above stderr close-on-exec, so nothing ftrun
// inherited reaches the program, CRIU or a health command: Go's exec closes only what
// Go opened, and a stray descriptor is harmful downstream (a flock held on it makes
// CRIU's --file-locks restore wait forever; one opened in another mount namespace makes
// every dump fail with "Can't lookup mount"). It runs first thing in main: Go's own
// descriptors are close-on-exec already.
func SealInheritedFds() error {
	if err := unix.CloseRange(firstExtraFd, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return cloexecEach()
	}
	return nil
}

// PreservedFds returns descriptors 3 .. 3+preserve-1, which the user named for the
// program (--preserve-fds, systemd's LISTEN_FDS): startProgram hands them on, and
// only them.
func PreservedFds(preserve int) ([]*os.File, error) {
	files := make([]*os.File, 0, preserve)
	for i := range preserve {
		fd := firstExtraFd + i
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			return nil, fmt.Errorf("--preserve-fds %d: descriptor %d is not open: %w", preserve, fd, err)
		}
		files = append(files, os.NewFile(uintptr(fd), "preserved-fd-"+strconv.Itoa(fd)))
	}
	return files, nil
}

// cloexecEach is SealInheritedFds's way on kernels before close_range (5.11).
func cloexecEach() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list inherited descriptors: %w", err)
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= firstExtraFd {
			unix.CloseOnExec(fd)
		}
	}
	return nil
}

// ListenFds is how many sockets systemd's socket activation handed this process
// (LISTEN_FDS, when LISTEN_PID names it), 0 otherwise.
func ListenFds() int {
	if pid, err := strconv.Atoi(os.Getenv("LISTEN_PID")); err != nil || pid != os.Getpid() {
		return 0
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// listenEnv rewrites socket activation's variables for a program that gets n
// descriptors: it is PID 1 of its own PID namespace, which is what it will check
// LISTEN_PID against.
func listenEnv(env []string, n int) []string {
	out := make([]string, 0, len(env)+2)
	for _, kv := range env {
		if hasKey(kv, "LISTEN_PID") || hasKey(kv, "LISTEN_FDS") {
			continue
		}
		out = append(out, kv)
	}
	if n == 0 {
		return out
	}
	return append(out, "LISTEN_PID=1", "LISTEN_FDS="+strconv.Itoa(n))
}

func hasKey(kv, key string) bool {
	return len(kv) > len(key) && kv[:len(key)] == key && kv[len(key)] == '='
}
