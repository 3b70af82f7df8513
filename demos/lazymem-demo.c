/* SPDX-License-Identifier: MIT */
/* lazymem-demo: demand paging you can watch - pages filled on first touch, counted, evicted under a budget. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <unistd.h>

#define DEMO_NAME "lazymem-demo"
#include "demo.h"

#define MIB (1024.0 * 1024.0)

/*
 * Resident bytes of [p, p + len), from mincore(2): adjacent regions merge
 * into one mapping in /proc/self/smaps, so its Rss cannot tell them apart.
 */
static double rss_of(const void *p, size_t len)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE), n = (len + ps - 1) / ps, res = 0;
	unsigned char *vec = malloc(n);
	if (!vec || mincore((void *)p, len, vec) < 0) {
		free(vec);
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		res += vec[i] & 1;
	free(vec);
	return (double)(res * ps);
}

static struct lm_stats stats(struct lm_runtime *rt)
{
	struct lm_stats st;
	memset(&st, 0, sizeof(st));
	st.size = sizeof(st);
	lm_stats_get(rt, &st);
	return st;
}

static void row(const char *what, struct lm_runtime *rt, const void *p, size_t len,
		const struct lm_stats *base, double secs)
{
	struct lm_stats st = stats(rt);
	printf("  %-34s %7.1f MiB  %8llu  %8llu  %8llu  %7.1f ms\n", what, rss_of(p, len) / MIB,
	       (unsigned long long)(st.faults_missing - base->faults_missing),
	       (unsigned long long)(st.fills_zero + st.fills_memory + st.fills_file + st.swap_reads -
				    base->fills_zero - base->fills_memory - base->fills_file -
				    base->swap_reads),
	       (unsigned long long)(st.readahead_pages - base->readahead_pages), secs * 1e3);
}

