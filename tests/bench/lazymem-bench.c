/* SPDX-License-Identifier: MIT */
/* lazymem-bench: first-touch cost of lazymem regions beside the kernel's own demand paging. */
#include "lazymem.h"
#include "swap-bench.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif
#ifndef RAMFS_MAGIC
#define RAMFS_MAGIC 0x858458f6
#endif

#define NOINLINE __attribute__((noinline))

#define NREGIONS 10000
#define VERIFY_SAMPLES 64
/* The byte a write touch stores: anything but the sources' contents (zero, or |1 data). */
#define TOUCH_BYTE 0xa4

enum access { SEQ, RAND, REGIONS };
enum source { SRC_ZERO, SRC_MEMORY, SRC_FILE };
enum cache { CACHE_NONE, CACHE_COLD, CACHE_WARM };

struct measure {
	const char *name;
	enum access access;
	enum source source;
	enum cache cache;
	bool read;
	double target;		/* ratio to the kernel to meet, 0: none */
	double floor_target;	/* ratio to the floor to meet (random first writes), 0: none */
};

/*
 * Zero and memory are written (the kernel's anonymous first-touch cost is
 * a write fault); file pages are read, like a file mapping is used.  The
 * targets are issue 19's: sequential fills at half the kernel's cost, cold
 * files at mmap's, random first writes within 1.3x the bare mechanism.
 */
static const struct measure measures[] = {
	{ "first_touch.seq.zero", SEQ, SRC_ZERO, CACHE_NONE, false, 0.5, 0 },
	{ "first_touch.seq.zero.read", SEQ, SRC_ZERO, CACHE_NONE, true, 0, 0 },
	{ "first_touch.seq.memory", SEQ, SRC_MEMORY, CACHE_NONE, false, 0.5, 0 },
	{ "first_touch.seq.file.cold", SEQ, SRC_FILE, CACHE_COLD, true, 1.0, 0 },
	{ "first_touch.seq.file.warm", SEQ, SRC_FILE, CACHE_WARM, true, 0, 0 },
	{ "first_touch.rand.zero", RAND, SRC_ZERO, CACHE_NONE, false, 0, 1.3 },
	{ "first_touch.rand.zero.read", RAND, SRC_ZERO, CACHE_NONE, true, 0, 0 },
	{ "first_touch.rand.memory", RAND, SRC_MEMORY, CACHE_NONE, false, 0, 1.3 },
	{ "first_touch.rand.file.cold", RAND, SRC_FILE, CACHE_COLD, true, 1.5, 0 },
	{ "first_touch.rand.file.warm", RAND, SRC_FILE, CACHE_WARM, true, 0, 0 },
	{ "regions.create.10000", REGIONS, SRC_ZERO, CACHE_NONE, false, 0, 0 },
};

#define NMEASURES (sizeof(measures) / sizeof(measures[0]))
#define MODE_THREAD_BIT 1
#define MODE_SIGNAL_BIT 2

struct config {
	bool json;
	bool quick;
	int runs;		/* 0: default */
	size_t size;		/* 0: default */
	size_t rand_size;	/* 0: size / 4 */
	int modes;		/* MODE_*_BIT */
	int threads;
	int readahead;
	const char *only;
	const char *dir;
	size_t budget;		/* swap measurements; 0: default */
	bool verbose;
	bool busy;		/* a thread spins meanwhile: no CPU goes idle */
};

struct bench {
	struct config cfg;
	size_t ps;
	unsigned shift;
	size_t seq_pages, rand_pages;
	unsigned char *buf;	/* source data of memory regions and of the file */
	uint64_t sum_seq, sum_rand;	/* expected sums of read touches */
	uint32_t *perm;		/* random order of the rand_pages pages */
	int fd;
	char path[PATH_MAX];
	bool dir_tmpfs;
	bool can_drop;		/* /proc/sys/vm/drop_caches is writable */
	bool cold_warned;
	struct lm_runtime *rt[2];	/* [0] thread mode, [1] signal mode */
	struct lm_region **regions;	/* NREGIONS slots for regions.create */
	void **maps;		/* NREGIONS slots for its kernel side */
	double floor[3];	/* ns per page, by FLOOR_*: 0 when not measured */
};

static void die(const char *what, int err)
{
	fprintf(stderr, "lazymem-bench: %s: %s\n", what, lm_strerror(err));
	exit(1);
}

static void die_msg(const char *msg)
{
	fprintf(stderr, "lazymem-bench: %s\n", msg);
	exit(1);
}

uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/* Accepts 4096, 64K, 64M, 1G (powers of 1024). */
static int parse_size(const char *s, size_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	unsigned shift = 0;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	}
	if (*end == 'i' && shift)
		end++;
	if (*end == 'b' || *end == 'B')
		end++;
	if (*end || v == 0 || v > (SIZE_MAX >> shift))
		return -EINVAL;
	*out = (size_t)(v << shift);
	return 0;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -EINVAL;
	*out = (int)v;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lazymem-bench [options]\n"
		"  --json             one JSON object per measurement on stdout\n"
		"  --runs N           runs per measurement, medians reported (default 5)\n"
		"  --size BYTES       sequential region size, K/M/G suffixes (default 1G)\n"
		"  --rand-size BYTES  random-access region size (default size/4)\n"
		"  --mode M           thread, signal or both (default both)\n"
		"  --threads N        handler threads (thread mode)\n"
		"  --readahead N      pages per fill at most\n"
		"  --only SUBSTRING   run only measurements whose name contains it\n"
		"  --quick            64M and 3 runs, for smoke testing\n"
		"  --dir PATH         directory of the temporary file (default $TMPDIR or /var/tmp)\n"
		"  --budget BYTES     memory budget of the swap.* measurements (default 32M, quick 8M)\n"
		"  --verbose          eviction statistics of each swap.* run, each snapshot run's\n"
		"                     figures, on stderr\n"
		"  --busy             a thread spins all along, so that no CPU goes idle (the\n"
		"                     floor and first_touch.rand.* with the other CPU busy)\n");
}

static void parse_args(int argc, char **argv, struct config *c)
{
	enum { O_JSON = 256, O_RUNS, O_SIZE, O_RSIZE, O_MODE, O_THREADS, O_RA, O_ONLY,
	       O_QUICK, O_DIR, O_HELP, O_BUDGET, O_VERBOSE, O_BUSY };
	static const struct option opts[] = {
		{ "json", no_argument, NULL, O_JSON },
		{ "runs", required_argument, NULL, O_RUNS },
		{ "size", required_argument, NULL, O_SIZE },
		{ "rand-size", required_argument, NULL, O_RSIZE },
		{ "mode", required_argument, NULL, O_MODE },
		{ "threads", required_argument, NULL, O_THREADS },
		{ "readahead", required_argument, NULL, O_RA },
		{ "only", required_argument, NULL, O_ONLY },
		{ "quick", no_argument, NULL, O_QUICK },
		{ "dir", required_argument, NULL, O_DIR },
		{ "help", no_argument, NULL, O_HELP },
		{ "budget", required_argument, NULL, O_BUDGET },
		{ "verbose", no_argument, NULL, O_VERBOSE },
		{ "busy", no_argument, NULL, O_BUSY },
		{ NULL, 0, NULL, 0 },
	};
	memset(c, 0, sizeof(*c));
	c->modes = MODE_THREAD_BIT | MODE_SIGNAL_BIT;
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		bool bad = false;
		switch (o) {
		case O_JSON:
			c->json = true;
			break;
		case O_RUNS:
			bad = parse_int(optarg, 1, 1000, &c->runs) < 0;
			break;
		case O_SIZE:
			bad = parse_size(optarg, &c->size) < 0;
			break;
		case O_RSIZE:
			bad = parse_size(optarg, &c->rand_size) < 0;
			break;
		case O_MODE:
			if (!strcmp(optarg, "thread"))
				c->modes = MODE_THREAD_BIT;
			else if (!strcmp(optarg, "signal"))
				c->modes = MODE_SIGNAL_BIT;
			else if (!strcmp(optarg, "both"))
				c->modes = MODE_THREAD_BIT | MODE_SIGNAL_BIT;
			else
				bad = true;
			break;
		case O_THREADS:
			bad = parse_int(optarg, 1, 64, &c->threads) < 0;
			break;
		case O_RA:
			bad = parse_int(optarg, 1, 1024, &c->readahead) < 0;
			break;
		case O_ONLY:
			c->only = optarg;
			break;
		case O_QUICK:
			c->quick = true;
			break;
		case O_DIR:
			c->dir = optarg;
			break;
		case O_BUDGET:
			bad = parse_size(optarg, &c->budget) < 0 || c->budget < (1u << 20);
			break;
		case O_VERBOSE:
			c->verbose = true;
			break;
		case O_BUSY:
			c->busy = true;
			break;
		case O_HELP:
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			exit(2);
		}
		if (bad) {
			fprintf(stderr, "lazymem-bench: bad value for --%s: %s\n",
				opts[o - O_JSON].name, optarg);
			exit(2);
		}
	}
	if (optind < argc) {
		usage(stderr);
		exit(2);
	}
	/* --quick sets defaults; explicit --size/--runs win whatever their order. */
	if (!c->size)
		c->size = c->quick ? 64ul << 20 : 1ul << 30;
	if (!c->runs)
		c->runs = c->quick ? 3 : 5;
}

/*
 * The touch loops, shared by both sides so that the only difference
 * between them is who resolves the fault.  Volatile accesses: every page
 * is touched exactly once, in this order, whatever the optimizer thinks.
 */
static NOINLINE void touch_write_seq(unsigned char *base, size_t npages, unsigned shift)
{
	volatile unsigned char *p = base;
	for (size_t i = 0; i < npages; i++)
		p[i << shift] = TOUCH_BYTE;
}

static NOINLINE void touch_write_rand(unsigned char *base, const uint32_t *perm, size_t npages,
				      unsigned shift)
{
	volatile unsigned char *p = base;
	for (size_t i = 0; i < npages; i++)
		p[(size_t)perm[i] << shift] = TOUCH_BYTE;
}

