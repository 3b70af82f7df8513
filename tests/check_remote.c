/* SPDX-License-Identifier: MIT */
/* The remote page store: a memory budget whose swap is a real Redis Cluster (tests/remote.sh starts it). */
#include "internal.h"
#include "testutil.h"

#include <check.h>
#include <dirent.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/*
 * tests/remote.sh starts three masters and three replicas, each in a
 * network namespace of its own (scripts/redis-cluster.sh), and runs this
 * program in the hub namespace with LM_TEST_CLUSTER (a seed, host:port)
 * and LM_TEST_CLUSTER_DIR (the servers' directories: their pid files).
 * Like check_budget, it compiles the library in, to look at the store's
 * namespace and slot map; everything else goes through the public API,
 * and the cluster is inspected and damaged through its own commands.
 */

#define PS ((size_t)sysconf(_SC_PAGESIZE))

static const char *seed;
static char seed_host[64];
static int seed_port;


static void url_of(char *buf, size_t cap, const char *opts)
{
	snprintf(buf, cap, "redis://%s%s%s", seed, *opts ? "?" : "", opts);
}

static int open_remote(const char *url, uint64_t budget, int mode, struct lm_runtime **rt)
{
	struct lm_options o = lmt_options(mode);
	o.budget = budget;
	o.readahead_max = 16;
	o.swap_url = url;
	return lm_runtime_open(&o, rt);
}

/* A runtime on the cluster, and a zero region whose first nfill pages are written at version v. */
static unsigned char *open_filled(const char *opts, uint64_t budget, size_t pages, size_t nfill,
				  uint64_t v, struct lm_runtime **rt, struct lm_region **r)
{
	char url[256];
	url_of(url, sizeof(url), opts);
	ck_assert_int_eq(open_remote(url, budget, LM_MODE_THREAD, rt), 0);
	ck_assert_int_eq(lm_region_create_zero(*rt, pages * PS, 0, r), 0);
	unsigned char *base = lm_region_addr(*r);
	for (size_t p = 0; p < nfill; p++)
		lmt_stamp(base, p, v);
	return base;
}

/* ---- the cluster, through its own commands ---------------------------------- */

static redisContext *node(const char *host, int port)
{
	redisContext *c = redisConnectWithTimeout(host, port, (struct timeval){ 2, 0 });
	ck_assert_msg(c && !c->err, "cannot reach %s:%d", host, port);
	return c;
}

/* A node that answers: the seed, or another when the seed was killed. */
static redisContext *any_node(void)
{
	for (int i = 0; i <= 6; i++) {
		char host[32];
		snprintf(host, sizeof(host), "10.251.0.1%d", i);
		redisContext *c = redisConnectWithTimeout(i ? host : seed_host, i ? 7000 : seed_port,
							  (struct timeval){ 1, 0 });
		if (c && !c->err) {
			redisSetTimeout(c, (struct timeval){ 2, 0 });
			return c;
		}
		redisFree(c);
	}
	ck_abort_msg("no node of the cluster answers");
	return NULL;
}

/* The master that serves key, as the cluster itself says (CLUSTER KEYSLOT, CLUSTER SLOTS). */
static redisContext *master_of(const char *key, long long *slotp)
{
	redisContext *c = any_node();
	redisReply *r = redisCommand(c, "CLUSTER KEYSLOT %s", key);
	ck_assert(r && r->type == REDIS_REPLY_INTEGER);
	long long slot = r->integer;
	freeReplyObject(r);
	r = redisCommand(c, "CLUSTER SLOTS");
	ck_assert(r && r->type == REDIS_REPLY_ARRAY);
	char host[64] = "";
	int port = 0;
	for (size_t i = 0; i < r->elements; i++) {
		redisReply *e = r->element[i];
		if (slot >= e->element[0]->integer && slot <= e->element[1]->integer) {
			snprintf(host, sizeof(host), "%s", e->element[2]->element[0]->str);
			port = (int)e->element[2]->element[1]->integer;
		}
	}
	freeReplyObject(r);
	redisFree(c);
	ck_assert(port);
	if (slotp)
		*slotp = slot;
	return node(host, port);
}

/* Runs a command on the master that serves key. */
static redisReply *on_master_of(const char *key, const char *fmt, ...)
{
	redisContext *c = master_of(key, NULL);
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = redisvCommand(c, fmt, ap);
	va_end(ap);
	redisFree(c);
	ck_assert(r);
	return r;
}

/* The masters as CLUSTER NODES tells them: "host:port" of each, their count. */
static int masters(char out[][64], int cap)
{
	redisContext *c = any_node();
	redisReply *r = redisCommand(c, "CLUSTER NODES");
	ck_assert(r && r->type == REDIS_REPLY_STRING);
	int n = 0;
	for (char *line = strtok(r->str, "\n"); line; line = strtok(NULL, "\n")) {
		char id[64], addr[128], flags[128];
		if (sscanf(line, "%63s %127s %127s", id, addr, flags) == 3 && strstr(flags, "master") &&
		    !strstr(flags, "fail") && n < cap) {
			*strchr(addr, '@') = '\0';
			snprintf(out[n++], 64, "%.63s", addr);
		}
	}
	freeReplyObject(r);
	redisFree(c);
	return n;
}

static long long keys_of(const char *ns)
{
	char m[8][64];
	int n = masters(m, 8);
	long long total = 0;
	for (int i = 0; i < n; i++) {
		char *colon = strrchr(m[i], ':');
		*colon = '\0';
		redisContext *c = node(m[i], atoi(colon + 1));
		/* SCAN the master's keys of the namespace. */
		char cursor[32] = "0";
		do {
			redisReply *r = redisCommand(c, "SCAN %s MATCH %s* COUNT 1000", cursor, ns);
			ck_assert(r && r->type == REDIS_REPLY_ARRAY && r->elements == 2);
			snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
			total += (long long)r->element[1]->elements;
			freeReplyObject(r);
		} while (strcmp(cursor, "0"));
		redisFree(c);
	}
	return total;
}

static void config_all(const char *name, const char *value)
{
	char m[8][64];
	int n = masters(m, 8);
	for (int i = 0; i < n; i++) {
		char *colon = strrchr(m[i], ':');
		*colon = '\0';
		redisContext *c = node(m[i], atoi(colon + 1));
		redisReply *r = redisCommand(c, "CONFIG SET %s %s", name, value);
		ck_assert_msg(r && r->type == REDIS_REPLY_STATUS, "CONFIG SET %s %s", name, value);
		freeReplyObject(r);
		redisFree(c);
	}
}

/* Files in dir whose name starts with prefix. */
static int count_files_in(const char *dir, const char *prefix)
{
	DIR *d = opendir(dir);
	int n = 0;
	struct dirent *de;
	while (d && (de = readdir(d)))
		n += !strncmp(de->d_name, prefix, strlen(prefix));
	if (d)
		closedir(d);
	return n;
}

/* ---- the tests ----------------------------------------------------------------- */

/*
 * A working set four times the budget, written, rewritten at random and
 * read back: every page that left went to the cluster and came back
 * exact; the cluster holds the namespace's pages while the runtime runs
 * and nothing after it closed.
 */
START_TEST(working_set_4x_in_cluster)
{
	const size_t budget = 512 * PS, pages = 2048;
	struct lm_runtime *rt;
	struct lm_region *r;
	unsigned char *base = open_filled(_i ? "wait=1" : "", budget, pages, pages, 1, &rt, &r);
	ck_assert_ptr_nonnull(rt->swap.remote);
	char ns[96];
	snprintf(ns, sizeof(ns), "%s", lm__remote_ns(rt->swap.remote));
	uint64_t *ver = calloc(pages, sizeof(*ver));
	for (size_t p = 0; p < pages; p++)
		ver[p] = 1;
	uint64_t seed_rng = 88172645463325252ull;
	for (int i = 0; i < 4000; i++) {
		size_t p = lmt_rng(&seed_rng) % pages;
		if (i & 1)
			ck_assert_msg(lmt_check_stamp(base, p, ver[p]) < 0, "page %zu", p);
		lmt_stamp(base, p, ++ver[p]);
	}
	for (size_t p = 0; p < pages; p++)
		ck_assert_msg(lmt_check_stamp(base, p, ver[p]) < 0, "page %zu v%llu", p,
			      (unsigned long long)ver[p]);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.evicted_dirty, pages);
	ck_assert_uint_gt(st.swap_writes, pages);
	ck_assert_uint_gt(st.swap_reads, 0);
	ck_assert_uint_eq(st.swap_write_errors, 0);
	ck_assert_uint_eq(st.swap_read_errors, 0);
	ck_assert_uint_eq(st.remote_bytes_out, st.swap_writes * PS);
	ck_assert_uint_eq(st.remote_bytes_in, st.swap_reads * PS);
	/*
	 * An eviction batch is one round trip per master, however many pages
	 * it has (random refaults read a page at a time; the random rewrites
	 * keep batches small here, a few pages each).
	 */
	ck_assert_uint_gt(st.remote_requests, 0);
	ck_assert_msg(st.remote_requests < st.swap_reads + st.swap_writes / 4,
		      "%llu round trips for %llu reads and %llu writes (%llu retries)",
		      (unsigned long long)st.remote_requests, (unsigned long long)st.swap_reads,
		      (unsigned long long)st.swap_writes, (unsigned long long)st.remote_retries);
	ck_assert_uint_eq(st.remote_rtt_lt_100us + st.remote_rtt_lt_1ms + st.remote_rtt_lt_10ms +
				  st.remote_rtt_lt_100ms + st.remote_rtt_ge_100ms,
			  st.remote_requests);
	ck_assert_uint_gt(st.remote_rtt_ns_total, 0);
	ck_assert_uint_eq(st.swap_file_bytes, 0);
	ck_assert_int_gt(keys_of(ns), 0);
	lm_region_destroy(r);
	lm_runtime_close(rt);
	ck_assert_int_eq(keys_of(ns), 0);
	free(ver);
}
END_TEST

