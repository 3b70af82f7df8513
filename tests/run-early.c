/* SPDX-License-Identifier: MIT */
/* A library whose constructor starts an allocating thread before the lazymem runtime opens, for check_run. */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lazyat.h"

/*
 * Preloaded after liblazymem-preload.so (lazymem run puts its own first),
 * so glibc initialises it first: its thread exists, and has allocated
 * from an arena of its own, before the runtime opens.  It goes on
 * allocating, filling and checking blocks all the while; at the end the
 * program calls lmt_early_report (found with dlsym), and the thread's
 * next large block must be lazy, every check must have held, and the
 * constructor must have found no userfaultfd open (else the test would
 * not test what it says).
 */

static pthread_t thread;
static atomic_bool report_wanted, stop;
static atomic_int phase;		/* 0: running, 1: report written */
static bool runtime_before;
static unsigned long errors, rounds;
static char lazy[8] = "?";

static bool uffd_open(void)
{
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return false;
	bool found = false;
	for (struct dirent *e; (e = readdir(d)) && !found;) {
		char path[300], target[128];
		snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
		ssize_t n = readlink(path, target, sizeof(target) - 1);
		if (n > 0) {
			target[n] = 0;
			found = strstr(target, "userfaultfd") != NULL;
		}
	}
	closedir(d);
	return found;
}


static void *loop(void *arg)
{
	(void)arg;
	enum { N = 64 };
	unsigned char *v[N];
	size_t len[N];
	uint64_t s = 88172645463325252ull;
	while (!atomic_load(&stop)) {
		for (int i = 0; i < N; i++) {
			s ^= s << 13, s ^= s >> 7, s ^= s << 17;
			len[i] = 16 + s % 65536;
			v[i] = malloc(len[i]);
			if (!v[i]) {
				errors++;
				len[i] = 0;
				continue;
			}
			memset(v[i], (int)(i + rounds), len[i]);
		}
		for (int i = 0; i < N; i++) {
			for (size_t k = 0; k < len[i]; k += 4093)
				if (v[i][k] != (unsigned char)(i + rounds))
					errors++;
			free(v[i]);
		}
		rounds++;
		if (atomic_load(&report_wanted) && !atomic_load(&phase)) {
			/* Larger than anything this arena mapped before the runtime opened. */
			size_t big = 64u << 20;
			unsigned char *p = malloc(big);
			if (p) {
				memset(p, 0x5a, big);
				snprintf(lazy, sizeof(lazy), "%s", lazy_at(p + big / 2));
				for (size_t k = 0; k < big; k += 65536)
					if (p[k] != 0x5a)
						errors++;
				free(p);
			}
			atomic_store(&phase, 1);
		}
	}
	return NULL;
}

__attribute__((constructor)) static void early_init(void)
{
	runtime_before = uffd_open();
	if (pthread_create(&thread, NULL, loop, NULL))
		errors++;
}

void lmt_early_report(void);

__attribute__((visibility("default"))) void lmt_early_report(void)
{
	atomic_store(&report_wanted, true);
	while (!atomic_load(&phase))
		usleep(1000);
	atomic_store(&stop, true);
	pthread_join(thread, NULL);
	printf("# early thread: runtime before %s, rounds %s, lazy %s, errors %lu\n",
	       runtime_before ? "yes" : "no", rounds > 1 ? "many" : "few", lazy, errors);
}
