/* SPDX-License-Identifier: MIT */
/* lazymem-bench's swap measurements: lazymem under a budget beside the kernel's swap in a memory cgroup. */
#define _GNU_SOURCE
#include "lazymem.h"
#include "swap-bench.h"
#include "kswap.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/*
 * Both sides run the same precomputed sequence of page accesses over a
 * working set 2x or 4x the budget, after writing every page once (so
 * that what does not fit must go to swap, not be dropped):
 *
 *  lazymem: a zero region of the working set's size in a runtime whose
 *    budget is the budget, swap file in the benchmark's directory;
 *  kernel:  anonymous memory (4 KiB pages) in a child process whose
 *    cgroup-v1 memory controller limit is the budget (plus 2 MiB for the
 *    child's own stack and libraries), with a swap file on the same disk,
 *    set up here and removed afterwards.
 *
 * Throughput in accesses per second; the ratio is lazymem / kernel, and
 * higher is better.
 */

enum pattern { UNIFORM, ZIPF, SEQUENTIAL };

struct workload {
	const char *name;
	enum pattern pattern;
	unsigned mult;
	bool write;
	double target;
};

static const struct workload workloads[] = {
	{ "swap.uniform.2x.read", UNIFORM, 2, false, 1.0 },
	{ "swap.uniform.2x.write", UNIFORM, 2, true, 1.0 },
	{ "swap.zipf.2x.read", ZIPF, 2, false, 1.0 },
	{ "swap.zipf.2x.write", ZIPF, 2, true, 1.0 },
	{ "swap.seq.2x.read", SEQUENTIAL, 2, false, 1.5 },
	{ "swap.seq.2x.write", SEQUENTIAL, 2, true, 1.5 },
	{ "swap.uniform.4x.read", UNIFORM, 4, false, 0 },
	{ "swap.uniform.4x.write", UNIFORM, 4, true, 0 },
	{ "swap.zipf.4x.read", ZIPF, 4, false, 0 },
	{ "swap.zipf.4x.write", ZIPF, 4, true, 0 },
	{ "swap.seq.4x.read", SEQUENTIAL, 4, false, 1.5 },
	{ "swap.seq.4x.write", SEQUENTIAL, 4, true, 1.5 },
};
#define NWORKLOADS (sizeof(workloads) / sizeof(workloads[0]))

struct env {
	const struct swap_bench_config *c;
	size_t ps;
	struct kswap k;		/* the kernel side: swap file, cgroup, its process while it runs */
};

bool swap_bench_selected(const char *only)
{
	for (size_t i = 0; i < NWORKLOADS; i++)
		if (!only || strstr(workloads[i].name, only))
			return true;
	return false;
}

/* The access sequence: n page numbers in [0, pages). */
static uint32_t *sequence(const struct workload *w, size_t pages, size_t n)
{
	uint32_t *seq = malloc(n * sizeof(*seq));
	if (!seq)
		return NULL;
	uint64_t s = 0x853c49e6748fea9bull;
	if (w->pattern == SEQUENTIAL) {
		for (size_t i = 0; i < n; i++)
			seq[i] = (uint32_t)(i % pages);
	} else if (w->pattern == UNIFORM) {
		for (size_t i = 0; i < n; i++)
			seq[i] = (uint32_t)(xorshift(&s) % pages);
	} else {
		/* Zipf, skew 0.99: rank k drawn with weight 1/k^0.99, ranks scattered over the pages. */
		double *cdf = malloc(pages * sizeof(*cdf));
		uint32_t *perm = malloc(pages * sizeof(*perm));
		if (!cdf || !perm) {
			free(cdf);
			free(perm);
			free(seq);
			return NULL;
		}
		double sum = 0;
		for (size_t k = 0; k < pages; k++) {
			sum += 1.0 / pow((double)(k + 1), 0.99);
			cdf[k] = sum;
			perm[k] = (uint32_t)k;
		}
		for (size_t k = pages - 1; k > 0; k--) {
			size_t j = xorshift(&s) % (k + 1);
			uint32_t t = perm[k];
			perm[k] = perm[j];
			perm[j] = t;
		}
		for (size_t i = 0; i < n; i++) {
			double u = (double)(xorshift(&s) >> 11) / 9007199254740992.0 * sum;
			size_t lo = 0, hi = pages - 1;
			while (lo < hi) {
				size_t mid = (lo + hi) / 2;
				if (cdf[mid] < u)
					lo = mid + 1;
				else
					hi = mid;
			}
			seq[i] = perm[lo];
		}
		free(cdf);
		free(perm);
	}
	return seq;
}

static __attribute__((noinline)) uint64_t run_accesses(unsigned char *base, const uint32_t *seq,
						       size_t n, size_t ps, bool write)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char *p = base + (size_t)seq[i] * ps + 64;
		if (write)
			*p = (unsigned char)i;
		else
			sum += *(volatile unsigned char *)p;
	}
	return sum;
}