int main(int argc, char **argv)
{
	size_t mib = 256;
	if (argc > 1 && !strcmp(argv[1], "--quick"))
		mib = 32;
	else if (argc > 1) {
		fprintf(stderr, "usage: lazymem-demo [--quick]\n");
		return 2;
	}
	size_t len = mib << 20, ps = (size_t)sysconf(_SC_PAGESIZE);
	/*
	 * A budget larger than everything the demo touches: nothing is
	 * evicted until part 3 lowers it, but writes are tracked from the
	 * start, so the runtime knows which pages are clean.
	 */
	struct lm_options o;
	lm_options_init(&o);
	o.budget = 4 * (uint64_t)len;
	struct lm_runtime *rt;
	int rc = lm_runtime_open(&o, &rt);
	if (rc < 0)
		die("opening the runtime", rc);
	struct lm_stats st = stats(rt);
	printf("lazymem %s demand-paging demo: %zu MiB regions, %s mode, %llu handler threads\n\n",
	       lm_version(), mib, st.mode == LM_MODE_SIGNAL ? "signal" : "thread",
	       (unsigned long long)st.handler_threads);

	/* A file to page in: every 4 KiB page starts with its own number. */
	char path[] = "/tmp/lazymem-demo-XXXXXX";
	int fd = mkstemp(path);
	if (fd < 0)
		die("creating a temporary file", -errno);
	unlink(path);
	char *page = calloc(1, ps);
	for (size_t off = 0; off < len; off += ps) {
		snprintf(page, ps, "page %zu of the file", off / ps);
		if (pwrite(fd, page, ps, (off_t)off) != (ssize_t)ps)
			die("writing the temporary file", -errno);
	}
	free(page);

	struct lm_region *zr, *fr;
	if ((rc = lm_region_create_zero(rt, len, 0, &zr)) < 0)
		die("creating the zero region", rc);
	if ((rc = lm_region_create_file(rt, fd, 0, len, 0, &fr)) < 0)
		die("creating the file region", rc);
	close(fd);	/* the region keeps its own descriptor */
	char *z = lm_region_addr(zr), *f = lm_region_addr(fr);

	printf("  %-34s %11s  %8s  %8s  %8s  %10s\n", "step", "region RSS", "faults", "filled",
	       "ahead", "time");
	printf("1. An empty region costs nothing until it is touched:\n");
	struct lm_stats base = stats(rt);
	row("created, untouched", rt, z, len, &base, 0);
	for (int quarter = 1; quarter <= 4; quarter++) {
		double t0 = now();
		for (size_t off = (quarter - 1) * len / 4; off < quarter * len / 4; off += ps)
			z[off] = 1;
		char what[64];
		snprintf(what, sizeof(what), "wrote %d/4 of it, in order", quarter);
		row(what, rt, z, len, &base, now() - t0);
	}
	printf("   Sequential faults grow the readahead window: one fault fills up to 64 pages\n"
	       "   (LAZYMEM_READAHEAD), so the region fills at a fraction of a fault per page.\n\n");

	printf("2. A file region reads the file on first touch (like mmap MAP_PRIVATE):\n");
	base = stats(rt);
	double t0 = now();
	unsigned long seed = 12345;
	size_t npages = len / ps, touched = 1000;
	for (size_t i = 0; i < touched; i++) {
		seed = seed * 6364136223846793005ul + 1442695040888963407ul;
		size_t pg = (seed >> 33) % npages;
		char want[64];
		snprintf(want, sizeof(want), "page %zu of the file", pg);
		if (strcmp(f + pg * ps, want)) {
			fprintf(stderr, "lazymem-demo: page %zu has the wrong contents\n", pg);
			return 1;
		}
	}
	row("read 1000 random pages", rt, f, len, &base, now() - t0);
	printf("   Random faults stay at one page each: only what is read is resident.\n");
	t0 = now();
	lm_region_advise(fr, 0, len, LM_ADV_DONTNEED);
	base = stats(rt);
	row("advised dont-need (dropped)", rt, f, len, &base, now() - t0);
	t0 = now();
	volatile unsigned long sum = 0;
	for (size_t off = 0; off < len; off += ps)
		sum += (unsigned char)((volatile char *)f)[off + 5];
	row("read all of it, in order", rt, f, len, &base, now() - t0);
	f[0] = 'P';
	printf("   Writes stay private: the region says '%.6s', the file still says 'page 0'.\n\n", f);

	printf("3. Under a memory budget the runtime evicts, like the kernel under memory pressure:\n");
	base = stats(rt);
	t0 = now();
	rc = lm_runtime_set_budget(rt, len / 4);
	if (rc < 0)
		die("setting a budget", rc);
	row("budget set to 1/4 of one region", rt, z, len, &base, now() - t0);
	st = stats(rt);
	printf("   %llu pages evicted: %llu dirty ones written to the swap file, %llu clean ones\n"
	       "   (the file's) simply dropped: the file still has them.\n",
	       (unsigned long long)(st.evicted_pages - base.evicted_pages),
	       (unsigned long long)(st.evicted_dirty - base.evicted_dirty),
	       (unsigned long long)(st.evicted_pages - base.evicted_pages - st.evicted_dirty +
				    base.evicted_dirty));
	base = stats(rt);
	t0 = now();
	for (size_t off = 0; off < len; off += ps)
		if (((volatile char *)z)[off] != 1) {
			fprintf(stderr, "lazymem-demo: a write was lost at offset %zu\n", off);
			return 1;
		}
	row("read back all it wrote", rt, z, len, &base, now() - t0);
	st = stats(rt);
	printf("   Every byte came back (%llu pages read from swap, in batches); the resident\n"
	       "   set stayed within the budget.  free(1) for lazy memory, in bytes:\n",
	       (unsigned long long)(st.swap_reads - base.swap_reads));
	char table[512];
	if (lm_stats_format(&st, LM_FORMAT_FREE, table, sizeof(table)) > 0)
		printf("%s\n", table);

	st = stats(rt);
	printf("Totals: %llu faults, %llu pages filled (%llu zero, %llu file), %llu by readahead,\n"
	       "        %llu KiB of page-table metadata for %zu MiB of regions.\n",
	       (unsigned long long)st.faults_missing,
	       (unsigned long long)(st.fills_zero + st.fills_memory + st.fills_file),
	       (unsigned long long)st.fills_zero, (unsigned long long)st.fills_file,
	       (unsigned long long)st.readahead_pages, (unsigned long long)st.metadata_bytes / 1024,
	       2 * mib);
	(void)sum;
	lm_runtime_close(rt);
	return 0;
}