/* Eight threads writing 3x the budget at once: batches in flight together, nothing lost. */
struct writer {
	unsigned char *base;
	size_t first, n;
	int rounds;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	for (int v = 1; v <= w->rounds; v++) {
		for (size_t p = w->first; p < w->first + w->n; p++) {
			if (v > 1 && lmt_check_stamp(w->base, p, (uint64_t)v - 1) >= 0)
				return (void *)(p + 1);
			lmt_stamp(w->base, p, (uint64_t)v);
		}
	}
	return NULL;
}

/* Eight writers over 4x the budget; the region is left to the caller. */
static void eight_writers(struct lm_runtime *rt, struct lm_region **r, size_t pages, int rounds,
			  void (*meanwhile)(void))
{
	ck_assert_int_eq(lm_region_create_zero(rt, pages * PS, 0, r), 0);
	struct writer w[8];
	pthread_t th[8];
	for (int i = 0; i < 8; i++) {
		w[i] = (struct writer){ lm_region_addr(*r), (size_t)i * pages / 8, pages / 8, rounds };
		ck_assert_int_eq(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
	}
	if (meanwhile)
		meanwhile();
	for (int i = 0; i < 8; i++) {
		void *bad;
		pthread_join(th[i], &bad);
		ck_assert_msg(!bad, "writer %d found page %zu wrong", i, (size_t)bad - 1);
	}
}

START_TEST(eight_writers_4x_budget)
{
	const size_t budget = 256 * PS, pages = 1024;
	char url[256];
	url_of(url, sizeof(url), "");
	struct lm_runtime *rt;
	ck_assert_int_eq(open_remote(url, budget, LM_MODE_THREAD, &rt), 0);
	struct lm_region *r;
	eight_writers(rt, &r, pages, 4, NULL);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.swap_reads, pages);
	ck_assert_uint_eq(st.swap_read_errors + st.swap_write_errors, 0);
	lm_region_destroy(r);
	lm_runtime_close(rt);
}
END_TEST