static void populate(unsigned char *base, size_t pages, size_t ps)
{
	for (size_t p = 0; p < pages; p++)
		memset(base + p * ps, (int)(p | 1), 128);
}

/* accesses per second, or a negative errno; url: the swap in that cluster, NULL: the file */
static double run_lazymem(const struct env *e, const struct workload *w, const uint32_t *seq,
			  size_t n, const char *url)
{
	size_t pages = (e->c->budget / e->ps) * w->mult;
	struct lm_options o;
	lm_options_init(&o);
	o.mode = e->c->mode;
	o.budget = e->c->budget;
	o.swap_dir = e->c->dir;
	o.swap_url = url;
	o.swap_max = (uint64_t)pages * e->ps * 2;
	struct lm_runtime *rt;
	int rc = lm_runtime_open(&o, &rt);
	if (rc < 0)
		return rc;
	struct lm_region *r;
	rc = lm_region_create_zero(rt, pages * e->ps, 0, &r);
	if (rc < 0) {
		lm_runtime_close(rt);
		return rc;
	}
	unsigned char *base = lm_region_addr(r);
	populate(base, pages, e->ps);
	uint64_t t0 = now_ns();
	run_accesses(base, seq, n, e->ps, w->write);
	uint64_t t1 = now_ns();
	struct lm_stats st = { .size = sizeof(st) };
	lm_stats_get(rt, &st);
	/* Every page must still be what was written: a fast wrong answer is no answer. */
	for (size_t p = 0; p < pages; p += 1 + pages / 512)
		if (base[p * e->ps + 1] != (unsigned char)(p | 1)) {
			fprintf(stderr, "lazymem-bench: %s: page %zu lost its contents\n", w->name, p);
			exit(1);
		}
	if (e->c->verbose)
		fprintf(stderr, "  %s lazymem: evicted %llu (dirty %llu), swap reads %llu, "
			"refaults %llu, over budget %llu, throttled %.0f ms\n", w->name,
			(unsigned long long)st.evicted_pages, (unsigned long long)st.evicted_dirty,
			(unsigned long long)st.swap_reads, (unsigned long long)st.refaults,
			(unsigned long long)st.over_budget, (double)st.throttle_ns / 1e6);
	lm_region_destroy(r);
	lm_runtime_close(rt);
	return (double)n / ((double)(t1 - t0) / 1e9);
}

static double run_kernel(const struct env *e, const struct workload *w, const uint32_t *seq,
			 size_t n)
{
	size_t pages = (e->c->budget / e->ps) * w->mult;
	int pfd[2];
	if (pipe(pfd) < 0)
		return -errno;
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		/* The parent cleans up; the child just dies. */
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		close(pfd[0]);
		double res = -EPERM;
		if (kswap_enter(&e->k) == 0) {
			unsigned char *base = mmap(NULL, pages * e->ps, PROT_READ | PROT_WRITE,
						   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (base != MAP_FAILED) {
				madvise(base, pages * e->ps, MADV_NOHUGEPAGE);
				populate(base, pages, e->ps);
				uint64_t t0 = now_ns();
				run_accesses(base, seq, n, e->ps, w->write);
				uint64_t t1 = now_ns();
				res = (double)n / ((double)(t1 - t0) / 1e9);
			}
		}
		if (write(pfd[1], &res, sizeof(res)) < 0)
			_exit(1);
		_exit(0);
	}
	((struct env *)e)->k.child = pid;
	close(pfd[1]);
	double res = -EIO;
	if (read(pfd[0], &res, sizeof(res)) != sizeof(res))
		res = -EIO;
	close(pfd[0]);
	int st;
	waitpid(pid, &st, 0);
	((struct env *)e)->k.child = 0;
	return res;
}

