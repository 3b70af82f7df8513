/* SPDX-License-Identifier: MIT */
/* An ordinary program that uses memory every way a real one does; check_run runs it plain and under `lazymem run`. */
#include "config.h"

#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lazyat.h"

/*
 * It knows nothing of lazymem: it prints what it computed (the same with
 * and without lazy memory, or check_run fails) and, on lines starting
 * with '#', what it saw of its own memory, which check_run reads apart.
 */

#define FAIL(...) \
	do { \
		fprintf(stderr, "run-victim: " __VA_ARGS__); \
		fputc('\n', stderr); \
		exit(3); \
	} while (0)

static uint64_t hash;

static void mix(const void *p, size_t n)
{
	const unsigned char *c = p;
	for (size_t i = 0; i < n; i++)
		hash = (hash ^ c[i]) * 0x100000001b3ULL;
}

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void fill(unsigned char *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(seed + i * 7 + (i >> 12));
}

static void check(const unsigned char *p, size_t n, uint64_t seed, const char *what)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != (unsigned char)(seed + i * 7 + (i >> 12)))
			FAIL("%s: byte %zu is %u", what, i, p[i]);
}


/* malloc and its relatives, in a structure several times any budget check_run sets. */
static void heap(size_t total)
{
	size_t n = total / 4096;
	unsigned char **v = calloc(n, sizeof(*v));
	size_t *len = calloc(n, sizeof(*len));
	if (!v || !len)
		FAIL("calloc");
	uint64_t s = 42;
	for (size_t i = 0; i < n; i++) {
		len[i] = 16 + rng(&s) % 8000;
		switch (i % 4) {
		case 0: v[i] = malloc(len[i]); break;
		case 1: v[i] = calloc(1, len[i]); break;
		case 2:
			if (posix_memalign((void **)&v[i], (size_t)64 << (i % 7), len[i]))
				v[i] = NULL;
			break;
		default: v[i] = aligned_alloc(4096, (len[i] + 4095) & ~(size_t)4095); break;
		}
		if (!v[i])
			FAIL("allocation %zu of %zu bytes", i, len[i]);
		if (i % 4 == 2 && ((uintptr_t)v[i] & ((64u << (i % 7)) - 1)))
			FAIL("posix_memalign: %p not aligned", (void *)v[i]);
		if (malloc_usable_size(v[i]) < len[i])
			FAIL("malloc_usable_size %zu < %zu", malloc_usable_size(v[i]), len[i]);
		if (i % 4 == 1)
			for (size_t k = 0; k < len[i]; k++)
				if (v[i][k])
					FAIL("calloc memory not zero");
		fill(v[i], len[i], i);
	}
	printf("# heap lazy %s\n", lazy_at(v[n / 2]));
	/* Grow and shrink a third of them: realloc keeps what fits. */
	for (size_t i = 0; i < n; i += 3) {
		size_t nl = i % 2 ? len[i] * 3 : len[i] / 2 + 1;
		unsigned char *p = realloc(v[i], nl);
		if (!p)
			FAIL("realloc");
		check(p, nl < len[i] ? nl : len[i], i, "realloc");
		v[i] = p;
		len[i] = nl;
		fill(v[i], len[i], i);
	}
	/* Free half, allocate again, check everything. */
	for (size_t i = 0; i < n; i += 2) {
		free(v[i]);
		v[i] = malloc(len[i]);
		if (!v[i])
			FAIL("malloc again");
		fill(v[i], len[i], i + 1);
	}
	for (size_t i = 0; i < n; i++) {
		check(v[i], len[i], i + !(i % 2), "heap");
		mix(v[i], len[i]);
		free(v[i]);
	}
	free(v);
	free(len);
	printf("heap %016llx\n", (unsigned long long)hash);
}

/* A large anonymous mapping of the program's own, cut, moved, advised. */
static void mapping(size_t len)
{
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		FAIL("mmap: %s", strerror(errno));
	printf("# mmap lazy %s\n", lazy_at(p));
	fill(p, len, 9);
	check(p, len, 9, "mmap");
	size_t q = len / 4;
	/* A hole in the middle: both sides stay. */
	if (munmap(p + q, q))
		FAIL("munmap middle: %s", strerror(errno));
	check(p, q, 9, "mmap head");
	check(p + 2 * q, len - 2 * q, 9 + 2 * q, "mmap tail");
	mix(p + 2 * q, len - 2 * q);
	/* Drop the head's pages: zeros after, as the kernel gives. */
	if (madvise(p, q / 2, MADV_DONTNEED))
		FAIL("madvise: %s", strerror(errno));
	for (size_t i = 0; i < q / 2; i += 4096)
		if (p[i])
			FAIL("madvise(DONTNEED) left data");
	if (madvise(p + q / 2, q / 2, MADV_FREE))
		FAIL("madvise(FREE): %s", strerror(errno));
	/* Move the tail elsewhere, twice its size. */
	unsigned char *t = mremap(p + 2 * q, len - 2 * q, 2 * (len - 2 * q), MREMAP_MAYMOVE);
	if (t == MAP_FAILED)
		FAIL("mremap: %s", strerror(errno));
	check(t, len - 2 * q, 9 + 2 * q, "mremap");
	for (size_t i = len - 2 * q; i < 2 * (len - 2 * q); i += 4096)
		if (t[i])
			FAIL("mremap: grown part not zero");
	memset(t + len - 2 * q, 0x5a, len - 2 * q);
	mix(t, 2 * (len - 2 * q));
	if (munmap(t, 2 * (len - 2 * q)) || munmap(p, q))
		FAIL("munmap: %s", strerror(errno));
	/* Many mappings at the threshold, as Python's arenas are. */
	unsigned char *m[64];
	for (int i = 0; i < 64; i++) {
		m[i] = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m[i] == MAP_FAILED)
			FAIL("mmap %d", i);
		fill(m[i], 1 << 20, (uint64_t)i);
	}
	for (int i = 0; i < 64; i++) {
		check(m[i], 1 << 20, (uint64_t)i, "arena");
		munmap(m[i], 1 << 20);
	}
	printf("mmap %016llx\n", (unsigned long long)hash);
}