static NOINLINE uint64_t touch_read_seq(const unsigned char *base, size_t npages, unsigned shift)
{
	const volatile unsigned char *p = base;
	uint64_t sum = 0;
	for (size_t i = 0; i < npages; i++)
		sum += p[i << shift];
	return sum;
}

static NOINLINE uint64_t touch_read_rand(const unsigned char *base, const uint32_t *perm,
					 size_t npages, unsigned shift)
{
	const volatile unsigned char *p = base;
	uint64_t sum = 0;
	for (size_t i = 0; i < npages; i++)
		sum += p[(size_t)perm[i] << shift];
	return sum;
}

/*
 * Checks a sample of pages against what they must hold, so a broken fill
 * (zeros instead of data, the wrong page, a lost write) cannot pass as a
 * fast one.  Returns true when they all match.
 */
static bool verify_pages(const struct bench *b, const struct measure *m, const unsigned char *p,
			 size_t npages, uint64_t sum)
{
	size_t ps = b->ps;
	if (m->read) {
		uint64_t want = m->source == SRC_ZERO ? 0 :
				m->access == SEQ ? b->sum_seq : b->sum_rand;
		if (sum != want) {
			fprintf(stderr, "lazymem-bench: %s: read sum %" PRIu64 ", expected %" PRIu64 "\n",
				m->name, sum, want);
			return false;
		}
	}
	size_t step = npages > VERIFY_SAMPLES ? npages / VERIFY_SAMPLES : 1;
	for (size_t pg = 0; pg < npages; pg += step) {
		/* The last page too: an off-by-one at the end is a classic. */
		size_t at = pg + step >= npages ? npages - 1 : pg;
		const unsigned char *page = p + (at << b->shift);
		const unsigned char *src = m->source == SRC_ZERO ? NULL : b->buf + (at << b->shift);
		for (size_t i = 0; i < ps; i++) {
			unsigned want = src ? src[i] : 0;
			if (i == 0 && !m->read)
				want = TOUCH_BYTE;
			if (page[i] != want) {
				fprintf(stderr,
					"lazymem-bench: %s: page %zu byte %zu is 0x%02x, expected 0x%02x\n",
					m->name, at, i, page[i], want);
				return false;
			}
		}
	}
	return true;
}

/* Returns ns for the touch loop, after checking the result. */
static uint64_t timed_touch(const struct bench *b, const struct measure *m, unsigned char *p,
			    size_t npages, bool *ok)
{
	uint64_t sum = 0, t0 = now_ns();
	if (m->access == SEQ) {
		if (m->read)
			sum = touch_read_seq(p, npages, b->shift);
		else
			touch_write_seq(p, npages, b->shift);
	} else {
		if (m->read)
			sum = touch_read_rand(p, b->perm, npages, b->shift);
		else
			touch_write_rand(p, b->perm, npages, b->shift);
	}
	uint64_t ns = now_ns() - t0;
	*ok = verify_pages(b, m, p, npages, sum);
	return ns;
}

/* ---- the temporary file and its page cache ------------------------------ */

static bool fs_is_ram(const char *dir)
{
	struct statfs sf;
	if (statfs(dir, &sf) < 0)
		return false;
	return (unsigned long)sf.f_type == TMPFS_MAGIC || (unsigned long)sf.f_type == RAMFS_MAGIC;
}

/*
 * A tmpfs file has no cold cache (its pages are the cache), so the file
 * goes to $TMPDIR or /var/tmp unless told otherwise, and never to a
 * memory file system by default.
 */
static const char *pick_dir(const struct config *c)
{
	if (c->dir)
		return c->dir;
	const char *t = getenv("TMPDIR");
	if (t && *t && !fs_is_ram(t))
		return t;
	return "/var/tmp";
}

static void make_file(struct bench *b, size_t len)
{
	const char *dir = pick_dir(&b->cfg);
	b->dir_tmpfs = fs_is_ram(dir);
	int n = snprintf(b->path, sizeof(b->path), "%s/lazymem-bench.XXXXXX", dir);
	if (n < 0 || (size_t)n >= sizeof(b->path))
		die_msg("--dir path too long");
	b->fd = mkstemp(b->path);
	if (b->fd < 0) {
		fprintf(stderr, "lazymem-bench: cannot create a file in %s: %s\n", dir,
			strerror(errno));
		exit(1);
	}
	/* Unlinked at once: nothing is left behind however the run ends. */
	unlink(b->path);
	for (size_t off = 0; off < len;) {
		size_t chunk = len - off < (8u << 20) ? len - off : (8u << 20);
		ssize_t w = write(b->fd, b->buf + off, chunk);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("writing the temporary file", w < 0 ? -errno : -EIO);
		off += (size_t)w;
	}
	if (fsync(b->fd) < 0)
		die("fsync of the temporary file", -errno);
}

