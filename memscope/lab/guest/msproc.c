/*
 * msproc: the lab's process workloads, one static binary per guest architecture (built by
 * the host when it writes the initramfs, memscope/lab/runner.py).  Each mode sets up its
 * memory, then creates /tmp/msproc.<pid>.ready and waits (pause) until the guest is dumped.
 *
 *   msproc threads N    N threads, each with its own malloc arena (glibc gives a thread its
 *                       own arena on its first malloc) and 64 KiB allocated in it; the
 *                       threads' stacks are anonymous mmaps with a guard page below.
 *   msproc files DIR    a 4 MiB file in DIR (a tmpfs) mapped shared and written, the same
 *                       file mapped private and half written (copy on write), a PROT_NONE
 *                       reservation, a 3 MiB anonymous mapping named "msproc-anon" with
 *                       prctl(PR_SET_VMA_ANON_NAME) (5.17+; where the kernel refuses, it
 *                       stays unnamed), a shared anonymous mapping named "msproc-shmem"
 *                       (6.2+: [anon_shmem:NAME]) and an mlocked page.
 *   msproc heap N       N malloc'd chunks of 100..1000 bytes kept; on SIGUSR1, 500 more;
 *                       after each round it writes "chunks TOTAL" to
 *                       /run/memscope/note.<pid> (which `snapshot` prints with the truth)
 *                       and recreates the ready file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#define PR_SET_VMA_ANON_NAME 0
#endif

#define MiB (1024UL * 1024)

static void die(const char *what)
{
	fprintf(stderr, "msproc: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void ready(void)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/tmp/msproc.%d.ready", (int)getpid());
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die(path);
	close(fd);
}

static void *thread_main(void *arg)
{
	(void)arg;
	for (int i = 0; i < 64; i++)
		memset(malloc(1024), 0x5a, 1024);
	for (;;)
		pause();
	return NULL;
}

static _Noreturn void threads(int n)
{
	pthread_t t;

	for (int i = 0; i < n; i++)
		if ((errno = pthread_create(&t, NULL, thread_main, NULL)))
			die("pthread_create");
	sleep(1); /* let each thread make its arena before the ready file */
	ready();
	for (;;)
		pause();
}

static void *map(size_t len, int prot, int flags, int fd)
{
	void *p = mmap(NULL, len, prot, flags, fd, 0);

	if (p == MAP_FAILED)
		die("mmap");
	return p;
}

static void name(void *p, size_t len, const char *n)
{
	/* EINVAL where the kernel has no anonymous VMA names (before 5.17) or refuses
	 * a shared mapping's (before 6.2): the mapping stays unnamed. */
	prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, (unsigned long)p, len, (unsigned long)n);
}

static _Noreturn void files(const char *dir)
{
	char path[256];
	size_t flen = 4 * MiB;
	char *shared, *private, *anon, *shm, *locked;
	int fd;

	snprintf(path, sizeof(path), "%s/msproc-file", dir);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die(path);
	if (ftruncate(fd, flen))
		die("ftruncate");
	shared = map(flen, PROT_READ | PROT_WRITE, MAP_SHARED, fd);
	memset(shared, 'f', flen);
	private = map(flen, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd);
	for (size_t off = 0; off < flen; off += 8192)
		private[off] = 'p'; /* every other page copied on write */
	map(2 * MiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
	anon = map(3 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	memset(anon, 'a', 3 * MiB);
	name(anon, 3 * MiB, "msproc-anon");
	shm = map(1 * MiB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1);
	memset(shm, 's', 512 * 1024);
	name(shm, 1 * MiB, "msproc-shmem");
	locked = map(4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	if (mlock(locked, 4096))
		die("mlock");
	locked[0] = 'l';
	ready();
	for (;;)
		pause();
}

static volatile sig_atomic_t more;

static void on_usr1(int sig)
{
	(void)sig;
	more = 1;
}

static void note(long total)
{
	/* open/write, not stdio: fopen would malloc (and free) in the heap being counted */
	char path[64], line[32];
	int fd, len;

	snprintf(path, sizeof(path), "/run/memscope/note.%d", (int)getpid());
	len = snprintf(line, sizeof(line), "chunks %ld\n", total);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, line, len) != len)
		die(path);
	close(fd);
}

static void allocate(long n, long *total)
{
	for (long i = 0; i < n; i++) {
		size_t size = 100 + (size_t)(*total * 37 % 901);
		memset(malloc(size), 'h', size);
		(*total)++;
	}
}

static _Noreturn void heap(long n)
{
	long total = 0;
	sigset_t usr1, old;

	signal(SIGUSR1, on_usr1);
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, &old);
	allocate(n, &total);
	note(total);
	ready();
	for (;;) {
		while (!more)
			sigsuspend(&old);
		more = 0;
		allocate(500, &total);
		note(total);
		ready();
	}
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "threads"))
		threads(atoi(argv[2]));
	if (argc == 3 && !strcmp(argv[1], "files"))
		files(argv[2]);
	if (argc == 3 && !strcmp(argv[1], "heap"))
		heap(atol(argv[2]));
	fprintf(stderr, "usage: msproc threads N | files DIR | heap N\n");
	return 2;
}
