// Package container places the protected program in a container of its own: PID 1 of
// a new PID namespace that has its own /proc, in a mount namespace and an IPC
// namespace of its own, with a private /dev/shm, a private devpts and mqueue, and
// otherwise the host's filesystem exactly where the program expects it.
//
// Why a container: real daemons drop privileges (nginx workers run as www-data,
// memcached as memcache, postgres as postgres), and CRIU refuses to dump a task that
// is not root whose /proc does not belong to its PID namespace. postgres keeps SysV
// and POSIX shared memory, which CRIU dumps only with the IPC namespace that holds it,
// and its POSIX segments live in /dev/shm: a tmpfs of the program's own travels in
// every checkpoint (CRIU dumps its contents) and comes back with the memory that
// refers to it, instead of being shared with, and removed by, anything else.
//
// Why not runc's libcontainer: it wants an OCI bundle with a root filesystem it
// pivots into, runs its own init through a cgo nsexec stage, and owns the cgroup and
// the CRIU calls itself. ftrun already owns the cgroup (supervisor), the network
// namespace (netplace) and every CRIU call (checkpoint); what is left is a dozen
// mount calls between clone and exec, done here by ftrun's own binary re-executed
// as the container's first process (as runc does with `runc init`), which then execs
// the program so that it, not ftrun, is PID 1. The CRIU side follows libcontainer,
// which names each bind mount of its config as external (key and value its
// destination on dump, its source on restore) and gives CRIU the root filesystem on
// restore. ftrun's container has no list of mounts: it inherits the host's. So CRIU
// is asked to find the external ones itself (auto_ext_mnt, with external masters and
// sharing: mounts it can see in its own namespace are bound back from there) and the
// restore is rooted at the host's "/"; only the container's own filesystems (/proc,
// /dev/shm with its files, devpts, mqueue, sysfs, cgroup) are dumped.
//
// Init runs from this package's init function when the process was started by
// Start, so every binary that links the supervisor (ftrun, its tests) can be the
// container's first process.
package container

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/internal/procfs"
)

// initEnv carries the Spec to the re-executed binary; Init removes it from the
// program's environment.
const initEnv = "_FTRUN_CONTAINER_INIT"

// Spec is what the first process of the container needs to become the program.
type Spec struct {
	Path string   // absolute path of the program
	Args []string // argv, Args[0] included
	Dir  string   // working directory
	User *Cred    `json:",omitempty"` // run as this user; nil keeps root
	// Fds are the descriptors after stderr (3 .. 3+Fds-1) the program is given
	// (--preserve-fds, socket activation); everything above them is closed on exec.
	Fds int `json:",omitempty"`
}

// Cred is a resolved --user.
type Cred struct {
	Name   string
	Home   string
	UID    uint32
	GID    uint32
	Groups []uint32
}

// LookupUser resolves "NAME[:GROUP]" or "UID[:GID]" with its supplementary groups,
// as the program would get them from a login.
func LookupUser(spec string) (*Cred, error) {
	name, group, _ := strings.Cut(spec, ":")
	u, err := user.Lookup(name)
	if err != nil {
		if _, nerr := strconv.ParseUint(name, 10, 32); nerr != nil {
			return nil, fmt.Errorf("--user %q: %w (create the user, or give a numeric uid)", spec, err)
		}
		if u, err = user.LookupId(name); err != nil {
			u = &user.User{Uid: name, Gid: name, Username: name}
		}
	}
	c := &Cred{Name: u.Username, Home: u.HomeDir}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("--user %q: uid %q: %w", spec, u.Uid, err)
	}
	c.UID = uint32(uid)
	gidStr := u.Gid
	if group != "" {
		gidStr = group
		if g, err := user.LookupGroup(group); err == nil {
			gidStr = g.Gid
		}
	}
	gid, err := strconv.ParseUint(gidStr, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("--user %q: group %q is neither a group nor a number", spec, gidStr)
	}
	c.GID = uint32(gid)
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.ParseUint(s, 10, 32); err == nil {
				c.Groups = append(c.Groups, uint32(g))
			}
		}
	}
	if len(c.Groups) == 0 {
		c.Groups = []uint32{c.GID}
	}
	return c, nil
}

// Cloneflags are the namespaces of the container (besides the network namespace,
// which netplace owns).
const Cloneflags = syscall.CLONE_NEWPID | syscall.CLONE_NEWNS | syscall.CLONE_NEWIPC