/* Bad URLs, an unreachable cluster and signal mode are refused with their error, at open. */
START_TEST(refused_urls)
{
	struct lm_runtime *rt = NULL;
	char url[256];
	ck_assert_int_eq(open_remote("redis:/x:1", 64 * PS, LM_MODE_THREAD, &rt), -EINVAL);
	ck_assert_int_eq(open_remote("http://x:1", 64 * PS, LM_MODE_THREAD, &rt), -EINVAL);
	ck_assert_int_eq(open_remote("redis://10.251.0.11", 64 * PS, LM_MODE_THREAD, &rt), -EINVAL);
	ck_assert_int_eq(open_remote("redis://10.251.0.11:0", 64 * PS, LM_MODE_THREAD, &rt),
			 -EINVAL);
	url_of(url, sizeof(url), "wait=x");
	ck_assert_int_eq(open_remote(url, 64 * PS, LM_MODE_THREAD, &rt), -EINVAL);
	url_of(url, sizeof(url), "colour=blue");
	ck_assert_int_eq(open_remote(url, 64 * PS, LM_MODE_THREAD, &rt), -EINVAL);
	url_of(url, sizeof(url), "");
	ck_assert_int_eq(open_remote(url, 64 * PS, LM_MODE_SIGNAL, &rt), -EOPNOTSUPP);
	/* Nobody listens there: refused at once, not after the retry time. */
	uint64_t t0 = lm__now_ns();
	ck_assert_int_eq(open_remote("redis://10.251.0.11:7999?timeout=300", 64 * PS,
				     LM_MODE_THREAD, &rt),
			 -EHOSTUNREACH);
	/* No such machine: after the connect timeout. */
	ck_assert_int_eq(open_remote("redis://10.251.0.99:7000?timeout=300", 64 * PS,
				     LM_MODE_THREAD, &rt),
			 -EHOSTUNREACH);
	ck_assert_uint_lt(lm__now_ns() - t0, 3000000000ull);
	ck_assert_ptr_null(rt);
	/* Without a budget nothing connects: the URL is only checked. */
	ck_assert_int_eq(open_remote("redis://10.251.0.99:7000", 0, LM_MODE_THREAD, &rt), 0);
	ck_assert_int_eq(lm_runtime_set_budget(rt, 64 * PS), -EHOSTUNREACH);
	lm_runtime_close(rt);
}
END_TEST

/* A cluster that may evict keys would lose pages: refused, with its reason in the log. */
static char logged[1024];

static void keep_log(int level, const char *msg, void *arg)
{
	(void)level;
	(void)arg;
	snprintf(logged, sizeof(logged), "%s", msg);
}

START_TEST(refuses_an_evicting_cluster)
{
	config_all("maxmemory-policy", "allkeys-lru");
	char url[256];
	url_of(url, sizeof(url), "");
	struct lm_options o = lmt_options(LM_MODE_THREAD);
	o.budget = 64 * PS;
	o.swap_url = url;
	o.log = keep_log;
	struct lm_runtime *rt = NULL;
	int rc = lm_runtime_open(&o, &rt);
	config_all("maxmemory-policy", "noeviction");
	ck_assert_int_eq(rc, -EINVAL);
	ck_assert_msg(strstr(logged, "maxmemory-policy allkeys-lru"), "logged: %s", logged);
	ck_assert_int_eq(lm_runtime_open(&o, &rt), 0);
	lm_runtime_close(rt);
}
END_TEST