/* The kernel side: a swap file 6x the budget, a cgroup limited to the budget + 2 MiB. */
static bool setup_kernel(struct env *e)
{
	return kswap_setup(&e->k, e->c->dir, e->c->budget * 6, "swap") &&
	       kswap_set_limit(&e->k, e->c->budget + (2u << 20)) == 0;
}

int swap_bench_run(const struct swap_bench_config *c)
{
	struct env e = { .c = c, .ps = (size_t)sysconf(_SC_PAGESIZE) };
	if (!c->swap_url && !swap_bench_selected(c->only))
		return 0;
	bool kernel = setup_kernel(&e);
	bool remote = c->swap_url != NULL, any = false;
	for (size_t i = 0; i < NWORKLOADS && remote; i++) {
		char name[96];
		snprintf(name, sizeof(name), "swap.remote.%s%s", workloads[i].name + 5,
			 c->suffix ? c->suffix : "");
		any |= workloads[i].mult == 2 && (!c->only || strstr(name, c->only));
	}
	if (remote && !any)
		return 0;
	if (!c->json) {
		printf("\nswap%s: budget %zu MiB, %s mode, working sets %s written once first; %s\n",
		       remote ? " in a Redis Cluster" : "", c->budget >> 20,
		       c->mode == LM_MODE_SIGNAL ? "signal" : "thread", remote ? "2x" : "2x and 4x",
		       kernel ? "kernel: anonymous memory in a cgroup-v1 memory "
		       "cgroup limited to the budget + 2 MiB, swap file on the same disk" :
		       "kernel side unavailable (see above)");
		printf("%-34s %12s %12s %8s  %-9s %s\n", "measurement", "lazymem", "kernel", "ratio",
		       "unit", remote ? "target (local swap file)" : "target");
	}
	for (size_t i = 0; i < NWORKLOADS; i++) {
		const struct workload *w = &workloads[i];
		char name[96];
		snprintf(name, sizeof(name), "%s%s%s%s", remote ? "swap.remote." : "",
			 remote ? w->name + 5 : w->name, c->mode == LM_MODE_SIGNAL ? ".signal" : "",
			 remote && c->suffix ? c->suffix : "");
		if ((c->only && !strstr(name, c->only)) || (remote && w->mult != 2))
			continue;
		size_t bpages = c->budget / e.ps, pages = bpages * w->mult;
		size_t n = w->pattern == SEQUENTIAL ? 2 * pages : 4 * bpages;
		uint32_t *seq = sequence(w, pages, n);
		if (!seq) {
			kswap_teardown(&e.k);
			return -ENOMEM;
		}
		double lv[c->runs], kv[c->runs], fv[c->runs];
		for (int r = 0; r < c->runs; r++) {
			kv[r] = kernel ? run_kernel(&e, w, seq, n) : 0;
			fv[r] = remote ? run_lazymem(&e, w, seq, n, NULL) : 0;
			lv[r] = run_lazymem(&e, w, seq, n, c->swap_url);
			if (lv[r] < 0) {
				fprintf(stderr, "lazymem-bench: %s: %s\n", w->name, lm_strerror((int)lv[r]));
				kswap_teardown(&e.k);
				free(seq);
				return (int)lv[r];
			}
		}
		free(seq);
		double l = median(lv, c->runs), k = median(kv, c->runs), ratio = k > 0 ? l / k : 0;
		double f = remote ? median(fv, c->runs) : 0;
		if (c->json) {
			char local[64] = "";
			if (remote)
				snprintf(local, sizeof(local), ",\"local_swap_file\":%.2f", f);
			printf("{\"name\":\"%s\",\"unit\":\"accesses_per_s\",\"lazymem\":%.2f,"
			       "\"kernel\":%.2f,\"ratio\":%.3f%s}\n", name, l, k, ratio, local);
		} else {
			char tgt[48] = "";
			double want = remote ? (c->suffix ? 0 : 1.0) : w->target;
			if (want > 0)
				snprintf(tgt, sizeof(tgt), ">=%.1f %s", want, ratio >= want ? "ok" : "MISS");
			if (remote)
				snprintf(tgt + strlen(tgt), sizeof(tgt) - strlen(tgt), " (%.0f)", f);
			printf("%-34s %12.0f %12.0f %8.2f  %-9s %s\n", name, l, k, ratio, "access/s",
			       tgt);
		}
		fflush(stdout);
	}
	kswap_teardown(&e.k);
	return 0;
}