// Command is what to exec so that the container's first process sets it up and then
// becomes the program: ftrun's own binary, with the Spec in its environment.
func Command(spec Spec, env []string) (path string, argv, fullEnv []string, err error) {
	if spec.Dir == "" {
		if spec.Dir, err = os.Getwd(); err != nil {
			return "", nil, nil, err
		}
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return "", nil, nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return "", nil, nil, fmt.Errorf("find ftrun's own binary to start the container: %w", err)
	}
	fullEnv = withoutInit(env)
	if spec.User != nil {
		// As systemd's User= and su do: the program's idea of who it is matches its uid.
		fullEnv = setEnv(fullEnv, "USER", spec.User.Name)
		fullEnv = setEnv(fullEnv, "LOGNAME", spec.User.Name)
		if spec.User.Home != "" {
			fullEnv = setEnv(fullEnv, "HOME", spec.User.Home)
		}
	}
	fullEnv = append(fullEnv, initEnv+"="+string(data))
	return self, append([]string{"ftrun-init"}, spec.Args...), fullEnv, nil
}

func setEnv(env []string, key, val string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, key+"=") {
			out = append(out, kv)
		}
	}
	return append(out, key+"="+val)
}

func withoutInit(env []string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, initEnv+"=") {
			out = append(out, kv)
		}
	}
	return out
}

func init() {
	data, ok := os.LookupEnv(initEnv)
	if !ok || os.Getpid() != 1 {
		return
	}
	err := Init(data)
	// Init returns only when it could not become the program.
	fmt.Fprintf(os.Stderr, "ftrun container: %v\n", err)
	os.Exit(127)
}

// Init sets up the container from inside (it is PID 1 of the new namespaces) and
// execs the program. It returns only on failure.
func Init(data string) error {
	var spec Spec
	if err := json.Unmarshal([]byte(data), &spec); err != nil {
		return fmt.Errorf("bad container spec: %w", err)
	}
	if err := setupMounts(); err != nil {
		return err
	}
	// fd 0 was opened in the host's mount namespace: CRIU could not find its mount.
	if err := reopenNull(0); err != nil {
		return err
	}
	// The same for the files the program is given (--preserve-fds): sockets and pipes
	// need no mount, files and directories are opened again in here.
	for fd := 3; fd < 3+spec.Fds; fd++ {
		if err := reopenInside(fd); err != nil {
			return fmt.Errorf("preserved descriptor %d: %w", fd, err)
		}
	}
	// Whatever ftrun inherited without CLOEXEC must not reach the program (a flock on
	// such an fd would make every restore wait forever). The descriptor just after the
	// preserved ones is the starter's pipe: its closing at the exec tells the starter
	// that the program runs.
	if err := unix.CloseRange(uint(3+spec.Fds), ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fmt.Errorf("close inherited fds: %w", err)
	}
	if err := os.Chdir(spec.Dir); err != nil {
		return fmt.Errorf("working directory %q: %w", spec.Dir, err)
	}
	if spec.User != nil {
		if err := become(*spec.User); err != nil {
			return err
		}
	}
	env := withoutInit(os.Environ())
	err := unix.Exec(spec.Path, spec.Args, env)
	return fmt.Errorf("exec %q: %w", spec.Path, err)
}

// reopenInside replaces fd, when it is a file or directory opened in the host's mount
// namespace, by the same path opened in the container's, with its flags and offset.
func reopenInside(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFDIR {
		return nil
	}
	path, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return err
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	off, _ := unix.Seek(fd, 0, 1)
	n, err := unix.Open(path, (flags&^(unix.O_CREAT|unix.O_EXCL|unix.O_TRUNC))|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %q again in the container: %w", path, err)
	}
	defer unix.Close(n)
	if off > 0 {
		if _, err := unix.Seek(n, off, 0); err != nil {
			return err
		}
	}
	return unix.Dup3(n, fd, 0)
}

func reopenNull(fd int) error {
	n, err := unix.Open("/dev/null", unix.O_RDONLY, 0)
	if err != nil {
		return fmt.Errorf("open /dev/null in the container: %w", err)
	}
	if n != fd {
		if err := unix.Dup3(n, fd, 0); err != nil {
			return err
		}
		unix.Close(n)
	}
	return nil
}

// become switches to the user for good. Go applies these to every thread.
func become(c Cred) error {
	groups := make([]int, len(c.Groups))
	for i, g := range c.Groups {
		groups[i] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("--user %s: setgroups: %w", c.Name, err)
	}
	if err := syscall.Setresgid(int(c.GID), int(c.GID), int(c.GID)); err != nil {
		return fmt.Errorf("--user %s: setgid %d: %w", c.Name, c.GID, err)
	}
	if err := syscall.Setresuid(int(c.UID), int(c.UID), int(c.UID)); err != nil {
		return fmt.Errorf("--user %s: setuid %d: %w", c.Name, c.UID, err)
	}
	return nil
}