/*
 * A page whose key is gone, or whose value was overwritten, is SIGBUS for
 * that page alone: never wrong data, and the other pages come back.
 */
START_TEST(lost_or_damaged_page_is_sigbus)
{
	const size_t pages = 256;
	lmt_install_sigbus();
	struct lm_runtime *rt;
	struct lm_region *r;
	unsigned char *base = open_filled("", 64 * PS, pages, pages, 5, &rt, &r);
	ck_assert_int_eq(lm_runtime_set_budget(rt, 16 * PS), 0);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.swapped_pages, 200);
	/* Two slots in use: one's key deleted, the other's value garbled. */
	const char *ns = lm__remote_ns(rt->swap.remote);
	uint64_t slots[2];
	unsigned found = 0;
	for (uint64_t s = 0; s < rt->swap.nslots && found < 2; s++)
		if (atomic_load(&rt->swap.bitmap[s / 64]) & (1ull << (s % 64)))
			slots[found++] = s;
	ck_assert_uint_eq(found, 2);
	char key[160];
	lm__cluster_page_key(key, sizeof(key), ns, slots[0]);
	redisReply *x = on_master_of(key, "DEL %s", key);
	ck_assert_int_eq(x->integer, 1);
	freeReplyObject(x);
	lm__cluster_page_key(key, sizeof(key), ns, slots[1]);
	x = on_master_of(key, "SETRANGE %s 100 garbage", key);
	ck_assert_int_eq(x->type, REDIS_REPLY_INTEGER);
	freeReplyObject(x);
	ck_assert_int_eq(lm_runtime_set_budget(rt, 0), 0);
	size_t bus = 0;
	for (size_t p = 0; p < pages; p++) {
		if (lmt_touch((volatile char *)base + p * PS, 0) != 0) {
			bus++;
			continue;
		}
		ck_assert_msg(lmt_check_stamp(base, p, 5) < 0, "page %zu returned wrong data", p);
	}
	st = lmt_stats(rt);
	ck_assert_uint_eq(bus, 2);
	ck_assert_uint_eq(st.swap_read_errors, 2);
	lm_region_destroy(r);
	lm_runtime_close(rt);
}
END_TEST

/*
 * A snapshot saved to the cluster while the region changes, and restored
 * lazily in a second region from its name alone: every page is the
 * snapshot's, zero pages included, read from the cluster on first touch;
 * dropped pages come back from it again.  A second save under the name
 * keeps the first; a third deletes it.
 */
static char *image_url(char *buf, size_t cap, const char *name)
{
	snprintf(buf, cap, "redis://%s/%s-%d", seed, name, (int)getpid());
	return buf;
}

static long long generation_keys(const char *name)
{
	char key[128], val[128];
	snprintf(key, sizeof(key), "lm:img:%s-%d", name, (int)getpid());
	redisReply *r = on_master_of(key, "GET %s", key);
	ck_assert_int_eq(r->type, REDIS_REPLY_STRING);
	snprintf(val, sizeof(val), "%s", r->str);
	freeReplyObject(r);
	char gen[32];
	ck_assert_int_eq(sscanf(val, "lmimg1 %31s", gen), 1);
	char ns[160];
	snprintf(ns, sizeof(ns), "%s:%s", key, gen);
	return keys_of(ns);
}