bool drop_caches(void)
{
	int fd = open("/proc/sys/vm/drop_caches", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	bool ok = write(fd, "1", 1) == 1;
	close(fd);
	return ok;
}

/* Resident pages of the file in [0, len), by mincore on a fresh mapping (faults nothing in). */
static long cached_pages(const struct bench *b, size_t len)
{
	size_t npages = len >> b->shift;
	void *p = mmap(NULL, len, PROT_READ, MAP_SHARED, b->fd, 0);
	unsigned char *vec = malloc(npages);
	long n = -1;
	if (p != MAP_FAILED && vec && mincore(p, len, vec) == 0) {
		n = 0;
		for (size_t i = 0; i < npages; i++)
			n += vec[i] & 1;
	}
	free(vec);
	if (p != MAP_FAILED)
		munmap(p, len);
	return n;
}

static void make_cold(struct bench *b, size_t len)
{
	/* The file is clean (fsync'ed): DONTNEED really drops its pages. */
	posix_fadvise(b->fd, 0, 0, POSIX_FADV_DONTNEED);
	if (b->can_drop && !drop_caches())
		b->can_drop = false;
	long cached = cached_pages(b, len);
	if (cached > (long)(len >> b->shift) / 100 && !b->cold_warned) {
		fprintf(stderr, "lazymem-bench: warning: %ld of %zu file pages still cached "
			"before a cold run: file.cold numbers are not cold\n",
			cached, len >> b->shift);
		b->cold_warned = true;
	}
}

static void make_warm(struct bench *b, size_t len)
{
	const size_t cap = 1u << 20;
	unsigned char *scratch = malloc(cap);
	if (!scratch)
		die("allocating a read buffer", -ENOMEM);
	for (size_t off = 0; off < len;) {
		size_t chunk = len - off < cap ? len - off : cap;
		ssize_t r = pread(b->fd, scratch, chunk, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			die("reading the temporary file", r < 0 ? -errno : -EIO);
		off += (size_t)r;
	}
	free(scratch);
}

static void prepare_cache(struct bench *b, const struct measure *m, size_t len)
{
	if (m->cache == CACHE_COLD)
		make_cold(b, len);
	else if (m->cache == CACHE_WARM)
		make_warm(b, len);
}

/* ---- one run of one side ------------------------------------------------ */

/*
 * The kernel's mechanism: fresh anonymous memory for zero and memory
 * (no transparent huge pages, for a 4 KiB against 4 KiB comparison), a
 * private mapping of the same file for file.  Returns ns per page.
 */
static double run_kernel(struct bench *b, const struct measure *m)
{
	size_t npages = m->access == SEQ ? b->seq_pages : b->rand_pages;
	size_t len = npages << b->shift;
	prepare_cache(b, m, len);
	void *p;
	if (m->source == SRC_FILE) {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, b->fd, 0);
	} else {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p != MAP_FAILED && madvise(p, len, MADV_NOHUGEPAGE) < 0)
			die("madvise(MADV_NOHUGEPAGE)", -errno);
	}
	if (p == MAP_FAILED)
		die("mmap", -errno);
	/*
	 * The kernel side of a memory measurement is plain anonymous first
	 * touch, so its contents are zeros, not the buffer's.
	 */
	struct measure km = *m;
	if (m->source == SRC_MEMORY)
		km.source = SRC_ZERO;
	bool ok;
	uint64_t ns = timed_touch(b, &km, p, npages, &ok);
	munmap(p, len);
	if (!ok)
		die_msg("kernel side returned wrong data (see above)");
	return (double)ns / (double)npages;
}

static double run_lazymem(struct bench *b, const struct measure *m, struct lm_runtime *rt)
{
	size_t npages = m->access == SEQ ? b->seq_pages : b->rand_pages;
	size_t len = npages << b->shift;
	struct lm_region *r = NULL;
	int rc;
	prepare_cache(b, m, len);
	switch (m->source) {
	case SRC_ZERO:
		rc = lm_region_create_zero(rt, len, 0, &r);
		break;
	case SRC_MEMORY:
		rc = lm_region_create_memory(rt, b->buf, len, 0, &r);
		break;
	default:
		rc = lm_region_create_file(rt, b->fd, 0, len, 0, &r);
		break;
	}
	if (rc < 0)
		die("lm_region_create", rc);
	bool ok;
	uint64_t ns = timed_touch(b, m, lm_region_addr(r), npages, &ok);
	if ((rc = lm_region_destroy(r)) < 0)
		die("lm_region_destroy", rc);
	if (!ok) {
		fprintf(stderr, "lazymem-bench: %s: lazymem returned wrong data\n", m->name);
		exit(1);
	}
	return (double)ns / (double)npages;
}

/*
 * regions.create.10000: 10,000 one-page regions alive at once in one
 * runtime, each touched, then all destroyed.  The kernel side does the
 * same with 10,000 one-page anonymous mappings.  Returns µs per region.
 */
