//go:build !amd64

package dirty

import (
	"fmt"
	"runtime"
)

// injectUffd is implemented for amd64 only: the injected syscall is built from that
// architecture's registers and instruction. Elsewhere every process stays untracked
// and its dumps are full ones.
func injectUffd(pid int) (int, error) {
	return -1, fmt.Errorf("%w: injecting userfaultfd(2) into process %d is implemented for amd64 only, not %s", ErrUnsupported, pid, runtime.GOARCH)
}

// injectionArch says whether this build can inject the userfaultfd.
const injectionArch = false