START_TEST(image_saved_and_restored_lazily)
{
	const size_t pages = 512;
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	struct lm_region *r, *back;
	ck_assert_int_eq(lm_region_create_zero(rt, pages * PS, 0, &r), 0);
	unsigned char *base = lm_region_addr(r);
	/* Every third page stays zero: not stored, read as zeros. */
	for (size_t p = 0; p < pages; p++)
		if (p % 3)
			lmt_stamp(base, p, 1);
	struct lm_snapshot *snap;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &snap), 0);
	char url[256];
	image_url(url, sizeof(url), "img");
	ck_assert_int_eq(lm_snapshot_save(snap, url, 0), 0);
	for (size_t p = 0; p < pages; p += 2)
		lmt_stamp(base, p, 2);
	ck_assert_int_eq(lm_snapshot_wait(snap), 0);
	/* Nothing is left of the local image the save wrote first. */
	char local[64];
	snprintf(local, sizeof(local), "lazymem-upload-%d-", (int)getpid());
	ck_assert_int_eq(count_files_in(lm__swap_dir(rt), local), 0);
	struct lm_stats st0 = lmt_stats(rt);
	ck_assert_int_eq(lm_region_create_image_at(rt, url, 0, &back), 0);
	ck_assert_uint_eq(lm_region_length(back), pages * PS);
	unsigned char *b = lm_region_addr(back);
	for (int pass = 0; pass < 2; pass++) {
		for (size_t p = 0; p < pages; p++) {
			if (p % 3)
				ck_assert_msg(lmt_check_stamp(b, p, 1) < 0, "page %zu pass %d", p, pass);
			else
				for (size_t w = 0; w < PS; w += 512)
					ck_assert_int_eq(b[p * PS + w], 0);
		}
		/* Dropped, the pages come back from the cluster once more. */
		ck_assert_int_eq(lm_region_advise(back, 0, pages * PS, LM_ADV_DONTNEED), 0);
	}
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.restore_faults, 0);
	ck_assert_uint_ge(st.remote_bytes_in - st0.remote_bytes_in, 2 * (pages * 2 / 3) * PS);
	ck_assert_uint_eq(st.image_errors, 0);
	/* Rolled back, a restored region's changed pages come back from the cluster too. */
	struct lm_snapshot *again;
	ck_assert_int_eq(lm_snapshot_take(back, 0, &again), 0);
	for (size_t p = 1; p < pages; p += 3)
		lmt_stamp(b, p, 7);
	ck_assert_int_eq(lm_snapshot_rollback(again), 0);
	for (size_t p = 1; p < pages; p += 3)
		ck_assert_msg(lmt_check_stamp(b, p, 1) < 0, "page %zu after rollback", p);
	lm_snapshot_release(again);
	ck_assert_int_eq(lm_region_destroy(back), 0);
	/* Saved again twice: the first generation is kept after the second, gone after the third. */
	char key[128], first[128];
	snprintf(key, sizeof(key), "lm:img:img-%d", (int)getpid());
	redisReply *x = on_master_of(key, "GET %s", key);
	snprintf(first, sizeof(first), "%s", x->str);
	freeReplyObject(x);
	ck_assert_int_gt(generation_keys("img"), 0);
	ck_assert_int_eq(lm_snapshot_save(snap, url, LM_SAVE_WAIT), 0);
	char gen1[32], ns1[160];
	ck_assert_int_eq(sscanf(first, "lmimg1 %31s", gen1), 1);
	snprintf(ns1, sizeof(ns1), "%s:%s", key, gen1);
	ck_assert_int_gt(keys_of(ns1), 0);
	ck_assert_int_eq(lm_snapshot_save(snap, url, LM_SAVE_WAIT), 0);
	ck_assert_int_eq(keys_of(ns1), 0);
	lm_snapshot_release(snap);
	lm_region_destroy(r);
	lm_runtime_close(rt);
}
END_TEST

