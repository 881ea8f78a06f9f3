// Package memcheck is a C program that tells whether a restore gave back exactly the
// memory it was checkpointed with, and the code to build it and read what it says.
//
// The program changes its memory in rounds, every step drawn from generators that
// live in that memory: pages of a heap, mapped regions that come and go (and are
// partly dropped with MADV_DONTNEED, or grown and moved with mremap), the regions
// of two threads and of a forked child, a shared anonymous region both processes
// write, and a private mapping of the program's own file, a few of its pages
// written (copied on write) and the rest as the file has them. After each round it prints the round's number
// and a hash of all of it. A restore brings it back to a round already printed, and
// it runs the rounds after it again; if memory is exactly what was dumped, it prints
// for each the same hash as the first time. One page missing or stale anywhere, in
// the program's own data or in the generators' state, and the hashes part.
package memcheck

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
)

// HeapPages is the size of the program's heap in pages (HEAP_PAGES in Source).
const HeapPages = 1024

// Source is the program. Its first line of output is "memcheck heap 0xADDR" (where
// the heap is, for a test that damages it on purpose), then "round N HASH" per round.
const Source = `
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define HEAP_PAGES 1024
#define SLOTS 8
#define THREADS 2
#define THREAD_PAGES 256
#define CHILD_PAGES 256
#define SHARED_PAGES 64
#define FILE_PAGES 256

/* makes the program's file at least FILE_PAGES long, for its private mapping */
__attribute__((used)) static const unsigned char pad[FILE_PAGES * PAGE] = {1};
static unsigned char *shared;

static uint64_t next(uint64_t *s) {
	uint64_t x = *s;
	x ^= x >> 12; x ^= x << 25; x ^= x >> 27;
	*s = x;
	return x * 2685821657736338717ULL;
}

static uint64_t hash(uint64_t h, const void *p, size_t n) {
	const uint64_t *w = p;
	for (size_t i = 0; i < n / 8; i++) { h ^= w[i]; h *= 0x100000001b3ULL; }
	return h;
}

/* writes random words into random pages of mem */
static void dirty(unsigned char *mem, size_t pages, uint64_t *rng, int writes) {
	for (int i = 0; i < writes; i++) {
		uint64_t r = next(rng);
		((uint64_t *)(mem + (r % pages) * PAGE))[(r >> 40) % (PAGE / 8)] = r;
	}
}

struct worker { pthread_t t; unsigned char *mem; uint64_t rng; };
static struct worker workers[THREADS];
static pthread_barrier_t start, done;

static void *work(void *arg) {
	struct worker *w = arg;
	for (;;) {
		pthread_barrier_wait(&start);
		dirty(w->mem, THREAD_PAGES, &w->rng, 64);
		pthread_barrier_wait(&done);
	}
	return NULL;
}

static void child(int in, int out) {
	unsigned char *mem = malloc(CHILD_PAGES * PAGE);
	uint64_t rng = 0x5eed0c41d, round;
	memset(mem, 0x5a, CHILD_PAGES * PAGE);
	while (read(in, &round, sizeof round) == sizeof round) {
		dirty(mem, CHILD_PAGES, &rng, 64);
		dirty(shared, SHARED_PAGES, &rng, 8);
		uint64_t h = hash(round, mem, CHILD_PAGES * PAGE);
		if (write(out, &h, sizeof h) != sizeof h) break;
	}
	_exit(0);
}

int main(void) {
	struct { unsigned char *mem; size_t pages; } slots[SLOTS] = {0};
	uint64_t rng = 0x5eed, round = 0;
	unsigned char *heap = malloc(HEAP_PAGES * PAGE);
	int down[2], up[2], fd;
	struct stat st;
	unsigned char *file;
	size_t file_pages;
	for (size_t i = 0; i < HEAP_PAGES * PAGE; i++) heap[i] = (unsigned char)(i * 7);
	shared = mmap(NULL, SHARED_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED) return 1;
	memset(shared, 0x33, SHARED_PAGES * PAGE);
	fd = open("/proc/self/exe", O_RDONLY);
	if (fd < 0 || fstat(fd, &st)) return 1;
	file_pages = st.st_size / PAGE;
	file = mmap(NULL, file_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (file == MAP_FAILED) return 1;
	close(fd);
	if (pipe(down) || pipe(up)) return 1;
	if (fork() == 0) { close(down[1]); close(up[0]); child(down[0], up[1]); }
	close(down[0]); close(up[1]);
	pthread_barrier_init(&start, NULL, THREADS + 1);
	pthread_barrier_init(&done, NULL, THREADS + 1);
	for (int i = 0; i < THREADS; i++) {
		workers[i].mem = mmap(NULL, THREAD_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		workers[i].rng = 0x7e4d + i;
		pthread_create(&workers[i].t, NULL, work, &workers[i]);
	}
	printf("memcheck heap %p\n", (void *)heap);
	fflush(stdout);
	for (;;) {
		uint64_t r = next(&rng), h, ch;
		int s = r % SLOTS;
		round++;
		if (slots[s].mem && (r >> 8) % 2) {
			munmap(slots[s].mem, slots[s].pages * PAGE);
			slots[s].mem = NULL;
		} else if (!slots[s].mem) {
			slots[s].pages = 1 + (r >> 16) % 64;
			slots[s].mem = mmap(NULL, slots[s].pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (slots[s].mem == MAP_FAILED) return 1;
			dirty(slots[s].mem, slots[s].pages, &rng, (int)slots[s].pages);
		} else if ((r >> 24) % 2) {
			/* dropped pages read back as zeros */
			madvise(slots[s].mem, (slots[s].pages + 1) / 2 * PAGE, MADV_DONTNEED);
		} else {
			/* grown, maybe moved elsewhere, its new page written */
			void *m = mremap(slots[s].mem, slots[s].pages * PAGE, (slots[s].pages + 1) * PAGE, MREMAP_MAYMOVE);
			if (m == MAP_FAILED) return 1;
			slots[s].mem = m;
			slots[s].pages++;
			dirty(slots[s].mem + (slots[s].pages - 1) * PAGE, 1, &rng, 8);
		}
		dirty(heap, HEAP_PAGES, &rng, 256);
		dirty(shared, SHARED_PAGES, &rng, 8);
		dirty(file, file_pages, &rng, 2);
		for (int i = 0; i < SLOTS; i++)
			if (slots[i].mem) dirty(slots[i].mem, slots[i].pages, &rng, 4);
		pthread_barrier_wait(&start);
		pthread_barrier_wait(&done);
		if (write(down[1], &round, sizeof round) != sizeof round || read(up[0], &ch, sizeof ch) != sizeof ch) return 1;
		h = hash(0xcbf29ce484222325ULL ^ round, heap, HEAP_PAGES * PAGE) ^ ch;
		for (int i = 0; i < SLOTS; i++)
			if (slots[i].mem) h = hash(h ^ (uint64_t)i << 32 ^ slots[i].pages, slots[i].mem, slots[i].pages * PAGE);
		for (int i = 0; i < THREADS; i++) h = hash(h, workers[i].mem, THREAD_PAGES * PAGE);
		h = hash(h, shared, SHARED_PAGES * PAGE);
		h = hash(h, file, file_pages * PAGE);
		h = hash(h, &rng, sizeof rng);
		printf("round %llu %016llx\n", (unsigned long long)round, (unsigned long long)h);
		fflush(stdout);
		nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
	}
}
`