static double run_regions_kernel(struct bench *b)
{
	size_t ps = b->ps;
	uint64_t t0 = now_ns();
	for (int i = 0; i < NREGIONS; i++) {
		b->maps[i] = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				  -1, 0);
		if (b->maps[i] == MAP_FAILED)
			die("mmap", -errno);
		*(volatile unsigned char *)b->maps[i] = TOUCH_BYTE;
	}
	for (int i = 0; i < NREGIONS; i++)
		munmap(b->maps[i], ps);
	return (double)(now_ns() - t0) / 1000.0 / NREGIONS;
}

static double run_regions_lazymem(struct bench *b, struct lm_runtime *rt)
{
	struct lm_stats st = { .size = sizeof(st) };
	int rc = lm_stats_get(rt, &st);
	if (rc < 0)
		die("lm_stats_get", rc);
	uint64_t live0 = st.regions_live;

	uint64_t t0 = now_ns();
	for (int i = 0; i < NREGIONS; i++) {
		rc = lm_region_create_zero(rt, b->ps, 0, &b->regions[i]);
		if (rc < 0) {
			fprintf(stderr, "lazymem-bench: regions.create: region %d of %d: %s\n", i,
				NREGIONS, lm_strerror(rc));
			exit(1);
		}
		*(volatile unsigned char *)lm_region_addr(b->regions[i]) = TOUCH_BYTE;
	}
	uint64_t t1 = now_ns();

	/* Untimed: all of them alive and holding what was written. */
	if ((rc = lm_stats_get(rt, &st)) < 0)
		die("lm_stats_get", rc);
	if (st.regions_live != live0 + NREGIONS) {
		fprintf(stderr, "lazymem-bench: regions.create: %" PRIu64 " regions live, expected %"
			PRIu64 "\n", st.regions_live, live0 + NREGIONS);
		exit(1);
	}
	for (int i = 0; i < NREGIONS; i++) {
		const unsigned char *p = lm_region_addr(b->regions[i]);
		if (p[0] != TOUCH_BYTE || p[1] != 0 || p[b->ps - 1] != 0) {
			fprintf(stderr, "lazymem-bench: regions.create: region %d holds wrong data\n", i);
			exit(1);
		}
	}

	uint64_t t2 = now_ns();
	for (int i = 0; i < NREGIONS; i++) {
		if ((rc = lm_region_destroy(b->regions[i])) < 0) {
			fprintf(stderr, "lazymem-bench: regions.create: destroying region %d: %s\n", i,
				lm_strerror(rc));
			exit(1);
		}
	}
	uint64_t t3 = now_ns();
	return (double)((t1 - t0) + (t3 - t2)) / 1000.0 / NREGIONS;
}

/* ---- driving and reporting ---------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

double median(double *v, int n)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* floor: the mechanism's own cost for the same touches (ns per page), 0: none to compare. */
static void report(const struct bench *b, const char *name, const char *unit, double lm,
		   double kern, double target, double floor, double floor_target)
{
	double ratio = kern > 0 ? lm / kern : 0;
	if (b->cfg.json) {
		char fl[32] = "";
		if (floor > 0)
			snprintf(fl, sizeof(fl), ",\"floor\":%.3f", lm / floor);
		printf("{\"name\":\"%s\",\"unit\":\"%s\",\"lazymem\":%.2f,\"kernel\":%.2f,"
		       "\"ratio\":%.3f%s%s}\n", name, unit, lm, kern, ratio, fl,
		       b->cfg.busy ? ",\"busy\":true" : "");
	} else {
		char tgt[32] = "", fl[32] = "";
		if (target > 0)
			snprintf(tgt, sizeof(tgt), "<=%.1f %s", target,
				 ratio <= target ? "ok" : "MISS");
		if (floor > 0 && floor_target > 0)
			snprintf(fl, sizeof(fl), "floor x%.2f <=%.1f %s ", lm / floor, floor_target,
				 lm / floor <= floor_target ? "ok" : "MISS");
		else if (floor > 0)
			snprintf(fl, sizeof(fl), "floor x%.2f ", lm / floor);
		const char *u = strcmp(unit, "ns_per_page") ? "us/region" : "ns/page";
		printf("%-34s %12.1f %12.1f %8.2f  %-9s %s%s\n", name, lm, kern, ratio, u, fl, tgt);
	}
	fflush(stdout);
}

static void run_measure(struct bench *b, const struct measure *m, int mode)
{
	char name[96];
	snprintf(name, sizeof(name), "%s%s", m->name, mode == LM_MODE_SIGNAL ? ".signal" : "");
	if (b->cfg.only && !strstr(name, b->cfg.only))
		return;
	struct lm_runtime *rt = b->rt[mode == LM_MODE_SIGNAL];
	int runs = b->cfg.runs;
	double kv[runs], lv[runs];
	/* Interleaved, kernel first: drift and noise hit both sides alike. */
	for (int i = 0; i < runs; i++) {
		if (m->access == REGIONS) {
			kv[i] = run_regions_kernel(b);
			lv[i] = run_regions_lazymem(b, rt);
		} else {
			kv[i] = run_kernel(b, m);
			lv[i] = run_lazymem(b, m, rt);
		}
	}
	/* Random first touches of zero or memory pages, against the bare mechanism in the same mode. */
	double floor = m->access == RAND && m->source != SRC_FILE && !m->read ?
			       b->floor[mode == LM_MODE_SIGNAL ? FLOOR_SIGNAL : FLOOR_THREAD_PINNED] :
			       0;
	report(b, name, m->access == REGIONS ? "us_per_region" : "ns_per_page", median(lv, runs),
	       median(kv, runs), m->target, floor, m->floor_target);
}