/* No image of that name, a name missing from the URL, signal mode, a damaged page. */
START_TEST(image_errors)
{
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(LM_MODE_THREAD);
	struct lm_region *r;
	char url[256];
	ck_assert_int_eq(lm_region_create_image_at(rt, image_url(url, sizeof(url), "none"), 0, &r),
			 -ENOENT);
	snprintf(url, sizeof(url), "redis://%s", seed);
	ck_assert_int_eq(lm_region_create_image_at(rt, url, 0, &r), -EINVAL);
	ck_assert_int_eq(lm_region_create_image_at(rt, "/nonexistent/image", 0, &r), -ENOENT);
	const size_t pages = 128;
	ck_assert_int_eq(lm_region_create_zero(rt, pages * PS, 0, &r), 0);
	unsigned char *base = lm_region_addr(r);
	for (size_t p = 0; p < pages; p++)
		lmt_stamp(base, p, 3);
	struct lm_snapshot *snap;
	ck_assert_int_eq(lm_snapshot_take(r, 0, &snap), 0);
	image_url(url, sizeof(url), "dmg");
	ck_assert_int_eq(lm_snapshot_save(snap, url, LM_SAVE_WAIT), 0);
	/* Data page 5 of the image is file page 6 (the header is page 0). */
	char key[128], val[128], ns[160], pkey[200];
	snprintf(key, sizeof(key), "lm:img:dmg-%d", (int)getpid());
	redisReply *x = on_master_of(key, "GET %s", key);
	snprintf(val, sizeof(val), "%s", x->str);
	freeReplyObject(x);
	char gen[32];
	ck_assert_int_eq(sscanf(val, "lmimg1 %31s", gen), 1);
	snprintf(ns, sizeof(ns), "%s:%s", key, gen);
	lm__cluster_page_key(pkey, sizeof(pkey), ns, 6);
	x = on_master_of(pkey, "SETRANGE %s 8 damage", pkey);
	ck_assert_int_eq(x->type, REDIS_REPLY_INTEGER);
	freeReplyObject(x);
	struct lm_region *back;
	ck_assert_int_eq(lm_region_create_image_at(rt, url, 0, &back), 0);
	unsigned char *b = lm_region_addr(back);
	size_t bus = 0;
	for (size_t p = 0; p < pages; p++) {
		if (lmt_touch((volatile char *)b + p * PS, 0)) {
			bus++;
			continue;
		}
		ck_assert_msg(lmt_check_stamp(b, p, 3) < 0, "page %zu", p);
	}
	ck_assert_uint_eq(bus, 1);
	lm_region_destroy(back);
	/* The index page (file page 1 + 128 stored) garbled: every page it describes is SIGBUS. */
	lm__cluster_page_key(pkey, sizeof(pkey), ns, 1 + pages);
	x = on_master_of(pkey, "SETRANGE %s 0 damage", pkey);
	ck_assert_int_eq(x->type, REDIS_REPLY_INTEGER);
	freeReplyObject(x);
	ck_assert_int_eq(lm_region_create_image_at(rt, url, 0, &back), 0);
	b = lm_region_addr(back);
	bus = 0;
	for (size_t p = 0; p < pages; p++)
		bus += lmt_touch((volatile char *)b + p * PS, 0) != 0;
	ck_assert_uint_eq(bus, pages);
	lm_region_destroy(back);
	lm_snapshot_release(snap);
	lm_region_destroy(r);
	/*
	 * A save to a cluster that does not answer fails with its error, and
	 * leaves no file behind; a save to a path restores by name too.
	 */
	ck_assert_int_eq(lm_region_create_zero(rt, pages * PS, 0, &r), 0);
	base = lm_region_addr(r);
	for (size_t p = 0; p < pages; p++)
		lmt_stamp(base, p, 6);
	ck_assert_int_eq(lm_snapshot_take(r, 0, &snap), 0);
	ck_assert_int_eq(lm_snapshot_save(snap, "redis://10.251.0.99:7000/gone?timeout=200",
					  LM_SAVE_WAIT),
			 -EHOSTUNREACH);
	char local[64], path[512];
	snprintf(local, sizeof(local), "lazymem-upload-%d-", (int)getpid());
	ck_assert_int_eq(count_files_in(lm__swap_dir(rt), local), 0);
	snprintf(path, sizeof(path), "%s/lm-remote-image-%d", lm__swap_dir(rt), (int)getpid());
	ck_assert_int_eq(lm_snapshot_save(snap, path, LM_SAVE_WAIT), 0);
	ck_assert_int_eq(lm_region_create_image_at(rt, path, 0, &back), 0);
	b = lm_region_addr(back);
	for (size_t p = 0; p < pages; p++)
		ck_assert_msg(lmt_check_stamp(b, p, 6) < 0, "page %zu from %s", p, path);
	unlink(path);
	lm_region_destroy(back);
	lm_snapshot_release(snap);
	lm_region_destroy(r);
	lm_runtime_close(rt);
	/* Signal mode: refused, at the restore and at the save. */
	rt = lmt_open(LM_MODE_SIGNAL);
	ck_assert_int_eq(lm_region_create_image_at(rt, url, 0, &back), -EOPNOTSUPP);
	ck_assert_int_eq(lm_region_create_zero(rt, pages * PS, 0, &r), 0);
	ck_assert_int_eq(lm_snapshot_take(r, 0, &snap), 0);
	ck_assert_int_eq(lm_snapshot_save(snap, url, 0), -EOPNOTSUPP);
	lm_snapshot_release(snap);
	lm_region_destroy(r);
	lm_runtime_close(rt);
}
END_TEST

/*
 * A fork() child never uses its parent's cluster: its connections are the
 * parent's, and its faults run in a signal handler.  A page in the cluster
 * is SIGBUS in the child, never wrong; the child closing its runtime
 * deletes none of the parent's keys; the parent finds every page after.
 */
START_TEST(fork_child_keeps_off_the_cluster)
{
	const size_t pages = 256;
	lmt_install_sigbus();
	struct lm_runtime *rt;
	struct lm_region *r;
	unsigned char *base = open_filled("", 64 * PS, pages, pages, 4, &rt, &r);
	ck_assert_uint_gt(lmt_stats(rt).swapped_pages, pages / 2);
	pid_t child = fork();
	ck_assert_int_ge(child, 0);
	if (child == 0) {
		size_t bus = 0, wrong = 0;
		for (size_t p = 0; p < pages; p++) {
			if (lmt_touch((volatile char *)base + p * PS, 0))
				bus++;
			else if (lmt_check_stamp(base, p, 4) >= 0)
				wrong++;
		}
		lm_runtime_close(rt);
		_exit(wrong ? 3 : bus ? 0 : 2);
	}
	int st;
	ck_assert_int_eq(waitpid(child, &st, 0), child);
	ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child: status %#x", st);
	for (size_t p = 0; p < pages; p++)
		ck_assert_msg(lmt_check_stamp(base, p, 4) < 0, "page %zu after the child", p);
	ck_assert_uint_eq(lmt_stats(rt).swap_read_errors, 0);
	lm_region_destroy(r);
	lm_runtime_close(rt);
}
END_TEST

/* A reply's string, or the command's failure. */
static redisReply *must(redisContext *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	redisReply *r = redisvCommand(c, fmt, ap);
	va_end(ap);
	ck_assert_msg(r && r->type != REDIS_REPLY_ERROR, "%s: %s", fmt, r ? r->str : c->errstr);
	return r;
}

/*
 * A slot the store's pages live in moves to another master while they are
 * out, as a resharding moves it: first its keys migrate (the old master
 * answers ASK for them: followed, with ASKING, for those keys alone),
 * then the slot is the new master's (the old one answers MOVED: the map
 * is asked again).  Every page comes back exact through both, and pages
 * evicted after the move go to the new master.
 */
