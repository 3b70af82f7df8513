/* SPDX-License-Identifier: MIT */
/* One process of check_pressure's OOM test: fills lazy memory at a steady pace, then checks every byte. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lazymem.h"

/*
 * pressure-worker MIB SEED RATE [LINGER]: a runtime reporting to lazymemd (as
 * LAZYMEM_SOCKET says), one zero-filled region of MIB mebibytes, every
 * page written with words that name the seed, the page and the word, at
 * RATE mebibytes a second; then every page read back twice, and LINGER
 * seconds more with the memory held before the counters are printed
 * (what the budget is then tells whether the policy lifted it).  Exit 0 with
 * all data right, 3 on a wrong word, 1 when lazymem fails.  A process the
 * kernel's OOM killer takes dies of SIGKILL, which is what the test
 * counts.
 */

static uint64_t word(uint64_t seed, uint64_t page, uint64_t i)
{
	return seed << 48 ^ page << 12 ^ i;
}

static void sleep_until(double t)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	double d = t - ((double)now.tv_sec + (double)now.tv_nsec / 1e9);
	if (d > 0)
		nanosleep(&(struct timespec){ (time_t)d, (long)((d - (double)(time_t)d) * 1e9) }, NULL);
}

int main(int argc, char **argv)
{
	if (argc != 4 && argc != 5) {
		fprintf(stderr, "usage: pressure-worker MIB SEED RATE [LINGER]\n");
		return 2;
	}
	size_t mib = strtoul(argv[1], NULL, 10);
	uint64_t seed = strtoull(argv[2], NULL, 10);
	double rate = strtod(argv[3], NULL);
	double linger = argc == 5 ? strtod(argv[4], NULL) : 0;
	struct lm_runtime *rt;
	struct lm_region *r;
	int rc = lm_runtime_open(NULL, &rt);
	if (rc < 0 || (rc = lm_region_create_zero(rt, mib << 20, 0, &r)) < 0) {
		fprintf(stderr, "pressure-worker: %s\n", lm_strerror(rc));
		return 1;
	}
	uint64_t *p = lm_region_addr(r);
	size_t pages = (mib << 20) / 4096, per = 4096 / 8;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	double start = (double)t0.tv_sec + (double)t0.tv_nsec / 1e9;
	for (size_t pg = 0; pg < pages; pg++) {
		for (size_t i = 0; i < per; i++)
			p[pg * per + i] = word(seed, pg, i);
		if (rate > 0 && pg % 256 == 255)
			sleep_until(start + (double)(pg + 1) / 256 / rate);
	}
	for (int pass = 0; pass < 2; pass++)
		for (size_t pg = 0; pg < pages; pg++)
			for (size_t i = 0; i < per; i++)
				if (p[pg * per + i] != word(seed, pg, i)) {
					fprintf(stderr, "pressure-worker %llu: page %zu word %zu wrong\n",
						(unsigned long long)seed, pg, i);
					return 3;
				}
	struct timespec t1;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	sleep_until((double)t1.tv_sec + (double)t1.tv_nsec / 1e9 + linger);
	struct lm_stats st = { .size = sizeof(st) };
	lm_stats_get(rt, &st);
	printf("worker %llu: %zu MiB written and verified; evicted %llu pages, budget %llu, "
	       "budget changes %llu\n",
	       (unsigned long long)seed, mib, (unsigned long long)st.evicted_pages,
	       (unsigned long long)st.budget_bytes, (unsigned long long)st.budget_changes);
	lm_region_destroy(r);
	lm_runtime_close(rt);
	return 0;
}
