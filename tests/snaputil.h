/* SPDX-License-Identifier: MIT */
/* Snapshot test helpers: versioned pages under 8 concurrent writers, bracketed takes, image comparison. */
#ifndef LM_SNAPUTIL_H
#define LM_SNAPUTIL_H

#include "testutil.h"

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#ifndef PS
#define PS ((size_t)sysconf(_SC_PAGESIZE))
#endif
#define NW 8

/* Files in the test directory whose name starts with prefix. */
static inline int count_files(const char *prefix)
{
	DIR *d = opendir(lmt_dir);
	int n = 0;
	struct dirent *de;
	while (d && (de = readdir(d)))
		n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
	if (d)
		closedir(d);
	return n;
}

static inline void sleep_ms(long ms)
{
	nanosleep(&(struct timespec){ ms / 1000, (ms % 1000) * 1000000 }, NULL);
}

/*
 * Versioned pages.  Word w of page p at version v >= 1 is word(p, v, w),
 * from which v can be read back; version 0 is the page's initial
 * contents (init, one page per page of the region).
 */
#define K1 0x9e3779b97f4a7c15ull
#define K2 0x2545f4914f6cdd1dull

static inline uint64_t word(size_t p, uint64_t v, size_t w)
{
	return (p * K1) ^ (v << 24) ^ (w * K2);
}

struct load {
	unsigned char *base;
	const unsigned char *init;	/* initial contents; NULL: zeros */
	size_t npages;
	_Atomic uint64_t *started, *done;
	_Atomic bool stop;
	_Atomic uint64_t writes;
};

struct writer {
	struct load *l;
	unsigned id;
};

static inline void *writer_main(void *arg)
{
	struct writer *wr = arg;
	struct load *l = wr->l;
	uint64_t seed = 0x1234567ull * (wr->id + 1);
	size_t per = l->npages / NW;
	while (!atomic_load_explicit(&l->stop, memory_order_relaxed)) {
		size_t p = wr->id * per + lmt_rng(&seed) % per;
		uint64_t v = atomic_load_explicit(&l->started[p], memory_order_relaxed) + 1;
		atomic_store_explicit(&l->started[p], v, memory_order_seq_cst);
		volatile uint64_t *q = (volatile uint64_t *)(l->base + p * PS);
		for (size_t w = 0; w < PS / 8; w++)
			q[w] = word(p, v, w);
		atomic_store_explicit(&l->done[p], v, memory_order_seq_cst);
		atomic_fetch_add_explicit(&l->writes, 1, memory_order_relaxed);
	}
	return NULL;
}

static inline void load_start(struct load *l, pthread_t *th, struct writer *wr)
{
	l->started = calloc(l->npages, sizeof(*l->started));
	l->done = calloc(l->npages, sizeof(*l->done));
	atomic_store(&l->stop, false);
	for (unsigned i = 0; i < NW; i++) {
		wr[i] = (struct writer){ l, i };
		ck_assert_int_eq(pthread_create(&th[i], NULL, writer_main, &wr[i]), 0);
	}
}

static inline void load_stop(struct load *l, pthread_t *th)
{
	atomic_store(&l->stop, true);
	for (unsigned i = 0; i < NW; i++)
		pthread_join(th[i], NULL);
}

/*
 * Takes a snapshot in the middle of the load, bracketing each page's
 * version: every write completed before the take began is in it
 * (lo), none begun after it returned is (hi).
 */
static inline struct lm_snapshot *take_bracketed(struct lm_region *r, struct load *l, uint64_t *lo,
					  uint64_t *hi)
{
	for (size_t p = 0; p < l->npages; p++)
		lo[p] = atomic_load_explicit(&l->done[p], memory_order_seq_cst);
	struct lm_snapshot *s = NULL;
	int rc = lm_snapshot_take(r, 0, &s);
	ck_assert_msg(rc == 0, "lm_snapshot_take: %s", lm_strerror(rc));
	for (size_t p = 0; p < l->npages; p++)
		hi[p] = atomic_load_explicit(&l->started[p], memory_order_seq_cst);
	return s;
}

/* Checks that page p of img holds, word by word, a version within [lo, hi]. */
static inline void check_bracket(const struct load *l, const unsigned char *img, size_t p, uint64_t lo,
			  uint64_t hi)
{
	const uint64_t *q = (const uint64_t *)(img + p * PS);
	for (size_t w = 0; w < PS / 8; w++) {
		uint64_t init;
		if (l->init)
			memcpy(&init, l->init + p * PS + w * 8, 8);
		else
			init = 0;
		if (lo == 0 && q[w] == init)
			continue;
		uint64_t x = q[w] ^ (p * K1) ^ (w * K2);
		uint64_t v = x >> 24;
		ck_assert_msg((x & 0xffffff) == 0 && v >= (lo ? lo : 1) && v <= hi,
			      "page %zu word %zu: %#llx is no version in [%llu, %llu]", p, w,
			      (unsigned long long)q[w], (unsigned long long)lo,
			      (unsigned long long)hi);
	}
}

