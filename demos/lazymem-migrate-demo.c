/* SPDX-License-Identifier: MIT */
/* lazymem-migrate-demo: a store snapshotted under load on machine A, saved to a Redis Cluster, restored lazily on machine B. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEMO_NAME "lazymem-migrate-demo"
#include "demo.h"

/*
 * Migration the way CRIU's page server and post-copy do it, on lazy
 * memory: machine A's store (an open-addressing hash table of 64-byte
 * records in one lazymem region) keeps taking writes while a snapshot of
 * it is saved to the cluster; machine B opens the image by name and
 * answers lookups at once, each pulling the pages it needs.  Both print
 * the store's checksum (A of the snapshot, B of what it restored), which
 * scripts/demo.sh --migrate compares.
 *
 *   lazymem-migrate-demo save URL [MIB]       (machine A)
 *   lazymem-migrate-demo restore URL [LOOKUPS] (machine B)
 */

#define WRITERS 2

/* A record checks itself: sum covers key, version and payload. */
struct rec {
	uint64_t key, version, payload[5], sum;
};

static struct rec *table;
static size_t nslots, nkeys;
static _Atomic bool stop;
static _Atomic uint64_t ops;
/* Writers hold it shared per batch; the snapshot takes it alone: a take never sees half a record. */
static pthread_rwlock_t quiesce = PTHREAD_RWLOCK_INITIALIZER;

static uint64_t rec_sum(const struct rec *r)
{
	uint64_t h = mix(r->key) ^ mix(r->version + 1);
	for (int i = 0; i < 5; i++)
		h = mix(h ^ r->payload[i]);
	return h;
}

static void rec_fill(struct rec *r, uint64_t key, uint64_t version)
{
	r->key = key;
	r->version = version;
	for (int i = 0; i < 5; i++)
		r->payload[i] = mix(key * 7 + version * 13 + (uint64_t)i);
	r->sum = rec_sum(r);
}

static struct rec *find(uint64_t key)
{
	for (size_t i = mix(key) % nslots;; i = (i + 1) % nslots)
		if (table[i].key == key || !table[i].key)
			return &table[i];
}

static void *writer(void *arg)
{
	uint64_t id = (uint64_t)(uintptr_t)arg, seed = mix(id + 1);
	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		pthread_rwlock_rdlock(&quiesce);
		for (int k = 0; k < 64; k++) {
			seed = mix(seed);
			/* Each writer its own keys: no two update a record at once. */
			uint64_t key = 1 + (seed % (nkeys / WRITERS)) * WRITERS + id;
			struct rec *r = find(key);
			rec_fill(r, key, r->version + 1);
		}
		pthread_rwlock_unlock(&quiesce);
		atomic_fetch_add_explicit(&ops, 64, memory_order_relaxed);
	}
	return NULL;
}