static const char floor_names[] = "floor.rand.thread floor.rand.thread.unpinned floor.rand.signal";

/*
 * The floor: the same random first-touch writes as first_touch.rand.zero,
 * with a minimal handler (floor-bench.c), beside the kernel's anonymous
 * first touch, interleaved.  floor.rand.thread has the handler pinned to
 * the toucher's CPU (what a handler on the right CPU costs), .unpinned
 * leaves both to the scheduler, .signal copies in a SIGBUS handler.
 */
static void run_floor(struct bench *b)
{
	static const char *const names[] = { "floor.rand.thread", "floor.rand.thread.unpinned",
					     "floor.rand.signal" };
	const struct measure *zero = NULL;
	for (size_t i = 0; i < NMEASURES; i++)
		if (!strcmp(measures[i].name, "first_touch.rand.zero"))
			zero = &measures[i];
	for (int k = FLOOR_THREAD_PINNED; k <= FLOOR_SIGNAL; k++) {
		int runs = b->cfg.runs;
		double kv[runs], fv[runs];
		for (int i = 0; i < runs; i++) {
			kv[i] = run_kernel(b, zero);
			fv[i] = floor_rand(k, b->perm, b->rand_pages, b->shift);
			if (fv[i] < 0)
				die("the floor's userfaultfd", (int)fv[i]);
		}
		b->floor[k] = median(fv, runs);
		if (!b->cfg.only || strstr(names[k], b->cfg.only))
			report(b, names[k], "ns_per_page", b->floor[k], median(kv, runs), 0, 0, 0);
	}
}

static bool selected(const struct bench *b, const struct measure *m, int mode)
{
	if (!b->cfg.only)
		return true;
	char name[96];
	snprintf(name, sizeof(name), "%s%s", m->name, mode == LM_MODE_SIGNAL ? ".signal" : "");
	return strstr(name, b->cfg.only) != NULL;
}

static struct lm_runtime *open_runtime(const struct config *c, int mode)
{
	struct lm_options o;
	lm_options_init(&o);
	o.mode = mode;
	o.handler_threads = c->threads;
	o.readahead_max = c->readahead;
	struct lm_runtime *rt;
	int rc = lm_runtime_open(&o, &rt);
	if (rc < 0)
		die(mode == LM_MODE_SIGNAL ? "lm_runtime_open (signal mode)" :
		    "lm_runtime_open (thread mode)", rc);
	return rt;
}

/* Median fill latency from the histogram: the upper bound of the median's bucket. */
static void print_stats(const char *label, struct lm_runtime *rt)
{
	struct lm_stats st = { .size = sizeof(st) };
	int rc = lm_stats_get(rt, &st);
	if (rc < 0)
		die("lm_stats_get", rc);
	uint64_t fills = 0, acc = 0;
	for (int i = 0; i < LM_LAT_BUCKETS; i++)
		fills += st.fill_latency[i];
	int med = -1;
	for (int i = 0; i < LM_LAT_BUCKETS && fills; i++) {
		acc += st.fill_latency[i];
		if (acc * 2 >= fills) {
			med = i;
			break;
		}
	}
	printf("  %-6s faults %" PRIu64 " (thread %" PRIu64 ", signal %" PRIu64 "), pages filled "
	       "%" PRIu64 " (readahead %" PRIu64 "), fills %" PRIu64 ", fill latency median < %.1f us"
	       ", mean %.1f us, sigbus %" PRIu64 ", io_uring/pread reads %" PRIu64 "/%" PRIu64 "\n",
	       label, st.faults_missing, st.faults_thread, st.faults_signal,
	       st.fills_zero + st.fills_memory + st.fills_file, st.readahead_pages, fills,
	       med < 0 ? 0.0 : (double)(1ull << (med + 8)) / 1000.0,
	       fills ? (double)st.fill_ns_total / (double)fills / 1000.0 : 0.0, st.sigbus_raised,
	       st.io_uring_reads, st.pread_reads);
}