static inline unsigned char *read_all(struct lm_snapshot *s)
{
	size_t len = lm_snapshot_length(s);
	unsigned char *buf = malloc(len);
	ck_assert_ptr_nonnull(buf);
	int rc = lm_snapshot_read(s, 0, buf, len);
	ck_assert_msg(rc == 0, "lm_snapshot_read: %s", lm_strerror(rc));
	return buf;
}

/* Restores path into a fresh region of rt and checks it equals want byte for byte. */
static inline void check_image_equals(struct lm_runtime *rt, const char *path, const unsigned char *want,
			       size_t len)
{
	int fd = open(path, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	struct lm_region *r;
	int rc = lm_region_create_image(rt, fd, 0, &r);
	close(fd);
	ck_assert_msg(rc == 0, "lm_region_create_image: %s", lm_strerror(rc));
	ck_assert_uint_eq(lm_region_length(r), len);
	const unsigned char *p = lm_region_addr(r);
	for (size_t off = 0; off < len; off += PS)
		ck_assert_msg(memcmp(p + off, want + off, PS) == 0, "image page %zu differs",
			      off / PS);
	ck_assert_int_eq(lm_region_destroy(r), 0);
}

/*
 * The heart of it (docs/DESIGN.md, invariant 6): 8 writers flat out before,
 * during and after the take and through the save; the snapshot's reads
 * and its image hold every page as it was when the take returned.
 */
static inline void consistency(struct lm_runtime *rt, struct lm_region *r, const unsigned char *init,
			size_t npages, bool flush)
{
	struct load l = { .base = lm_region_addr(r), .init = init, .npages = npages };
	pthread_t th[NW];
	struct writer wr[NW];
	uint64_t *lo = calloc(npages, 8), *hi = calloc(npages, 8);
	load_start(&l, th, wr);
	sleep_ms(100);
	struct lm_snapshot *s = take_bracketed(r, &l, lo, hi);
	uint64_t at_take = atomic_load(&l.writes);
	ck_assert_int_eq(lm_snapshot_save(s, lmt_path("img"), 0), 0);
	for (int i = 0; i < 10; i++) {
		if (flush)
			ck_assert_int_eq(lm_region_flush(r, 0, 0), 0);
		sleep_ms(20);
	}
	int rc = lm_snapshot_wait(s);
	ck_assert_msg(rc == 0, "lm_snapshot_wait: %s", lm_strerror(rc));
	/* And after the save: the region must take writes once it is done. */
	uint64_t at_saved = atomic_load(&l.writes);
	bool went_on = LMT_WAIT_UNTIL(atomic_load(&l.writes) > at_saved + 1000, 5);
	load_stop(&l, th);
	ck_assert_msg(went_on, "the load did not go on after the save (%llu writes since the take, "
		      "%llu since the save)", (unsigned long long)(atomic_load(&l.writes) - at_take),
		      (unsigned long long)(atomic_load(&l.writes) - at_saved));
	unsigned char *snap = read_all(s);
	for (size_t p = 0; p < npages; p++)
		check_bracket(&l, snap, p, lo[p], hi[p]);
	check_image_equals(rt, lmt_path("img"), snap, npages * PS);
	struct lm_stats st = lmt_stats(rt);
	ck_assert_uint_ge(st.snapshot_preserved, 1);
	ck_assert_uint_eq(st.snapshots_taken, 1);
	ck_assert_uint_eq(st.snapshots_live, 1);
	ck_assert_uint_eq(st.snapshot_errors, 0);
	ck_assert_uint_gt(st.snapshot_pause_ns, 0);
	ck_assert_int_eq(lm_snapshot_release(s), 0);
	ck_assert_uint_eq(lmt_stats(rt).snapshots_live, 0);
	/* The region itself kept every write: each page holds its last version whole. */
	for (size_t p = 0; p < npages; p++)
		check_bracket(&l, l.base, p, atomic_load(&l.done[p]), atomic_load(&l.done[p]));
	free(snap);
	free(lo);
	free(hi);
	free(l.started);
	free(l.done);
}

/* consistency() on a new zero region of npages in rt; closes rt after. */
static inline void consistency_zero(struct lm_runtime *rt, size_t npages)
{
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, npages * PS, 0, &r), 0);
	consistency(rt, r, NULL, npages, false);
	ck_assert_int_eq(lm_region_destroy(r), 0);
	ck_assert_int_eq(lm_runtime_close(rt), 0);
}

#endif /* LM_SNAPUTIL_H */
