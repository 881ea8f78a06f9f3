// Package dirtier is a small C program whose memory changes by a controlled number of
// pages at a time, and the code to build and drive it: the real workload of the page
// delta tests, the standby's commit benchmark and ftrun bench.
package dirtier

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Source fills a heap of argv[1] MiB (every page different), then on each SIGUSR1
// writes a counter into exactly argv[2] distinct heap pages and records the round in
// the file argv[3]. The record has a fixed width and is written in place, because CRIU
// refuses to restore an open regular file whose size changed since the dump.
const Source = `
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PAGE 4096
static volatile sig_atomic_t pending;
static void on_usr1(int s) { (void)s; pending++; }

static void record(int fd, const char *what, unsigned long round) {
	char buf[32];
	int n = snprintf(buf, sizeof buf, "%-5s %010lu\n", what, round);
	if (pwrite(fd, buf, n, 0) != n) _exit(3);
}

int main(int argc, char **argv) {
	if (argc != 4) return 2;
	size_t npages = (size_t)atol(argv[1]) * 256, n = (size_t)atol(argv[2]);
	if (n == 0 || n > npages) return 2;
	char *heap = malloc(npages * PAGE);
	if (!heap) return 1;
	for (size_t i = 0; i < npages; i++) memset(heap + i * PAGE, (int)(i * 7 + 1), PAGE);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	int fd = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0) return 1;
	unsigned long round = 0, counter = 0;
	record(fd, "ready", 0);
	sigset_t none;
	sigemptyset(&none);
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, NULL);
	for (;;) {
		while (!pending) sigsuspend(&none);
		pending--;
		round++;
		size_t stride = npages / n;
		for (size_t k = 0; k < n; k++) {
			unsigned long *p = (unsigned long *)(heap + (k * stride + round % stride) * PAGE);
			*p = ++counter;
		}
		record(fd, "done", round);
	}
}
`

// Build compiles Source with gcc into dir and returns the binary's path.
func Build(dir string) (string, error) {
	src, bin := filepath.Join(dir, "dirtier.c"), filepath.Join(dir, "dirtier")
	if err := os.WriteFile(src, []byte(Source), 0o644); err != nil {
		return "", err
	}
	if out, err := exec.Command("gcc", "-O1", "-o", bin, src).CombinedOutput(); err != nil {
		return "", fmt.Errorf("gcc dirtier.c: %w: %s", err, out)
	}
	return bin, nil
}

// Proc is a running dirtier.
type Proc struct {
	Cmd   *exec.Cmd
	Pid   int
	state string
	round int
}

// Start runs bin with a heap of mib MiB dirtying pages pages a round, in a session of
// its own, and waits until its heap is filled.
func Start(bin string, mib, pages int, state string) (*Proc, error) {
	p := &Proc{state: state}
	p.Cmd = exec.Command(bin, fmt.Sprint(mib), fmt.Sprint(pages), state)
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := p.Cmd.Start(); err != nil {
		return nil, err
	}
	p.Pid = p.Cmd.Process.Pid
	if err := p.WaitFor("ready", 0); err != nil {
		p.Kill()
		return nil, err
	}
	return p, nil
}

// Dirty makes the program dirty its pages once more and waits until it has.
func (p *Proc) Dirty() error {
	p.round++
	if err := syscall.Kill(p.Pid, syscall.SIGUSR1); err != nil {
		return err
	}
	return p.WaitFor("done", p.round)
}

// WaitFor waits until the program records what for round.
func (p *Proc) WaitFor(what string, round int) error {
	want := fmt.Sprintf("%-5s %010d\n", what, round)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, _ := os.ReadFile(p.state)
		if string(got) == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dirtier pid %d: state %q, want %q", p.Pid, got, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// Kill ends the program.
func (p *Proc) Kill() {
	if p.Cmd != nil {
		p.Cmd.Process.Kill()
		p.Cmd.Wait()
		p.Cmd = nil
	}
}

// Restored is the same program brought back by a restore under pid: same state file,
// same round. Kill does nothing to it (it is not this process's child).
func (p *Proc) Restored(pid int) *Proc {
	return &Proc{Pid: pid, state: p.state, round: p.round}
}
