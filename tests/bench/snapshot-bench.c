/* SPDX-License-Identifier: MIT */
/* lazymem-bench's snapshot measurements: lm_snapshot_* against fork(), lazy restore against reading the file. */
#include "swap-bench.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lazymem.h"
#include "../procutil.h"

#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif

/*
 * For each size, per run, both sides on the same resident data (every
 * page written):
 *   snapshot.pause      lm_snapshot_take vs the parent's return from fork()
 *   snapshot.first_write one byte written to every page in a random order
 *                       during the save, per page: the write-protect faults
 *                       that preserve vs the copy-on-write faults after fork
 *   snapshot.save       take (or fork) to a durable image on disk
 *   snapshot.extra_memory peak growth of the machine's anonymous memory
 *                       (AnonPages) during the save and the writes
 *   restore.first_access open an image and read one byte of a random page,
 *                       vs read() of the whole file first (cold cache)
 *   restore.full_read   every page read, vs read() of the whole file
 *   snapshot.wp_floor   not lazymem: the bare UFFDIO_WRITEPROTECT ioctl a
 *                       take is made of, on the same resident data, vs
 *                       fork(): the floor of snapshot.pause
 */

static const char *names[] = {
	"snapshot.pause", "snapshot.first_write", "snapshot.save", "snapshot.extra_memory",
	"restore.first_access", "restore.full_read", "snapshot.wp_floor",
};
static const char *units[] = { "ms", "ns_per_page", "ms", "MiB", "ms", "ms", "ms" };
#define NM 7

bool snapshot_bench_selected(const char *only)
{
	if (!only)
		return true;
	for (int i = 0; i < NM; i++)
		if (strstr(names[i], only) || strstr(only, names[i]))
			return true;
	return strstr("snapshot.", only) || strstr("restore.", only);
}

/* The machine's anonymous memory, hugetlb pages in use included: what a save may add. */
static long anon_kib(void)
{
	long kb = lmt_meminfo("AnonPages");
	long huge = lmt_meminfo("HugePages_Total") - lmt_meminfo("HugePages_Free");
	return kb < 0 ? kb : kb + huge * lmt_meminfo("Hugepagesize");
}

/* A cold cache: dirty pages written first, so that dropping the cache drops them too. */
static void cold(void)
{
	sync();
	drop_caches();
}

struct side {
	double v[NM];
};

static void writes(unsigned char *p, const uint32_t *perm, size_t n, size_t ps, long *peak)
{
	for (size_t i = 0; i < n; i++) {
		p[(size_t)perm[i] * ps] ^= 1;
		if ((i & 4095) == 0) {
			long a = anon_kib();
			if (a > *peak)
				*peak = a;
		}
	}
}

/*
 * Both sides start on memory aged the same way.  A take and a fork() both
 * visit every page's struct page, so their cost depends on where the
 * pages lie: the kernel side's copy-on-write faults, in a random order,
 * leave the free memory scattered, and a region allocated next then costs
 * up to twice as much to protect (measured here: 4 GiB, 45 ms after fresh
 * memory, 80-95 ms after a fork's copies), so whichever side followed
 * them paid for the other.  Writing len bytes of fresh memory in a random
 * order and freeing it gives both sides the same scattered memory, as in
 * a program that has run for a while.  Huge pages come from their pool.
 */
static void age_memory(size_t len, const uint32_t *perm)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE), n = len / ps;
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				-1, 0);
	if (p == MAP_FAILED)
		return;
	madvise(p, len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < n; i++)
		p[(size_t)perm[i] * ps] = 1;
	munmap(p, len);
}