/* ---- dirty tracking: the cost of noticing a first write ------------------------- */

#ifndef PAGEMAP_SCAN
struct page_region {
	uint64_t start, end, categories;
};
struct pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif
#include <sys/ioctl.h>

bool dirty_bench_selected(const char *only)
{
	return !only || strstr("dirty.first_write.sync dirty.first_write.async dirty.scan.async",
			       only);
}

/* PAGEMAP_SCAN of [base, base + len) for written pages, protecting them again: ns. */
static double scan_written(unsigned char *base, size_t len)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	static struct page_region vec[4096];
	uint64_t t0 = now_ns();
	uintptr_t start = (uintptr_t)base, end = start + len;
	while (start < end) {
		struct pm_scan_arg a = {
			.size = sizeof(a), .flags = 1 /* WP_MATCHING */ | 2 /* CHECK_WPASYNC */,
			.start = start, .end = end, .vec = (uintptr_t)vec, .vec_len = 4096,
			.category_mask = 2 /* PAGE_IS_WRITTEN */, .return_mask = 2,
		};
		if (ioctl(fd, PAGEMAP_SCAN, &a) < 0) {
			int err = -errno;
			close(fd);
			return err;
		}
		if (!a.walk_end || a.walk_end <= start)
			break;
		start = (uintptr_t)a.walk_end;
	}
	uint64_t t1 = now_ns();
	close(fd);
	return (double)(t1 - t0);
}

/*
 * lazymem: a memory region populated (installed clean and write-protected)
 * under a budget large enough never to evict, then one byte written per
 * page: with sync tracking each first write is a write-protect fault the
 * handler resolves; with async the kernel lifts the protection and a scan
 * finds the pages later.  Kernel: its own dirty tracking, soft-dirty
 * (clear_refs 4 write-protects the pages; the first write faults in the
 * kernel), where the kernel has it; without CONFIG_MEM_SOFT_DIRTY the
 * write is a plain store and the ratio is the whole cost of tracking.
 */
static double first_write_lazymem(size_t pages, int dirty, double *scan_ns)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE), len = pages * ps;
	unsigned char *src = malloc(len);
	if (!src)
		return -ENOMEM;
	memset(src, 0x5a, len);
	struct lm_options o;
	lm_options_init(&o);
	o.mode = LM_MODE_THREAD;
	o.budget = 2 * len;
	o.dirty_tracking = dirty;
	struct lm_runtime *rt;
	int rc = lm_runtime_open(&o, &rt);
	struct lm_region *r = NULL;
	if (rc == 0)
		rc = lm_region_create_memory(rt, src, len, 0, &r);
	if (rc == 0)
		rc = lm_region_advise(r, 0, len, LM_ADV_POPULATE);
	if (rc < 0) {
		if (r)
			lm_region_destroy(r);
		if (rt && rc != -EINVAL)
			lm_runtime_close(rt);
		free(src);
		return rc;
	}
	unsigned char *base = lm_region_addr(r);
	uint64_t t0 = now_ns();
	for (size_t p = 0; p < pages; p++)
		base[p * ps + 7] = 1;
	uint64_t t1 = now_ns();
	if (scan_ns)
		*scan_ns = scan_written(base, len) / (double)pages;
	lm_region_destroy(r);
	lm_runtime_close(rt);
	free(src);
	return (double)(t1 - t0) / (double)pages;
}