START_TEST(resharding_followed)
{
	const size_t pages = 256;
	struct lm_runtime *rt;
	struct lm_region *r;
	unsigned char *base = open_filled("", 64 * PS, pages, pages, 7, &rt, &r);
	ck_assert_int_eq(lm_runtime_set_budget(rt, 16 * PS), 0);
	/* A slot in use, its master (the source) and another master (the target). */
	uint64_t used = 0;
	while (!(atomic_load(&rt->swap.bitmap[used / 64]) & (1ull << (used % 64))))
		used++;
	char key[224];
	lm__cluster_page_key(key, sizeof(key), lm__remote_ns(rt->swap.remote), used);
	long long slot;
	redisContext *src = master_of(key, &slot);
	char m[8][64];
	ck_assert_int_eq(masters(m, 8), 3);
	int port[3];
	for (int i = 0; i < 3; i++) {
		char *colon = strrchr(m[i], ':');
		*colon = '\0';
		port[i] = atoi(colon + 1);
	}
	int t = !strcmp(m[0], src->tcp.host) && port[0] == src->tcp.port ? 1 : 0;
	redisContext *dst = node(m[t], port[t]);
	redisReply *src_id = must(src, "CLUSTER MYID"), *dst_id = must(dst, "CLUSTER MYID");
	freeReplyObject(must(dst, "CLUSTER SETSLOT %lld IMPORTING %s", slot, src_id->str));
	freeReplyObject(must(src, "CLUSTER SETSLOT %lld MIGRATING %s", slot, dst_id->str));
	redisReply *keys = must(src, "CLUSTER GETKEYSINSLOT %lld 1000", slot);
	ck_assert_uint_gt(keys->elements, 0);
	for (size_t k = 0; k < keys->elements; k++)
		freeReplyObject(must(src, "MIGRATE %s %d %s 0 5000", m[t], port[t],
				     keys->element[k]->str));
	freeReplyObject(keys);
	/* Migrating: the old master answers ASK for every key of the slot. */
	struct lm_stats st0 = lmt_stats(rt);
	for (size_t p = 0; p < pages; p++)
		ck_assert_msg(lmt_check_stamp(base, p, 7) < 0, "page %zu while migrating", p);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.remote_retries, st0.remote_retries);
	/* Moved: every master is told; the store learns it from a MOVED. */
	for (int i = 0; i < 3; i++) {
		redisContext *x = node(m[i], port[i]);
		freeReplyObject(must(x, "CLUSTER SETSLOT %lld NODE %s", slot, dst_id->str));
		redisFree(x);
	}
	for (size_t p = 0; p < pages; p++)
		lmt_stamp(base, p, 8);
	for (size_t p = 0; p < pages; p++)
		ck_assert_msg(lmt_check_stamp(base, p, 8) < 0, "page %zu after the move", p);
	st = lmt_stats(rt);
	ck_assert_uint_gt(st.remote_failovers, st0.remote_failovers);
	ck_assert_uint_eq(st.swap_read_errors + st.swap_write_errors, 0);
	freeReplyObject(src_id);
	freeReplyObject(dst_id);
	redisFree(src);
	redisFree(dst);
	lm_region_destroy(r);
	lm_runtime_close(rt);
}
END_TEST

/* The masters' pids, from their pid files (LM_TEST_CLUSTER_DIR/nI/redis.pid for 10.251.0.1I). */
static pid_t pid_of(const char *addr)
{
	const char *dir = getenv("LM_TEST_CLUSTER_DIR");
	const char *dot = strrchr(addr, '.');
	ck_assert(dir && dot);
	char path[512];
	snprintf(path, sizeof(path), "%s/n%c/redis.pid", dir, dot[2]);
	FILE *f = fopen(path, "r");
	ck_assert_msg(f, "%s", path);
	int pid = 0;
	ck_assert_int_eq(fscanf(f, "%d", &pid), 1);
	fclose(f);
	return (pid_t)pid;
}

/* Every server of the cluster, stopped or continued by its pid file. */
static void signal_all(int sig)
{
	const char *dir = getenv("LM_TEST_CLUSTER_DIR");
	for (int i = 1; i <= 6; i++) {
		char addr[32];
		snprintf(addr, sizeof(addr), "10.251.0.1%d", i);
		ck_assert_int_eq(kill(pid_of(addr), sig), 0);
	}
	(void)dir;
}

/*
 * The whole cluster stops answering (every server stopped): eviction stops
 * and the runtime goes over its budget, says so, and loses nothing; when
 * the cluster answers again, eviction carries on and every page is exact.
 */