static int run_lazymem(size_t len, size_t hps, const uint32_t *perm, const char *path,
		       struct side *out)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE), n = len / ps;
	struct lm_runtime *rt;
	struct lm_region *r;
	struct lm_options o;
	lm_options_init(&o);
	o.page_size = hps;
	int rc = lm_runtime_open(&o, &rt);
	if (rc < 0)
		return rc;
	if (!hps)
		age_memory(len, perm);
	if ((rc = lm_region_create_zero(rt, len, 0, &r)) < 0)
		goto out;
	unsigned char *p = lm_region_addr(r);
	for (size_t off = 0; off < len; off += ps)
		p[off] = 1;
	struct lm_snapshot *s;
	/* Both sides start with no writeback in flight: the other side's save left some. */
	sync();
	long a0 = anon_kib(), peak = a0;
	uint64_t t0 = now_ns();
	if ((rc = lm_snapshot_take(r, 0, &s)) < 0)
		goto out;
	uint64_t t1 = now_ns();
	if ((rc = lm_snapshot_save(s, path, 0)) < 0)
		goto out;
	writes(p, perm, n, ps, &peak);
	uint64_t t2 = now_ns();
	rc = lm_snapshot_wait(s);
	uint64_t t3 = now_ns();
	long a = anon_kib();
	if (a > peak)
		peak = a;
	lm_snapshot_release(s);
	if (rc < 0)
		goto out;
	out->v[0] = (double)(t1 - t0) / 1e6;
	out->v[1] = (double)(t2 - t1) / (double)n;
	out->v[2] = (double)(t3 - t0) / 1e6;
	out->v[3] = (double)(peak - a0) / 1024.0;
	lm_region_destroy(r);
	/* The restore, cold. */
	cold();
	t0 = now_ns();
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		goto out;
	}
	rc = lm_region_create_image(rt, fd, 0, &r);
	close(fd);
	if (rc < 0)
		goto out;
	p = lm_region_addr(r);
	volatile unsigned char c = p[(size_t)perm[0] * ps];
	(void)c;
	t1 = now_ns();
	lm_region_destroy(r);
	cold();
	t2 = now_ns();
	fd = open(path, O_RDONLY | O_CLOEXEC);
	rc = fd < 0 ? -errno : lm_region_create_image(rt, fd, 0, &r);
	if (fd >= 0)
		close(fd);
	if (rc < 0)
		goto out;
	p = lm_region_addr(r);
	lm_region_advise(r, 0, len, LM_ADV_SEQUENTIAL);
	unsigned sum = 0;
	for (size_t off = 0; off < len; off += ps)
		sum += p[off];
	t3 = now_ns();
	out->v[4] = (double)(t1 - t0) / 1e6;
	out->v[5] = (double)(t3 - t2) / 1e6;
	rc = sum == n ? 0 : -EIO;
out:
	lm_runtime_close(rt);
	return rc;
}

/*
 * The floor of a take: a userfaultfd of the bench's own, the region's
 * size written and registered for write protection, one
 * UFFDIO_WRITEPROTECT over it, then fork() of the same process.
 */
static int run_floor(size_t len, size_t hps, double *wp_ms, double *fork_ms)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY);
	struct uffdio_api api = { .api = UFFD_API,
				  .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP |
					      (hps ? UFFD_FEATURE_WP_HUGETLBFS_SHMEM : 0) };
	if (fd < 0 || ioctl(fd, UFFDIO_API, &api) < 0) {
		int err = -errno;
		if (fd >= 0)
			close(fd);
		return err;
	}
	int fl = MAP_PRIVATE | MAP_ANONYMOUS;
	if (hps)
		fl |= MAP_HUGETLB | (__builtin_ctzl(hps) << MAP_HUGE_SHIFT);
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, fl, -1, 0);
	int rc = p == MAP_FAILED ? -errno : 0;
	if (!rc && !hps)
		madvise(p, len, MADV_NOHUGEPAGE);	/* lazymem's pages are base pages */
	for (size_t off = 0; !rc && off < len; off += ps)
		p[off] = 1;
	struct uffdio_register reg = { .range = { (uintptr_t)p, len },
				       .mode = UFFDIO_REGISTER_MODE_WP };
	if (!rc && ioctl(fd, UFFDIO_REGISTER, &reg) < 0)
		rc = -errno;
	struct uffdio_writeprotect wp = { .range = { (uintptr_t)p, len },
					  .mode = UFFDIO_WRITEPROTECT_MODE_WP };
	uint64_t t0 = now_ns();
	if (!rc && ioctl(fd, UFFDIO_WRITEPROTECT, &wp) < 0)
		rc = -errno;
	uint64_t t1 = now_ns();
	*wp_ms = (double)(t1 - t0) / 1e6;
	if (!rc) {
		/* The protection off again first: the fork copies writable entries, as in run_kernel. */
		wp.mode = 0;
		ioctl(fd, UFFDIO_WRITEPROTECT, &wp);
		ioctl(fd, UFFDIO_UNREGISTER, &reg.range);
		t0 = now_ns();
		pid_t pid = fork();
		if (pid == 0)
			_exit(0);
		t1 = now_ns();
		if (pid < 0)
			rc = -errno;
		else
			waitpid(pid, NULL, 0);
		*fork_ms = (double)(t1 - t0) / 1e6;
	}
	if (p != MAP_FAILED)
		munmap(p, len);
	close(fd);
	return rc;
}

