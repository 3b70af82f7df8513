/* SPDX-License-Identifier: MIT */
/* Unit tests of the page table (radix tree) compiled in from lib/pagetable.c. */
#include "internal.h"

#include "testutil.h"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static const uint64_t TIB_PAGES = (1ull << 40) / 4096;

START_TEST(levels_follow_size)
{
	static const struct {
		uint64_t npages;
		unsigned levels;
	} cases[] = { { 1, 1 }, { 64, 1 }, { 65, 2 }, { 4096, 2 }, { 4097, 3 },
		      { 1ull << 28, 5 }, { (1ull << 30) + 1, 6 } };
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct lm__ptable pt;
		lm__pt_init(&pt, cases[i].npages);
		ck_assert_msg(pt.levels == cases[i].levels, "npages %llu: levels %u, want %u",
			      (unsigned long long)cases[i].npages, pt.levels, cases[i].levels);
		/* The last page is reachable, one past it is not. */
		ck_assert_ptr_nonnull(lm__pt_get(&pt, cases[i].npages - 1, true));
		ck_assert_ptr_null(lm__pt_get(&pt, cases[i].npages, true));
		lm__pt_destroy(&pt);
	}
}
END_TEST

START_TEST(get_creates_lazily_and_stably)
{
	struct lm__ptable pt;
	lm__pt_init(&pt, 1 << 20);
	ck_assert_ptr_null(lm__pt_get(&pt, 12345, false));
	ck_assert_uint_eq(atomic_load(&pt.bytes), 0);
	lm__pte *e = lm__pt_get(&pt, 12345, true);
	ck_assert_ptr_nonnull(e);
	ck_assert_uint_eq(atomic_load(e), LM_PS_MISSING);
	atomic_store(e, LM_PS_CLEAN | (7ull << LM_PTE_AUX_SHIFT));
	ck_assert_ptr_eq(lm__pt_get(&pt, 12345, false), e);
	ck_assert_ptr_eq(lm__pt_get(&pt, 12345, true), e);
	/* A neighbour in the same leaf shares it; far pages do not alias. */
	lm__pte *n = lm__pt_get(&pt, 12344, true);
	ck_assert_ptr_eq(n, e - 1);
	lm__pte *far = lm__pt_get(&pt, 999999, true);
	ck_assert_ptr_nonnull(far);
	ck_assert_ptr_ne(far, e);
	ck_assert_uint_eq(atomic_load(far), 0);
	ck_assert_uint_eq(atomic_load(e), LM_PS_CLEAN | (7ull << LM_PTE_AUX_SHIFT));
	lm__pt_destroy(&pt);
}
END_TEST

/*
 * The reason for the tree: a 1 TiB region with a few thousand scattered
 * pages must cost a few MiB, where a flat table would cost 2 GiB.
 */
START_TEST(sparse_tib_costs_little)
{
	struct lm__ptable pt;
	lm__pt_init(&pt, TIB_PAGES);
	srand(42);
	for (int i = 0; i < 3000; i++) {
		uint64_t pg = (((uint64_t)rand() << 31) ^ (uint64_t)rand()) % TIB_PAGES;
		ck_assert_ptr_nonnull(lm__pt_get(&pt, pg, true));
	}
	size_t bytes = atomic_load(&pt.bytes);
	printf("3000 scattered pages of 1 TiB: %zu bytes of page table\n", bytes);
	ck_assert_msg(bytes <= 4u << 20, "3000 scattered pages of 1 TiB cost %zu bytes", bytes);
	lm__pt_destroy(&pt);
}
END_TEST

static int count_cb(lm__pte *e, uint64_t pgno, void *arg)
{
	uint64_t *acc = arg;
	if (atomic_load(e)) {
		ck_assert_uint_eq(atomic_load(e), pgno + 1);
		acc[0]++;
		ck_assert_msg(pgno >= acc[1], "walk out of order");
		acc[1] = pgno;
	}
	return 0;
}

START_TEST(walk_visits_range_in_order)
{
	struct lm__ptable pt;
	lm__pt_init(&pt, 1 << 24);
	static const uint64_t pages[] = { 0, 1, 63, 64, 4095, 4096, 100000, 262143, 262144,
					  (1 << 24) - 1 };
	for (size_t i = 0; i < sizeof(pages) / sizeof(pages[0]); i++)
		atomic_store(lm__pt_get(&pt, pages[i], true), pages[i] + 1);
	uint64_t acc[2] = { 0, 0 };
	lm__pt_walk(&pt, 0, (1 << 24) - 1, count_cb, acc);
	ck_assert_uint_eq(acc[0], 10);
	acc[0] = acc[1] = 0;
	lm__pt_walk(&pt, 64, 262143, count_cb, acc);
	ck_assert_uint_eq(acc[0], 5);	/* 64, 4095, 4096, 100000, 262143 */
	lm__pt_destroy(&pt);
}
END_TEST

struct race {
	struct lm__ptable *pt;
	lm__pte *seen[256];
};

static void *racer(void *arg)
{
	struct race *r = arg;
	for (int i = 0; i < 256; i++)
		r->seen[i] = lm__pt_get(r->pt, (uint64_t)i * 4099, true);
	return NULL;
}

/* Concurrent creators of the same paths agree on one entry per page. */
START_TEST(concurrent_create_agrees)
{
	for (int round = 0; round < 20; round++) {
		struct lm__ptable pt;
		lm__pt_init(&pt, 1 << 22);
		struct race rs[8];
		pthread_t t[8];
		for (int i = 0; i < 8; i++) {
			rs[i].pt = &pt;
			pthread_create(&t[i], NULL, racer, &rs[i]);
		}
		for (int i = 0; i < 8; i++)
			pthread_join(t[i], NULL);
		for (int i = 0; i < 8; i++)
			for (int j = 0; j < 256; j++) {
				ck_assert_ptr_nonnull(rs[i].seen[j]);
				ck_assert_ptr_eq(rs[i].seen[j], rs[0].seen[j]);
				ck_assert_ptr_eq(rs[i].seen[j],
						 lm__pt_get(&pt, (uint64_t)j * 4099, false));
			}
		lm__pt_destroy(&pt);
	}
}
END_TEST

int main(void)
{
	Suite *s = suite_create("pagetable");
	TCase *tc = tcase_create("radix");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, levels_follow_size);
	tcase_add_test(tc, get_creates_lazily_and_stably);
	tcase_add_test(tc, sparse_tib_costs_little);
	tcase_add_test(tc, walk_visits_range_in_order);
	tcase_add_test(tc, concurrent_create_agrees);
	suite_add_tcase(s, tc);
	return lmt_run(s);
}
