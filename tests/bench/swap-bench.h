/* SPDX-License-Identifier: MIT */
/* lazymem-bench's swap measurements (swap-bench.c). */
#ifndef LM_SWAP_BENCH_H
#define LM_SWAP_BENCH_H

#include <stdbool.h>
#include <stddef.h>

struct swap_bench_config {
	bool json;
	bool verbose;
	int mode;		/* enum lm_mode of the lazymem side */
	int runs;
	size_t budget;		/* bytes */
	const char *only;	/* substring filter, NULL: all */
	const char *dir;	/* where both swap files go */
	/*
	 * swap.remote.*: lazymem's swap in this cluster (lm_options.swap_url),
	 * its 2x workloads named swap.remote.<workload>.2x.<op><suffix>, the
	 * local swap file's figure beside them.
	 */
	const char *swap_url;
	const char *suffix;
};

/* Shared with lazymem-bench.c. */
#include <stdint.h>
uint64_t now_ns(void);
uint64_t xorshift(uint64_t *s);
/* Drops the clean page cache (root only); false when it cannot. */
bool drop_caches(void);
/* Sorts v. */
double median(double *v, int n);

/*
 * The mechanism's floor (floor-bench.c): nanoseconds per random
 * first-touch write of npages pages (page size 1 << shift, in the order
 * perm) with a minimal single-thread handler doing one UFFDIO_COPY per
 * fault, pinned to the toucher's CPU or not, or with the copy done in a
 * SIGBUS handler; a negative errno when userfaultfd is not to be had.
 */
enum { FLOOR_THREAD_PINNED, FLOOR_THREAD_UNPINNED, FLOOR_SIGNAL };
double floor_rand(int kind, const uint32_t *perm, size_t npages, unsigned shift);
/* --busy: a thread spinning, so that no CPU goes idle, from start to stop. */
void busy_start(void);
void busy_stop(void);

/* True when some swap measurement's name contains only (or only is NULL). */
bool swap_bench_selected(const char *only);
/* Runs the selected swap measurements; 0 or a negative errno. */
int swap_bench_run(const struct swap_bench_config *c);

/* The dirty.* measurements: the cost of tracking first writes, sync versus async. */
bool dirty_bench_selected(const char *only);
int dirty_bench_run(const struct swap_bench_config *c, size_t pages);

/* The snapshot.* and restore.* measurements (snapshot-bench.c), one set per size. */
bool snapshot_bench_selected(const char *only);
int snapshot_bench_run(const struct swap_bench_config *c, const size_t *sizes, int nsizes);

/* The run.* measurements (run-bench.c): real programs under lazymem run. */
bool run_bench_selected(const char *only);
int run_bench_run(const struct swap_bench_config *c, bool quick);

/* The remote.* measurements (remote-bench.c): a Redis Cluster in namespaces, simulated links. */
bool remote_bench_selected(const char *only);
int remote_bench_run(const struct swap_bench_config *c, bool quick);

#endif