/* Reads the whole file into memory: what a restore costs without lazy paging. */
static int read_whole(const char *path, size_t len, unsigned char *dst)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t got = 0;
	while (got < len) {
		ssize_t k = read(fd, dst + got, len - got < (8u << 20) ? len - got : 8u << 20);
		if (k <= 0)
			break;
		got += (size_t)k;
	}
	close(fd);
	return got == len ? 0 : -EIO;
}

static int run_kernel(size_t len, size_t hps, const uint32_t *perm, const char *path,
		      struct side *out)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE), n = len / ps;
	int fl = MAP_PRIVATE | MAP_ANONYMOUS;
	if (hps)
		fl |= MAP_HUGETLB | (__builtin_ctzl(hps) << MAP_HUGE_SHIFT);
	else
		age_memory(len, perm);
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, fl, -1, 0);
	if (p == MAP_FAILED)
		return -errno;
	if (!hps)
		madvise(p, len, MADV_NOHUGEPAGE);	/* lazymem's pages are base pages */
	for (size_t off = 0; off < len; off += ps)
		p[off] = 1;
	sync();
	long a0 = anon_kib(), peak = a0;
	uint64_t t0 = now_ns();
	pid_t pid = fork();
	if (pid < 0) {
		munmap(p, len);
		return -errno;
	}
	if (pid == 0) {
		/* The child saves the memory it sees, the way Redis's BGSAVE does. */
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		size_t off = 0;
		while (fd >= 0 && off < len) {
			ssize_t k = write(fd, p + off, len - off < (8u << 20) ? len - off : 8u << 20);
			if (k <= 0)
				_exit(1);
			off += (size_t)k;
		}
		_exit(fd >= 0 && fsync(fd) == 0 ? 0 : 1);
	}
	uint64_t t1 = now_ns();
	writes(p, perm, n, ps, &peak);
	uint64_t t2 = now_ns();
	int status;
	waitpid(pid, &status, 0);
	uint64_t t3 = now_ns();
	out->v[0] = (double)(t1 - t0) / 1e6;
	out->v[1] = (double)(t2 - t1) / (double)n;
	out->v[2] = (double)(t3 - t0) / 1e6;
	out->v[3] = (double)(peak - a0) / 1024.0;
	/* A restore without lazy paging: read the whole file, then answer. */
	cold();
	t0 = now_ns();
	int rc = read_whole(path, len, p);
	t1 = now_ns();
	out->v[4] = out->v[5] = (double)(t1 - t0) / 1e6;
	munmap(p, len);
	if (rc == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
		rc = -EIO;
	return rc;
}

/*
 * One size, base pages (hps 0) or hugetlb pages on both sides: the
 * medians of c->runs runs, printed.  The side that goes first
 * alternates: the one after runs on a busier machine.
 */
static int run_size(const struct swap_bench_config *c, size_t len, size_t hps,
		    const uint32_t *perm, const char *suffix)
{
	char lpath[512], kpath[512];
	snprintf(lpath, sizeof(lpath), "%s/lazymem-bench-snap.%d.img", c->dir, (int)getpid());
	snprintf(kpath, sizeof(kpath), "%s/lazymem-bench-fork.%d.img", c->dir, (int)getpid());
	double lv[NM][c->runs], kv[NM][c->runs];
	/* --only snapshot.wp_floor: the floor alone, without the save runs around it. */
	bool floor_only = c->only && strstr(c->only, "wp_floor");
	for (int run = 0; run < c->runs; run++) {
		struct side l = { { 0 } }, k = { { 0 } };
		int rc = 0;
		if (floor_only) {
			;
		} else if (run % 2) {
			rc = run_lazymem(len, hps, perm, lpath, &l);
			if (rc == 0)
				rc = run_kernel(len, hps, perm, kpath, &k);
		} else {
			rc = run_kernel(len, hps, perm, kpath, &k);
			if (rc == 0)
				rc = run_lazymem(len, hps, perm, lpath, &l);
		}
		unlink(lpath);
		unlink(kpath);
		if (rc == 0)
			rc = run_floor(len, hps, &l.v[6], &k.v[6]);
		if (rc < 0)
			return rc;
		for (int m = 0; m < NM; m++) {
			lv[m][run] = l.v[m];
			kv[m][run] = k.v[m];
		}
		if (c->verbose)
			fprintf(stderr, "snapshot %s%s run %d: pause %.2f / %.2f ms, first write %.0f / "
				"%.0f ns, floor %.2f / %.2f ms\n", suffix, hps ? ".hugetlb" : "", run,
				l.v[0], k.v[0], l.v[1], k.v[1], l.v[6], k.v[6]);
	}
	for (int m = 0; m < NM; m++) {
		char name[64];
		snprintf(name, sizeof(name), "%s.%s%s", names[m], suffix, hps ? ".hugetlb" : "");
		if (c->only && !strstr(name, c->only))
			continue;
		double l = median(lv[m], c->runs), k = median(kv[m], c->runs);
		double ratio = k > 0 ? l / k : 0;
		if (c->json)
			printf("{\"name\":\"%s\",\"unit\":\"%s\",\"lazymem\":%.3f,\"kernel\":%.3f,"
			       "\"ratio\":%.3f}\n", name, units[m], l, k, ratio);
		else
			printf("%-34s %12.2f %12.2f %8.3f  %-9s\n", name, l, k, ratio, units[m]);
	}
	fflush(stdout);
	return 0;
}