struct worker {
	pthread_t t;
	int id;
	uint64_t sum;
	const char *lazy;	/* whether the thread's heap (its own arena) is lazy */
};

static void *work(void *arg)
{
	struct worker *w = arg;
	uint64_t s = 7 + (uint64_t)w->id;
	enum { N = 2000 };
	unsigned char **v = malloc(N * sizeof(*v));
	size_t *l = malloc(N * sizeof(*l));
	for (int round = 0; round < 4; round++) {
		for (int i = 0; i < N; i++) {
			l[i] = 32 + rng(&s) % 6000;
			v[i] = malloc(l[i]);
			fill(v[i], l[i], (uint64_t)(i + w->id));
		}
		if (round == 0)
			w->lazy = lazy_at(v[N / 2]);
		for (int i = 0; i < N; i++) {
			check(v[i], l[i], (uint64_t)(i + w->id), "thread");
			w->sum += v[i][l[i] - 1];
			free(v[i]);
		}
	}
	free(v);
	free(l);
	return NULL;
}

static void threads(void)
{
	struct worker w[6];
	for (int i = 0; i < 6; i++) {
		w[i] = (struct worker){ .id = i };
		if (pthread_create(&w[i].t, NULL, work, &w[i]))
			FAIL("pthread_create");
	}
	uint64_t sum = 0;
	const char *lazy = "yes";
	for (int i = 0; i < 6; i++) {
		pthread_join(w[i].t, NULL);
		sum += w[i].sum;
		if (strcmp(w[i].lazy, "yes"))
			lazy = w[i].lazy;
	}
	printf("threads %llu\n", (unsigned long long)sum);
	printf("# threads lazy %s\n", lazy);
}

/* A signal handler that allocates, run while the program waits (not inside malloc). */
static volatile sig_atomic_t handled;
static void on_usr1(int sig)
{
	(void)sig;
	for (int i = 0; i < 100; i++) {
		char *p = malloc(100 + (size_t)i * 1000);
		if (!p)
			_exit(4);
		memset(p, i, 100 + (size_t)i * 1000);
		free(p);
	}
	handled++;
}

/*
 * Standard signals do not queue: each is sent once the last was handled,
 * to the main thread, which waits for it with the signal blocked
 * otherwise (sigsuspend: no wake-up lost between the check and the wait).
 */
static void *signaller(void *arg)
{
	pthread_t main_thread = *(pthread_t *)arg;
	for (int i = 0; i < 20; i++) {
		pthread_kill(main_thread, SIGUSR1);
		for (int w = 0; handled <= i; w++) {
			if (w > 100000)
				FAIL("signal %d was never handled", i);
			usleep(100);
		}
	}
	return NULL;
}

static void signals(void)
{
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &block, &old);
	pthread_t me = pthread_self(), t;
	pthread_create(&t, NULL, signaller, &me);
	while (handled < 20)
		sigsuspend(&old);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_join(t, NULL);
	printf("signals %d\n", (int)handled);
}

/* fork() without exec: the child reads and writes the heap it inherited. */
static void forks(const char *self)
{
	size_t n = 8 << 20;
	unsigned char *p = malloc(n);
	fill(p, n, 77);
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		check(p, n, 77, "fork child");
		fill(p, n, 78);
		check(p, n, 78, "fork child write");
		_exit(0);
	}
	int st;
	waitpid(pid, &st, 0);
	check(p, n, 77, "fork parent");
	printf("fork %s\n", WIFEXITED(st) && !WEXITSTATUS(st) ? "ok" : "failed");
	free(p);
	/* fork() and exec: does the child inherit lazy memory? */
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		execl(self, self, "child", (char *)NULL);
		_exit(127);
	}
	waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		FAIL("exec'ed child: status %#x", st);
}

/* dlopen and dlsym after start-up. */
static void dl(void)
{
	void *h = dlopen("libm.so.6", RTLD_NOW);
	double (*c)(double) = h ? (double (*)(double))dlsym(h, "cos") : NULL;
	printf("dl %s\n", c && c(0.0) == 1.0 ? "ok" : "failed");
	if (h)
		dlclose(h);
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "child")) {
		/* Large enough not to fit what jemalloc mapped before the hooks were set. */
		char *p = malloc(16 << 20);
		memset(p, 1, 16 << 20);
		printf("# child lazy %s\n", lazy_at(p));
		free(p);
		return 0;
	}
	size_t mb = argc > 1 ? (size_t)atoi(argv[1]) : 64;
	setvbuf(stdout, NULL, _IOLBF, 0);
	heap(mb << 20);
	mapping(mb << 20);
	threads();
	signals();
	forks(argv[0]);
	dl();
	/* Preloaded with librun-early.so: its thread's report (check_run, thread_before_runtime). */
	void (*early)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "lmt_early_report");
	if (early)
		early();
	return 0;
}
