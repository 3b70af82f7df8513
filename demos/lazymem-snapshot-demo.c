/* SPDX-License-Identifier: MIT */
/* lazymem-snapshot-demo: a key-value store under write load, snapshotted without fork(), restored lazily, rolled back. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEMO_NAME "lazymem-snapshot-demo"
#include "demo.h"

/*
 * The store: an open-addressing hash table of 32-byte slots (key, three
 * value words) in one lazymem region.  Keys are loaded once; then writer
 * threads update random keys flat out while the main thread takes
 * snapshots and saves them, the way Redis's BGSAVE does with fork(), and
 * then does the same with fork() for comparison.
 */

#define WRITERS 3

struct slot {
	uint64_t key, v[3];
};

static struct slot *table;
static size_t nslots, nkeys;
static _Atomic bool stop, paused;
static _Atomic int parked;
static _Atomic uint64_t ops;

static struct slot *lookup(struct slot *t, uint64_t key)
{
	for (size_t i = mix(key) & (nslots - 1);; i = (i + 1) & (nslots - 1))
		if (t[i].key == key || t[i].key == 0)
			return &t[i];
}

static struct lm_stats stats(struct lm_runtime *rt)
{
	struct lm_stats st;
	memset(&st, 0, sizeof(st));
	st.size = sizeof(st);
	lm_stats_get(rt, &st);
	return st;
}

static void *writer(void *arg)
{
	uint64_t seed = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1, n = 0;
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		if (atomic_load_explicit(&paused, memory_order_acquire)) {
			/* Parked at the main thread's request: it checksums a quiet table. */
			atomic_fetch_add(&parked, 1);
			while (atomic_load(&paused))
				sched_yield();
			atomic_fetch_sub(&parked, 1);
		}
		seed = mix(seed);
		struct slot *s = lookup(table, seed % nkeys + 1);
		s->v[0] = seed;
		s->v[1] = ++n;
		s->v[2] = seed ^ n;
		if ((n & 255) == 0)
			atomic_fetch_add_explicit(&ops, 256, memory_order_relaxed);
	}
	return NULL;
}

/* Parks the writers, returns the table's checksum at that instant (the writers stay parked). */
static uint64_t quiesce(void)
{
	atomic_store(&paused, true);
	while (atomic_load(&parked) < WRITERS)
		sched_yield();
	return checksum(table, nslots * sizeof(struct slot));
}

static void resume(void)
{
	atomic_store(&paused, false);
}

/* Updates per second over the next secs seconds. */
static double throughput(double secs)
{
	uint64_t o0 = atomic_load(&ops);
	double t0 = now();
	while (now() - t0 < secs)
		usleep(10000);
	return (double)(atomic_load(&ops) - o0) / (now() - t0);
}

static uint64_t snapshot_checksum(struct lm_snapshot *s)
{
	size_t len = lm_snapshot_length(s), chunk = 4 << 20;
	unsigned char *buf = malloc(chunk);
	uint64_t h = 0x9e3779b97f4a7c15ull;
	for (size_t off = 0; off < len; off += chunk) {
		size_t n = len - off < chunk ? len - off : chunk;
		int rc = lm_snapshot_read(s, off, buf, n);
		if (rc < 0)
			die("lm_snapshot_read", rc);
		const uint64_t *q = (const uint64_t *)buf;
		for (size_t i = 0; i < n / 8; i++)
			h = (h ^ q[i]) * 0x100000001b3ull;
	}
	free(buf);
	return h;
}