static int cmd_save(const char *url, size_t mib)
{
	struct lm_runtime *rt;
	struct lm_region *r;
	int rc;
	if ((rc = lm_runtime_open(NULL, &rt)) < 0)
		die("lm_runtime_open", rc);
	size_t len = mib << 20;
	if ((rc = lm_region_create_zero(rt, len, 0, &r)) < 0)
		die("lm_region_create_zero", rc);
	table = lm_region_addr(r);
	nslots = len / sizeof(struct rec);
	nkeys = nslots / 2;
	for (uint64_t k = 1; k <= nkeys; k++)
		rec_fill(find(k), k, 0);
	pthread_t th[WRITERS];
	for (uintptr_t i = 0; i < WRITERS; i++)
		pthread_create(&th[i], NULL, writer, (void *)i);
	/* Under load for a while, then the snapshot, then the save while the load goes on. */
	struct timespec warm = { 0, 300000000 };
	nanosleep(&warm, NULL);
	uint64_t o0 = atomic_load(&ops);
	double t0 = now();
	pthread_rwlock_wrlock(&quiesce);
	struct lm_snapshot *snap;
	double tp = now();
	rc = lm_snapshot_take(r, 0, &snap);
	double pause = now() - tp;
	pthread_rwlock_unlock(&quiesce);
	if (rc < 0)
		die("lm_snapshot_take", rc);
	if ((rc = lm_snapshot_save(snap, url, LM_SAVE_WAIT)) < 0)
		die("lm_snapshot_save", rc);
	double t1 = now();
	uint64_t o1 = atomic_load(&ops);
	atomic_store(&stop, true);
	for (int i = 0; i < WRITERS; i++)
		pthread_join(th[i], NULL);
	/* The snapshot's checksum: what machine B must find. */
	uint64_t h = checksum(NULL, 0);
	static unsigned char buf[1 << 20];
	for (size_t off = 0; off < len; off += sizeof(buf)) {
		if ((rc = lm_snapshot_read(snap, off, buf, sizeof(buf))) < 0)
			die("lm_snapshot_read", rc);
		h = fold(h, buf, sizeof(buf));
	}
	printf("machine A: %zu MiB store, %zu keys; snapshot taken in %.1f us under %d writers\n",
	       mib, nkeys, pause * 1e6, WRITERS);
	printf("machine A: saved to %s in %.0f ms while the writers did %.1f M updates/s\n", url,
	       (t1 - t0) * 1e3, (double)(o1 - o0) / (t1 - t0) / 1e6);
	printf("checksum %016llx\n", (unsigned long long)h);
	lm_snapshot_release(snap);
	lm_region_destroy(r);
	lm_runtime_close(rt);
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static int cmd_restore(const char *url, size_t lookups)
{
	struct lm_runtime *rt;
	struct lm_region *r;
	int rc;
	if ((rc = lm_runtime_open(NULL, &rt)) < 0)
		die("lm_runtime_open", rc);
	double t0 = now();
	if ((rc = lm_region_create_image_at(rt, url, 0, &r)) < 0)
		die("lm_region_create_image_at", rc);
	double opened = now() - t0;
	table = lm_region_addr(r);
	size_t len = lm_region_length(r);
	nslots = len / sizeof(struct rec);
	nkeys = nslots / 2;
	/* Lookups at once, each touching what it needs: the rest stays in the cluster. */
	double *lat = malloc(lookups * sizeof(*lat));
	uint64_t seed = 12345, bad = 0;
	double tl = now(), first = 0;
	for (size_t i = 0; i < lookups; i++) {
		seed = mix(seed);
		uint64_t key = 1 + seed % nkeys;
		double a = now();
		struct rec *x = find(key);
		bad += x->key != key || x->sum != rec_sum(x);
		lat[i] = now() - a;
		if (!i)
			first = now() - t0;
	}
	double lookups_s = now() - tl;
	struct lm_stats st = { .size = sizeof(st) };
	lm_stats_get(rt, &st);
	qsort(lat, lookups, sizeof(*lat), cmp_double);
	printf("machine B: image opened in %.1f ms; first lookup answered %.1f ms after the open began\n",
	       opened * 1e3, first * 1e3);
	printf("machine B: %zu lookups in %.0f ms (median %.0f us, p99 %.0f us), %llu bad; "
	       "%.1f of %zu MiB pulled from the cluster\n",
	       lookups, lookups_s * 1e3, lat[lookups / 2] * 1e6, lat[lookups * 99 / 100] * 1e6,
	       (unsigned long long)bad, (double)st.remote_bytes_in / (1 << 20), len >> 20);
	/* Everything, to compare with machine A's snapshot. */
	uint64_t h = checksum(NULL, 0);
	for (size_t off = 0; off < len; off += 1 << 20)
		h = fold(h, (const unsigned char *)table + off, 1 << 20);
	lm_stats_get(rt, &st);
	printf("machine B: whole store read: %.1f MiB from the cluster in %llu round trips\n",
	       (double)st.remote_bytes_in / (1 << 20), (unsigned long long)st.remote_requests);
	printf("checksum %016llx\n", (unsigned long long)h);
	free(lat);
	lm_region_destroy(r);
	lm_runtime_close(rt);
	return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && !strcmp(argv[1], "save"))
		return cmd_save(argv[2], argc > 3 ? strtoul(argv[3], NULL, 0) : 64);
	if (argc >= 3 && !strcmp(argv[1], "restore"))
		return cmd_restore(argv[2], argc > 3 ? strtoul(argv[3], NULL, 0) : 2000);
	fprintf(stderr, "usage: lazymem-migrate-demo save URL [MIB] | restore URL [LOOKUPS]\n");
	return 2;
}