static void print_header(const struct bench *b)
{
	struct lm_stats st = { .size = sizeof(st) };
	printf("lazymem-bench: lazymem %s, page %zu B, %d runs per measurement (medians), "
	       "kernel and lazymem runs interleaved\n", lm_version(), b->ps, b->cfg.runs);
	printf("  sizes: sequential %zu MiB, random %zu MiB (random order of all its pages, "
	       "precomputed)\n", (b->seq_pages << b->shift) >> 20,
	       (b->rand_pages << b->shift) >> 20);
	printf("  touch: write 1 byte per page (zero, memory), read 1 byte per page (file, *.read)\n");
	printf("  floor: a minimal handler, one UFFDIO_COPY per fault (thread: pinned to the "
	       "toucher's CPU; signal: in a SIGBUS handler); rand zero/memory show x floor%s\n",
	       b->cfg.busy ? "; --busy: a thread spins all along" : "");
	printf("  kernel: anonymous mmap with MADV_NOHUGEPAGE (4 KiB pages; THP would be faster); "
	       "file: mmap MAP_PRIVATE of the same file\n");
	if (b->fd >= 0)
		printf("  file: %s (unlinked)%s; cold = POSIX_FADV_DONTNEED%s before each run "
		       "(the host may still cache the disk)\n", b->path,
		       b->dir_tmpfs ? " ON TMPFS: cold numbers are not cold" : "",
		       b->can_drop ? " + drop_caches" : " only (drop_caches not writable)");
	for (int i = 0; i < 2; i++) {
		if (!b->rt[i] || lm_stats_get(b->rt[i], &st) < 0)
			continue;
		char ra[32] = "library default";
		if (b->cfg.readahead)
			snprintf(ra, sizeof(ra), "%d pages", b->cfg.readahead);
		printf("  runtime %s: %" PRIu64 " handler thread(s), readahead %s, uffd origin %"
		       PRIu64 "\n", i ? "signal" : "thread", st.handler_threads, ra,
		       st.uffd_origin);
	}
	printf("\n%-34s %12s %12s %8s  %-9s %s\n", "measurement", "lazymem", "kernel", "ratio",
	       "unit", "target");
	fflush(stdout);
}

/* What the swap, snapshot, run and remote measurements take from the command line. */
static struct swap_bench_config sub_config(const struct config *cfg)
{
	return (struct swap_bench_config){
		.json = cfg->json,
		.verbose = cfg->verbose,
		.runs = cfg->runs,
		.only = cfg->only,
		.dir = pick_dir(cfg),
	};
}