// mount is one filesystem the container gets of its own, in place of the host's.
type mount struct {
	target, fstype, data string
	flags                uintptr
	optional             bool // skipped where the host has no such directory
}

// ownMounts replace the host's: /proc for the new PID namespace, the rest so that
// what the program keeps there is its own and travels in its checkpoints.
var ownMounts = []mount{
	{target: "/proc", fstype: "proc", flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
	{target: "/dev/shm", fstype: "tmpfs", data: "mode=1777", flags: unix.MS_NOSUID | unix.MS_NODEV},
	{target: "/dev/pts", fstype: "devpts", data: "newinstance,ptmxmode=0666,mode=0620", flags: unix.MS_NOSUID | unix.MS_NOEXEC, optional: true},
	{target: "/dev/mqueue", fstype: "mqueue", flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, optional: true},
}

func setupMounts() error {
	// Nothing the program mounts leaks to the host and nothing the host mounts later
	// appears here: CRIU must find the same layout at restore.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make mounts private: %w", err)
	}
	mi, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	for _, m := range transientMounts(mi) {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	// /proc last: everything before it may still need it.
	for i := len(ownMounts) - 1; i >= 0; i-- {
		m := ownMounts[i]
		if _, err := os.Stat(m.target); err != nil {
			if m.optional {
				continue
			}
			return fmt.Errorf("%s: %w", m.target, err)
		}
		detachAll(m.target)
	}
	for _, m := range ownMounts {
		if _, err := os.Stat(m.target); err != nil && m.optional {
			continue
		}
		if err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, m.data); err != nil {
			if m.optional {
				continue
			}
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	return nil
}

// detachAll removes every mount stacked on target.
func detachAll(target string) {
	for i := 0; i < 16; i++ {
		if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
			return
		}
	}
}

type mountEntry struct{ root, point, fstype string }

func readMountinfo(path string) ([]mountEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if e, ok := parseMountinfo(sc.Text()); ok {
			out = append(out, e)
		}
	}
	return out, sc.Err()
}

// parseMountinfo reads the mount point and filesystem type of one mountinfo line.
func parseMountinfo(line string) (mountEntry, bool) {
	pre, post, ok := strings.Cut(line, " - ")
	if !ok {
		return mountEntry{}, false
	}
	f := strings.Fields(pre)
	g := strings.Fields(post)
	if len(f) < 5 || len(g) < 1 {
		return mountEntry{}, false
	}
	return mountEntry{root: procfs.Unescape(f[3]), point: procfs.Unescape(f[4]), fstype: g[0]}, true
}

// transientMounts are the host's mounts the container leaves out, deepest first:
// namespace handles (ip netns's, other containers'), which are no business of the
// program's and which CRIU cannot dump; bind mounts of a part of a filesystem outside
// /dev, /sys and /proc (another container's root, a scratch bind); and whatever is
// mounted below /tmp or /var/tmp. They come and go with whoever made them, and the
// container's mounts are private (nothing the host does later reaches them), so a
// checkpoint would still carry a mount the host has removed, and CRIU can neither
// dump nor restore that. Whole filesystems where a system keeps them (the root,
// /home, /run, a data disk) stay where the program expects them. CRIU's own
// directory, /run/criu (its kernel probe cache, on a tmpfs ftrun may have mounted),
// goes too: a checkpoint that carried it would restore only where it exists.
func transientMounts(mi []mountEntry) []string {
	var out []string
	for i := len(mi) - 1; i >= 0; i-- {
		m := mi[i]
		api := underAny(m.point, "/dev", "/sys", "/proc")
		switch {
		case m.fstype == "nsfs" || m.point == criuRunDir:
			out = append(out, m.point)
		case m.root != "/" && !api:
			out = append(out, m.point)
		case !api && (below(m.point, "/tmp") || below(m.point, "/var/tmp")):
			out = append(out, m.point)
		}
	}
	return out
}

// criuRunDir is where the CRIU scripts/setup builds keeps its kernel probe.
const criuRunDir = "/run/criu"

// below reports p strictly inside dir.
func below(p, dir string) bool { return strings.HasPrefix(p, dir+"/") }

func underAny(p string, dirs ...string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}