/*
 * The hugetlb variant: both sides on huge pages (a runtime with
 * lm_options.page_size, MAP_HUGETLB before the fork), the pool grown by
 * what they need at most (the fork side's copy-on-write doubles it) and
 * given back.  Skipped, saying why, where that cannot be had.
 */
static int run_hugetlb(const struct swap_bench_config *c, size_t len, const uint32_t *perm,
		       const char *suffix)
{
	size_t hps = lmt_huge_page_size();
	if (!hps || len % hps) {
		fprintf(stderr, "lazymem-bench: no hugetlb pages for %s: skipped\n", suffix);
		return 0;
	}
	long nr = lmt_sysctl_read(LMT_NR_HUGEPAGES), need = (long)(2 * len / hps);
	if (nr < 0 || !lmt_sysctl_write(LMT_NR_HUGEPAGES, nr + need) ||
	    lmt_sysctl_read(LMT_NR_HUGEPAGES) < nr + need) {
		if (nr >= 0)
			lmt_sysctl_write(LMT_NR_HUGEPAGES, nr);
		fprintf(stderr, "lazymem-bench: cannot reserve %ld huge pages (root needed, or "
			"memory): snapshot.*.%s.hugetlb skipped\n", need, suffix);
		return 0;
	}
	int rc = run_size(c, len, hps, perm, suffix);
	lmt_sysctl_write(LMT_NR_HUGEPAGES, nr);
	return rc;
}

/* Whether --only names a size ("snapshot.pause.4g") other than this one's suffix. */
static bool other_size(const char *only, const char *suffix)
{
	for (const char *d = only ? strchr(only, '.') : NULL; d; d = strchr(d + 1, '.')) {
		size_t k = strspn(d + 1, "0123456789");
		if (k && (d[1 + k] == 'g' || d[1 + k] == 'm') && (!d[2 + k] || d[2 + k] == '.'))
			return strncmp(d + 1, suffix, k + 1) || suffix[k + 1];
	}
	return false;
}

int snapshot_bench_run(const struct swap_bench_config *c, const size_t *sizes, int nsizes)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	if (!c->json) {
		printf("\nsnapshots (thread mode): every page of the region written, then a snapshot "
		       "(kernel: fork()) saved to %s while one byte of every page is written in a "
		       "random order; restore from a cold cache (kernel: read() the whole file); "
		       ".hugetlb: both sides on huge pages\n", c->dir);
		printf("%-34s %12s %12s %8s  %-9s\n", "measurement", "lazymem", "kernel", "ratio",
		       "unit");
	}
	for (int si = 0; si < nsizes; si++) {
		size_t len = sizes[si], n = len / ps;
		char suffix[16];
		if (len >= (1ull << 30))
			snprintf(suffix, sizeof(suffix), "%zug", len >> 30);
		else
			snprintf(suffix, sizeof(suffix), "%zum", len >> 20);
		if (other_size(c->only, suffix))
			continue;
		uint32_t *perm = malloc(n * sizeof(*perm));
		if (!perm)
			return -ENOMEM;
		for (size_t i = 0; i < n; i++)
			perm[i] = (uint32_t)i;
		uint64_t seed = 0x9e3779b97f4a7c15ull;
		for (size_t i = n - 1; i > 0; i--) {
			size_t j = (size_t)(xorshift(&seed) % (i + 1));
			uint32_t t = perm[i];
			perm[i] = perm[j];
			perm[j] = t;
		}
		int rc = 0;
		bool want_base = !c->only || !strstr(c->only, "hugetlb");
		if (want_base)
			rc = run_size(c, len, 0, perm, suffix);
		if (rc == 0)
			rc = run_hugetlb(c, len, perm, suffix);
		free(perm);
		if (rc < 0)
			return rc;
	}
	return 0;
}