int main(int argc, char **argv)
{
	struct bench b;
	memset(&b, 0, sizeof(b));
	b.fd = -1;
	parse_args(argc, argv, &b.cfg);
	b.ps = (size_t)sysconf(_SC_PAGESIZE);
	b.shift = (unsigned)__builtin_ctzl(b.ps);
	b.seq_pages = b.cfg.size >> b.shift;
	size_t rsize = b.cfg.rand_size ? b.cfg.rand_size : b.cfg.size / 4;
	b.rand_pages = rsize >> b.shift;
	if (!b.seq_pages || !b.rand_pages)
		die_msg("--size and --rand-size must be at least one page");
	if (b.rand_pages > UINT32_MAX)
		die_msg("--rand-size too large");

	bool want_seq = false, want_rand = false, want_data = false, want_file = false;
	bool want_regions = false, any = false;
	for (size_t i = 0; i < NMEASURES; i++) {
		const struct measure *m = &measures[i];
		for (int mode = LM_MODE_THREAD; mode <= LM_MODE_SIGNAL; mode++) {
			if (!(b.cfg.modes & (mode == LM_MODE_THREAD ? MODE_THREAD_BIT : MODE_SIGNAL_BIT)) ||
			    !selected(&b, m, mode))
				continue;
			any = true;
			want_seq |= m->access == SEQ;
			want_rand |= m->access == RAND;
			want_regions |= m->access == REGIONS;
			want_data |= m->source != SRC_ZERO;
			want_file |= m->source == SRC_FILE;
		}
	}
	/* The floor: asked for, or needed as the second ratio of the random first touches. */
	bool want_floor = !b.cfg.only || strstr(floor_names, b.cfg.only);
	for (size_t i = 0; i < NMEASURES; i++)
		for (int mode = LM_MODE_THREAD; mode <= LM_MODE_SIGNAL; mode++)
			want_floor |= (b.cfg.modes & (mode == LM_MODE_THREAD ? MODE_THREAD_BIT :
									 MODE_SIGNAL_BIT)) &&
				      selected(&b, &measures[i], mode) && measures[i].access == RAND &&
				      measures[i].source != SRC_FILE && !measures[i].read;
	want_rand |= want_floor;
	any |= want_floor;
	bool want_swap = swap_bench_selected(b.cfg.only) || dirty_bench_selected(b.cfg.only);
	bool want_snap = snapshot_bench_selected(b.cfg.only);
	bool want_run = run_bench_selected(b.cfg.only);
	bool want_remote = remote_bench_selected(b.cfg.only);
	if (!any && !want_swap && !want_snap && !want_run && !want_remote)
		die_msg("no measurement matches --only");

	/* Source data: every byte non-zero, so a page filled with zeros cannot pass. */
	size_t data_pages = b.rand_pages;
	if (want_seq && b.seq_pages > data_pages)
		data_pages = b.seq_pages;
	if (want_data) {
		size_t len = data_pages << b.shift;
		b.buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (b.buf == MAP_FAILED)
			die("mmap of the source buffer", -errno);
		uint64_t seed = 0x9e3779b97f4a7c15ull, *w = (uint64_t *)b.buf;
		for (size_t i = 0; i < len / 8; i++)
			w[i] = xorshift(&seed) | 0x0101010101010101ull;
		for (size_t pg = 0; pg < data_pages; pg++) {
			uint64_t v = b.buf[pg << b.shift];
			if (pg < b.seq_pages)
				b.sum_seq += v;
			if (pg < b.rand_pages)
				b.sum_rand += v;
		}
		if (want_file) {
			make_file(&b, len);
			b.can_drop = drop_caches();
		}
	}
	if (want_rand) {
		b.perm = malloc(b.rand_pages * sizeof(*b.perm));
		if (!b.perm)
			die("allocating the permutation", -ENOMEM);
		for (size_t i = 0; i < b.rand_pages; i++)
			b.perm[i] = (uint32_t)i;
		uint64_t seed = 0x2545f4914f6cdd1dull;
		for (size_t i = b.rand_pages - 1; i > 0; i--) {
			size_t j = (size_t)(xorshift(&seed) % (i + 1));
			uint32_t t = b.perm[i];
			b.perm[i] = b.perm[j];
			b.perm[j] = t;
		}
	}
	if (want_regions) {
		b.regions = calloc(NREGIONS, sizeof(*b.regions));
		b.maps = calloc(NREGIONS, sizeof(*b.maps));
		if (!b.regions || !b.maps)
			die("allocating region slots", -ENOMEM);
	}
	if (b.cfg.modes & MODE_THREAD_BIT)
		b.rt[0] = open_runtime(&b.cfg, LM_MODE_THREAD);
	if (b.cfg.modes & MODE_SIGNAL_BIT)
		b.rt[1] = open_runtime(&b.cfg, LM_MODE_SIGNAL);

	if (!b.cfg.json && any)
		print_header(&b);
	else if (b.fd >= 0 && (!b.can_drop || b.dir_tmpfs))
		fprintf(stderr, "lazymem-bench: warning: file.cold numbers may not be cold (%s)\n",
			b.dir_tmpfs ? "file on tmpfs" : "drop_caches not writable");

	if (b.cfg.busy)
		busy_start();
	if (want_floor)
		run_floor(&b);
	for (size_t i = 0; i < NMEASURES; i++) {
		if (b.cfg.modes & MODE_THREAD_BIT)
			run_measure(&b, &measures[i], LM_MODE_THREAD);
		if (b.cfg.modes & MODE_SIGNAL_BIT)
			run_measure(&b, &measures[i], LM_MODE_SIGNAL);
	}

	if (want_swap) {
		struct swap_bench_config sc = sub_config(&b.cfg);
		sc.budget = b.cfg.budget ? b.cfg.budget : b.cfg.quick ? 8u << 20 : 32u << 20;
		int rc = dirty_bench_run(&sc, b.cfg.quick ? 16384 : 65536);
		if (rc < 0)
			die("dirty-tracking measurements", rc);
		/* Thread mode first, then signal mode, as --mode asks. */
		for (int mode = LM_MODE_THREAD; mode <= LM_MODE_SIGNAL; mode++) {
			if (!(b.cfg.modes & (mode == LM_MODE_THREAD ? MODE_THREAD_BIT :
					     MODE_SIGNAL_BIT)))
				continue;
			sc.mode = mode;
			rc = swap_bench_run(&sc);
			if (rc < 0)
				die("swap measurements", rc);
		}
	}
	if (want_snap && (b.cfg.modes & MODE_THREAD_BIT)) {
		struct swap_bench_config sc = sub_config(&b.cfg);
		size_t sizes[2] = { 1ull << 30, 4ull << 30 };
		if (b.cfg.quick)
			sizes[0] = 64u << 20;
		int rc = snapshot_bench_run(&sc, sizes, b.cfg.quick ? 1 : 2);
		if (rc < 0)
			die("snapshot measurements", rc);
	}
	if (want_run) {
		struct swap_bench_config sc = sub_config(&b.cfg);
		int rc = run_bench_run(&sc, b.cfg.quick);
		if (rc < 0)
			die("run measurements", rc);
	}
	if (want_remote && (b.cfg.modes & MODE_THREAD_BIT)) {
		struct swap_bench_config sc = sub_config(&b.cfg);
		int rc = remote_bench_run(&sc, b.cfg.quick);
		if (rc < 0)
			die("remote measurements", rc);
	}
	busy_stop();
	if (!b.cfg.json && any) {
		printf("\nlazymem stats over the whole run:\n");
		if (b.rt[0])
			print_stats("thread", b.rt[0]);
		if (b.rt[1])
			print_stats("signal", b.rt[1]);
	}
	for (int i = 0; i < 2; i++) {
		int rc = b.rt[i] ? lm_runtime_close(b.rt[i]) : 0;
		if (rc < 0)
			die("lm_runtime_close", rc);
	}
	if (b.fd >= 0)
		close(b.fd);
	free(b.perm);
	free(b.regions);
	free(b.maps);
	return 0;
}