int main(int argc, char **argv)
{
	/*
	 * --then CMD runs a shell command at the end, while the runtime is
	 * still open: scripts/demo.sh shows what lazymemd sees of this
	 * process with it (lazymem free, lazymem ps).
	 */
	bool quick = false;
	uint64_t page_size = 0;
	const char *then = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick")) {
			quick = true;
		} else if (!strcmp(argv[i], "--hugetlb")) {
			page_size = 2u << 20;
		} else if (!strcmp(argv[i], "--then") && i + 1 < argc) {
			then = argv[++i];
		} else {
			fprintf(stderr, "usage: lazymem-snapshot-demo [--quick] [--hugetlb] [--then COMMAND]\n");
			return 2;
		}
	}
	nkeys = quick ? 1u << 18 : 2u << 20;
	nslots = nkeys * 2;
	int rounds = quick ? 2 : 3;
	double interval = quick ? 0.3 : 1.0;
	size_t len = nslots * sizeof(struct slot);
	const char *tmp = getenv("TMPDIR");
	char dir[512];
	snprintf(dir, sizeof(dir), "%s/lazymem-demo-XXXXXX", tmp && *tmp ? tmp : "/var/tmp");
	if (!mkdtemp(dir))
		die("mkdtemp", -errno);

	struct lm_runtime *rt;
	struct lm_region *r;
	/* --hugetlb: the store on 2 MiB pages, where a take protects 512 times fewer entries. */
	struct lm_options o;
	lm_options_init(&o);
	o.page_size = page_size;
	int rc = lm_runtime_open(&o, &rt);
	if (rc < 0)
		die("lm_runtime_open", rc);
	if ((rc = lm_region_create_zero(rt, len, 0, &r)) == -ENOMEM && page_size) {
		fprintf(stderr, "lazymem-snapshot-demo: not enough hugetlb pages: %zu needed, twice "
			"that for the fork() part (as root: echo %zu > /proc/sys/vm/nr_hugepages)\n",
			len / page_size * 2, len / page_size * 2);
		return 1;
	}
	if (rc < 0)
		die("lm_region_create_zero", rc);
	size_t ps = (size_t)stats(rt).page_size;
	table = lm_region_addr(r);
	printf("lazymem snapshot demo: a key-value store of %zu keys in a %zu MiB lazymem region\n"
	       "of %zu KiB pages, %d writer threads updating random keys flat out.\n\n",
	       nkeys, len >> 20, ps >> 10, WRITERS);
	double t0 = now();
	for (uint64_t k = 1; k <= nkeys; k++) {
		struct slot *s = lookup(table, k);
		s->key = k;
		s->v[0] = k;
	}
	printf("loaded in %.0f ms (every page filled on first touch: %llu faults)\n\n",
	       (now() - t0) * 1e3, (unsigned long long)stats(rt).faults_missing);

	pthread_t th[WRITERS];
	for (uintptr_t i = 0; i < WRITERS; i++)
		pthread_create(&th[i], NULL, writer, (void *)(i + 1));
	double base = throughput(interval);
	printf("load alone: %.2f M updates/s\n\n", base / 1e6);

	printf("1. lazymem snapshots, saved in the background while the load goes on\n");
	printf("   %-5s %9s %10s %9s %9s %12s\n", "snap", "pause", "preserved", "saved", "MB/s",
	       "load during");
	struct lm_snapshot *first = NULL, *last = NULL;
	uint64_t sum_first = 0, sum_last = 0;
	char path[600];
	for (int i = 1; i <= rounds; i++) {
		/* The first and the last are checked later: their contents at the instant are summed. */
		bool keep = i == 1 || i == rounds;
		uint64_t sum = keep ? quiesce() : 0;
		struct lm_stats a = stats(rt);
		struct lm_snapshot *s;
		if ((rc = lm_snapshot_take(r, 0, &s)) < 0)
			die("lm_snapshot_take", rc);
		double pause = (double)stats(rt).snapshot_pause_ns / 1e6;
		if (keep)
			resume();
		snprintf(path, sizeof(path), "%s/snap%d.img", dir, i);
		double ts = now();
		if ((rc = lm_snapshot_save(s, path, 0)) < 0)
			die("lm_snapshot_save", rc);
		uint64_t o0 = atomic_load(&ops);
		if ((rc = lm_snapshot_wait(s)) < 0)
			die("lm_snapshot_wait", rc);
		double secs = now() - ts;
		double during = (double)(atomic_load(&ops) - o0) / secs;
		struct lm_stats b = stats(rt);
		printf("   #%-4d %6.2f ms %10llu %6.0f MiB %9.0f %9.2f M/s\n", i, pause,
		       (unsigned long long)(b.snapshot_preserved - a.snapshot_preserved),
		       (double)(b.snapshot_bytes_written - a.snapshot_bytes_written) / (1 << 20),
		       (double)(b.snapshot_bytes_written - a.snapshot_bytes_written) / 1e6 / secs,
		       during / 1e6);
		if (i == 1) {
			first = s;
			sum_first = sum;
		} else if (i == rounds) {
			last = s;
			sum_last = sum;
		} else {
			lm_snapshot_release(s);
		}
		throughput(interval);
	}

	printf("\n2. the same with fork(), as Redis's BGSAVE does\n");
	printf("   %-5s %9s %22s %9s %12s\n", "save", "pause", "", "MB/s", "load during");
	for (int i = 1; i <= rounds; i++) {
		snprintf(path, sizeof(path), "%s/fork%d.img", dir, i);
		double ts = now();
		pid_t pid = fork();
		if (pid < 0)
			die("fork", -errno);
		if (pid == 0) {
			int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
			size_t off = 0;
			while (fd >= 0 && off < len) {
				ssize_t n = write(fd, (char *)table + off, len - off < (8u << 20) ? len - off : 8u << 20);
				if (n <= 0)
					_exit(1);
				off += (size_t)n;
			}
			_exit(fd >= 0 && fsync(fd) == 0 ? 0 : 1);
		}
		double pause = (now() - ts) * 1e3;
		uint64_t o0 = atomic_load(&ops);
		int status;
		waitpid(pid, &status, 0);
		double secs = now() - ts;
		printf("   #%-4d %6.2f ms %22s %9.0f %9.2f M/s%s\n", i, pause, "", (double)len / 1e6 / secs,
		       (double)(atomic_load(&ops) - o0) / secs / 1e6,
		       WIFEXITED(status) && WEXITSTATUS(status) == 0 ? "" : "  (child failed)");
		throughput(interval);
	}
	atomic_store(&stop, true);
	for (int i = 0; i < WRITERS; i++)
		pthread_join(th[i], NULL);

	printf("\n3. lazy restore of snapshot #%d into a fresh region\n", rounds);
	snprintf(path, sizeof(path), "%s/snap%d.img", dir, rounds);
	struct lm_stats a = stats(rt);
	double tr = now();
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct lm_region *q;
	if (fd < 0 || (rc = lm_region_create_image(rt, fd, 0, &q)) < 0)
		die("lm_region_create_image", fd < 0 ? -errno : rc);
	close(fd);
	double opened = now() - tr;
	struct slot *restored = lm_region_addr(q);
	uint64_t probe = 12345;
	size_t hits = 0;
	for (int i = 0; i < 1000; i++) {
		probe = mix(probe);
		hits += lookup(restored, probe % nkeys + 1)->key != 0;
	}
	double queried = now() - tr;
	struct lm_stats b = stats(rt);
	printf("   opened in %.2f ms; 1000 lookups answered %.2f ms after opening (%zu found),\n"
	       "   reading %llu of its %zu pages (%.1f%%)\n",
	       opened * 1e3, queried * 1e3, hits,
	       (unsigned long long)(b.fills_image - a.fills_image), len / ps,
	       100.0 * (double)(b.fills_image - a.fills_image) / (double)(len / ps));
	uint64_t got = checksum(restored, len);
	printf("   checksum of the whole restored store %016llx, at the snapshot's instant %016llx: %s\n",
	       (unsigned long long)got, (unsigned long long)sum_last,
	       got == sum_last ? "equal" : "DIFFERENT");
	uint64_t viewed = snapshot_checksum(last);
	int bad = got != sum_last || viewed != sum_last;

	printf("\n4. roll the live store back to snapshot #1\n");
	a = stats(rt);
	double tb = now();
	if ((rc = lm_snapshot_rollback(first)) < 0)
		die("lm_snapshot_rollback", rc);
	b = stats(rt);
	uint64_t back = checksum(table, len);
	printf("   %llu changed pages put back in %.1f ms; checksum %016llx, at snapshot #1 %016llx: %s\n",
	       (unsigned long long)(b.snapshot_rollback_pages - a.snapshot_rollback_pages),
	       (now() - tb) * 1e3, (unsigned long long)back, (unsigned long long)sum_first,
	       back == sum_first ? "equal" : "DIFFERENT");
	bad |= back != sum_first;

	lm_snapshot_release(first);
	lm_snapshot_release(last);
	if (then) {
		printf("\n5. what lazymemd sees of this process (pid %d), live:\n", (int)getpid());
		fflush(stdout);
		if (system(then) != 0)
			fprintf(stderr, "lazymem-snapshot-demo: '%s' failed\n", then);
	}
	lm_runtime_close(rt);
	char cmd[700];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "lazymem-snapshot-demo: could not remove %s\n", dir);
	printf("\n%s\n", bad ? "FAILED: a check above differs" : "every check passed");
	return bad;
}