static double first_write_kernel(size_t pages, double *scan_ns)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE), len = pages * ps;
	unsigned char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				   -1, 0);
	if (base == MAP_FAILED)
		return -errno;
	madvise(base, len, MADV_NOHUGEPAGE);
	memset(base, 0x5a, len);
	int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, "4", 1) != 1) {
		if (fd >= 0)
			close(fd);
		munmap(base, len);
		return -EOPNOTSUPP;
	}
	close(fd);
	uint64_t t0 = now_ns();
	for (size_t p = 0; p < pages; p++)
		base[p * ps + 7] = 1;
	uint64_t t1 = now_ns();
	if (scan_ns) {
		/* Finding them: the soft-dirty bits of /proc/self/pagemap, 8 bytes a page. */
		int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		uint64_t *ents = malloc(pages * 8);
		uint64_t s0 = now_ns();
		ssize_t n = pm >= 0 && ents ? pread(pm, ents, pages * 8,
						   (off_t)((uintptr_t)base / ps * 8)) : -1;
		uint64_t s1 = now_ns();
		*scan_ns = n == (ssize_t)(pages * 8) ? (double)(s1 - s0) / (double)pages : 0;
		free(ents);
		if (pm >= 0)
			close(pm);
	}
	munmap(base, len);
	return (double)(t1 - t0) / (double)pages;
}

int dirty_bench_run(const struct swap_bench_config *c, size_t pages)
{
	if (!dirty_bench_selected(c->only))
		return 0;
	const char *names[3] = { "dirty.first_write.sync", "dirty.first_write.async",
				 "dirty.scan.async" };
	double v[3][c->runs], k[2][c->runs];
	for (int r = 0; r < c->runs; r++) {
		double scan = 0, kscan = 0;
		k[0][r] = first_write_kernel(pages, &kscan);
		k[1][r] = kscan;
		v[0][r] = first_write_lazymem(pages, LM_DIRTY_SYNC, NULL);
		v[1][r] = first_write_lazymem(pages, LM_DIRTY_ASYNC, &scan);
		v[2][r] = scan;
		for (int i = 0; i < 2; i++)
			if (v[i][r] < 0) {
				fprintf(stderr, "lazymem-bench: %s: %s\n", names[i],
					lm_strerror((int)v[i][r]));
				return (int)v[i][r];
			}
	}
	if (!c->json) {
		printf("\ndirty tracking (thread mode): %zu pages populated clean, then one byte "
		       "written per page; kernel: the same writes after clear_refs 4 (soft-dirty: "
		       "a no-op where CONFIG_MEM_SOFT_DIRTY is off, as on the project machine, "
		       "leaving the plain write); scan: PAGEMAP_SCAN vs reading pagemap\n", pages);
		printf("%-34s %12s %12s %8s  %-9s\n", "measurement", "lazymem", "kernel", "ratio",
		       "unit");
	}
	for (int i = 0; i < 3; i++) {
		if (c->only && !strstr(names[i], c->only))
			continue;
		double l = median(v[i], c->runs), kk = median(k[i == 2 ? 1 : 0], c->runs);
		double ratio = kk > 0 ? l / kk : 0;
		if (c->json)
			printf("{\"name\":\"%s\",\"unit\":\"ns_per_page\",\"lazymem\":%.2f,"
			       "\"kernel\":%.2f,\"ratio\":%.3f}\n", names[i], l, kk, ratio);
		else
			printf("%-34s %12.1f %12.1f %8.2f  %-9s\n", names[i], l, kk, ratio, "ns/page");
	}
	fflush(stdout);
	return 0;
}