// Build compiles Source with gcc into dir and returns the binary's path.
func Build(dir string) (string, error) {
	src := filepath.Join(dir, "memcheck.c")
	bin := filepath.Join(dir, "memcheck")
	if err := os.WriteFile(src, []byte(Source), 0o644); err != nil {
		return "", err
	}
	if out, err := exec.Command("gcc", "-O1", "-pthread", "-o", bin, src).CombinedOutput(); err != nil {
		return "", fmt.Errorf("gcc memcheck.c: %w: %s", err, out)
	}
	return bin, nil
}

var (
	roundLine = regexp.MustCompile(`round (\d+) ([0-9a-f]{16})`)
	heapLine  = regexp.MustCompile(`memcheck heap (0x[0-9a-f]+)`)
)

// Report is what the program's output says.
type Report struct {
	Rounds   int      // the highest round printed
	Repeated int      // rounds printed more than once (run again after a restore)
	Mismatch []string // rounds whose hashes differ between runs
}

// Read goes through the program's output (of every run, in order).
func Read(out string) Report {
	var rep Report
	seen := map[uint64]string{}
	counted := map[uint64]bool{}
	for _, m := range roundLine.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.ParseUint(m[1], 10, 64)
		rep.Rounds = max(rep.Rounds, int(n))
		h, ok := seen[n]
		switch {
		case !ok:
			seen[n] = m[2]
		case h != m[2]:
			rep.Mismatch = append(rep.Mismatch, fmt.Sprintf("round %d: %s, then %s", n, h, m[2]))
		case !counted[n]:
			counted[n] = true
			rep.Repeated++
		}
	}
	return rep
}

// Heap is the address of the program's heap, from its first line; 0 if not printed.
func Heap(out string) uint64 {
	m := heapLine.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	a, _ := strconv.ParseUint(m[1], 0, 64)
	return a
}