START_TEST(unreachable_cluster_stops_eviction)
{
	const size_t budget = 128 * PS, pages = 1024;
	struct lm_runtime *rt;
	struct lm_region *r;
	unsigned char *base = open_filled("timeout=200&retry=600", budget, pages, pages / 2, 1, &rt, &r);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_gt(st.swapped_pages, 0);
	uint64_t swapped = st.swapped_pages;
	signal_all(SIGSTOP);
	/* New pages only: a fault on a swapped page would wait for the cluster. */
	for (size_t p = pages / 2; p < pages; p++)
		lmt_stamp(base, p, 2);
	st = lmt_stats(rt);
	/* The cluster goes on before anything can fail: the tests after need it. */
	signal_all(SIGCONT);
	ck_assert_uint_gt(st.resident_pages, budget / PS + 200);
	ck_assert_uint_gt(st.over_budget, 0);
	ck_assert_uint_le(st.swapped_pages, swapped + 256);
	/* The evictor looks again by itself: the held pages go out, the rest follows. */
	uint64_t t0 = lm__now_ns();
	do {
		nanosleep(&(struct timespec){ 0, 50000000 }, NULL);
		st = lmt_stats(rt);
	} while (st.resident_pages > budget / PS && lm__now_ns() - t0 < 15000000000ull);
	ck_assert_uint_le(st.resident_pages, budget / PS);
	for (size_t p = 0; p < pages; p++)
		ck_assert_msg(lmt_check_stamp(base, p, p < pages / 2 ? 1 : 2) < 0, "page %zu", p);
	st = lmt_stats(rt);
	ck_assert_uint_eq(st.swap_read_errors, 0);
	ck_assert_uint_gt(st.remote_errors + st.swap_write_errors, 0);
	lm_region_destroy(r);
	lm_runtime_close(rt);
}
END_TEST

/* Kills the first master a moment after the writers started. */
static void kill_a_master(void)
{
	nanosleep(&(struct timespec){ 0, 300000000 }, NULL);
	char m[8][64];
	ck_assert_int_eq(masters(m, 8), 3);
	ck_assert_int_eq(kill(pid_of(m[0]), SIGKILL), 0);
}

/*
 * A master killed while eight writers go over 4x the budget: its replica
 * takes over (the cluster's node timeout, two seconds here), the runtime
 * follows the new map, and every writer finds every page as it left it,
 * WAIT having put each on a replica before it left memory.  Runs last:
 * the cluster is down a master after.
 */
START_TEST(eight_writers_through_a_failover)
{
	const size_t budget = 256 * PS, pages = 1024;
	char url[256];
	url_of(url, sizeof(url), "wait=1&retry=20000");
	struct lm_runtime *rt;
	ck_assert_int_eq(open_remote(url, budget, LM_MODE_THREAD, &rt), 0);
	struct lm_region *r;
	eight_writers(rt, &r, pages, 8, kill_a_master);
	/* And once more, all of it, after. */
	unsigned char *base = lm_region_addr(r);
	for (size_t p = 0; p < pages; p++)
		ck_assert_msg(lmt_check_stamp(base, p, 8) < 0, "page %zu", p);
	struct lm_stats st = lmt_stats(rt);
	/*
	 * Not one page lost.  Writes may fail: the shard that lost its master
	 * has no replica left, so WAIT 1 cannot be met there, and its pages
	 * stay in memory (held) rather than leave with a single copy.
	 */
	ck_assert_uint_eq(st.swap_read_errors, 0);
	ck_assert_uint_gt(st.remote_failovers, 0);
	ck_assert_uint_gt(st.remote_retries, 0);
	char m[8][64];
	ck_assert_int_eq(masters(m, 8), 3);
	lm_region_destroy(r);
	lm_runtime_close(rt);
}
END_TEST

int main(void)
{
	lmt_require_uffd();
	seed = getenv("LM_TEST_CLUSTER");
	if (!seed || !getenv("LM_TEST_CLUSTER_DIR")) {
		printf("SKIP: no cluster (run through tests/remote.sh, which starts one)\n");
		return 77;
	}
	const char *colon = strrchr(seed, ':');
	if (!colon || (size_t)(colon - seed) >= sizeof(seed_host)) {
		printf("LM_TEST_CLUSTER=%s is not host:port\n", seed);
		return 1;
	}
	memcpy(seed_host, seed, (size_t)(colon - seed));
	seed_port = atoi(colon + 1);
	Suite *s = suite_create("remote");
	TCase *tc = tcase_create("swap");
	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, working_set_4x_in_cluster, 0, 2);
	tcase_add_test(tc, eight_writers_4x_budget);
	tcase_add_test(tc, refused_urls);
	tcase_add_test(tc, refuses_an_evicting_cluster);
	tcase_add_test(tc, lost_or_damaged_page_is_sigbus);
	tcase_add_test(tc, unreachable_cluster_stops_eviction);
	tcase_add_test(tc, fork_child_keeps_off_the_cluster);
	tcase_add_test(tc, resharding_followed);
	suite_add_tcase(s, tc);
	TCase *im = tcase_create("image");
	tcase_set_timeout(im, 120);
	tcase_add_test(im, image_saved_and_restored_lazily);
	tcase_add_test(im, image_errors);
	suite_add_tcase(s, im);
	TCase *fo = tcase_create("failover");
	tcase_set_timeout(fo, 120);
	tcase_add_test(fo, eight_writers_through_a_failover);
	suite_add_tcase(s, fo);
	return lmt_run(s);
}
