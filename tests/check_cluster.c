/* SPDX-License-Identifier: MIT */
/* Unit tests of Redis Cluster routing compiled in from lib/cluster.c: slots, hash tags, page keys, redirections, the slot map. */
#include "internal.h"

#include "testutil.h"
#include <errno.h>
#include <stdio.h>
#include <string.h>

static unsigned slot_of(const char *key)
{
	return lm__cluster_slot(key, strlen(key));
}

/*
 * The specification's check value (CRC16/XMODEM of "123456789" is
 * 0x31C3) and slots a Redis 7.0 node in cluster mode gave for these keys
 * (CLUSTER KEYSLOT), hash tags' corner cases included.
 */
START_TEST(slots_match_redis)
{
	ck_assert_uint_eq(lm__cluster_crc16("123456789", 9), 0x31c3);
	static const struct {
		const char *key;
		unsigned slot;
	} cases[] = {
		{ "foo", 12182 }, { "bar", 5061 }, { "123456789", 12739 },
		{ "{user1000}.following", 3443 },
		{ "foo{}{bar}", 8363 },		/* an empty tag: the whole key */
		{ "foo{{bar}}zap", 4015 },	/* the tag is "{bar" */
		{ "foo{bar}{zap}", 5061 },	/* the first tag only: "bar" */
		{ "{bar", 4015 },		/* no closing brace: the whole key */
		{ "lm:{a:0}:5", 12374 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		ck_assert_msg(slot_of(cases[i].key) == cases[i].slot, "%s: slot %u, want %u",
			      cases[i].key, slot_of(cases[i].key), cases[i].slot);
	ck_assert_uint_eq(slot_of("{user1000}.followers"), slot_of("{user1000}.following"));
	/* Binary keys: a zero byte is part of the key. */
	ck_assert_uint_ne(lm__cluster_slot("a\0b", 3), lm__cluster_slot("a", 1));
}
END_TEST

/*
 * A group of LM__CLUSTER_GROUP pages shares one slot (one node, one
 * pipelined round trip), different groups and namespaces spread over
 * the slots, and every page has a key of its own.
 */
START_TEST(page_keys_group_and_spread)
{
	char a[64], b[64];
	ck_assert_int_eq(lm__cluster_page_key(a, sizeof(a), "lm:7", 0), (int)strlen("lm:7{lm:7:0}0"));
	ck_assert_str_eq(a, "lm:7{lm:7:0}0");
	ck_assert_int_gt(lm__cluster_page_key(a, sizeof(a), "lm:7", 0x12345), 0);
	ck_assert_str_eq(a, "lm:7{lm:7:48d}12345");
	for (uint64_t g = 0; g < 50; g++) {
		ck_assert_int_gt(lm__cluster_page_key(a, sizeof(a), "ns", g * LM__CLUSTER_GROUP), 0);
		unsigned s = slot_of(a);
		for (uint64_t i = 1; i < LM__CLUSTER_GROUP; i++) {
			ck_assert_int_gt(lm__cluster_page_key(b, sizeof(b), "ns", g * LM__CLUSTER_GROUP + i),
					 0);
			ck_assert_uint_eq(slot_of(b), s);
			ck_assert_str_ne(a, b);
		}
	}
	/* 3000 groups over three equal masters: none gets far from a third. */
	unsigned per[3] = { 0 };
	for (uint64_t g = 0; g < 3000; g++) {
		ck_assert_int_gt(lm__cluster_page_key(a, sizeof(a), "swap:1", g * LM__CLUSTER_GROUP), 0);
		per[slot_of(a) * 3 / LM__CLUSTER_SLOTS]++;
	}
	for (int i = 0; i < 3; i++)
		ck_assert_msg(per[i] > 850 && per[i] < 1150, "master %d got %u of 3000 groups", i,
			      per[i]);
	/* Too small a buffer is an error, never a truncated key. */
	ck_assert_int_eq(lm__cluster_page_key(a, 8, "lm:7", 0), -ENAMETOOLONG);
	ck_assert_int_eq(lm__cluster_page_key(a, strlen("lm:7{lm:7:0}0"), "lm:7", 0), -ENAMETOOLONG);
	ck_assert_int_gt(lm__cluster_page_key(a, strlen("lm:7{lm:7:0}0") + 1, "lm:7", 0), 0);
	ck_assert_int_gt(lm__cluster_page_key(a, sizeof(a), "x", UINT64_MAX), 0);
	ck_assert_str_eq(a, "x{x:3ffffffffffffff}ffffffffffffffff");
}
END_TEST

static int redirect(const char *s, struct lm__redirect *r)
{
	return lm__cluster_redirect(s, strlen(s), r);
}

START_TEST(redirections_parse)
{
	struct lm__redirect r;
	ck_assert_int_eq(redirect("MOVED 3999 127.0.0.1:6381", &r), 0);
	ck_assert_int_eq(r.kind, LM__REDIRECT_MOVED);
	ck_assert_uint_eq(r.slot, 3999);
	ck_assert_str_eq(r.host, "127.0.0.1");
	ck_assert_int_eq(r.port, 6381);
	ck_assert_int_eq(redirect("ASK 0 10.0.0.5:7000", &r), 0);
	ck_assert_int_eq(r.kind, LM__REDIRECT_ASK);
	ck_assert_uint_eq(r.slot, 0);
	ck_assert_str_eq(r.host, "10.0.0.5");
	ck_assert_int_eq(r.port, 7000);
	ck_assert_int_eq(redirect("MOVED 16383 ::1:7002", &r), 0);
	ck_assert_str_eq(r.host, "::1");
	ck_assert_int_eq(r.port, 7002);
	/* Not redirections, or malformed ones: refused, never half-parsed. */
	static const char *const bad[] = {
		"ERR unknown command", "MOVED", "MOVED ", "MOVED 3999", "MOVED 3999 ",
		"MOVED 16384 127.0.0.1:6381", "MOVED -1 127.0.0.1:6381", "MOVED x 127.0.0.1:6381",
		"MOVED 12 127.0.0.1", "MOVED 12 127.0.0.1:", "MOVED 12 :6379",
		"MOVED 12 127.0.0.1:65536", "MOVED 12 127.0.0.1:0", "MOVED 12 127.0.0.1:63a",
		"ASKING 12 127.0.0.1:6379", "moved 12 127.0.0.1:6379", "TRYAGAIN",
		"MOVED 12 0123456789012345678901234567890123456789012345678901234567890123456789:1",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(redirect(bad[i], &r) == -EINVAL, "accepted: %s", bad[i]);
	/* The length is honoured: what follows is not read. */
	ck_assert_int_eq(lm__cluster_redirect("MOVED 1 h:12345", strlen("MOVED 1 h:12"), &r), 0);
	ck_assert_int_eq(r.port, 12);
}
END_TEST

START_TEST(slot_map_routes_and_reports_holes)
{
	static struct lm__slotmap m;
	lm__slotmap_init(&m);
	ck_assert_uint_eq(lm__slotmap_uncovered(&m), LM__CLUSTER_SLOTS);
	ck_assert_int_eq(lm__slotmap_node(&m, 0), -ENOENT);
	ck_assert_int_eq(lm__slotmap_assign(&m, 0, 5460, "10.0.0.1", 7000), 0);
	ck_assert_int_eq(lm__slotmap_assign(&m, 5461, 10922, "10.0.0.2", 7000), 1);
	ck_assert_uint_eq(lm__slotmap_uncovered(&m), LM__CLUSTER_SLOTS - 10923);
	ck_assert_int_eq(lm__slotmap_assign(&m, 10923, 16383, "10.0.0.3", 7000), 2);
	ck_assert_uint_eq(lm__slotmap_uncovered(&m), 0);
	ck_assert_int_eq(lm__slotmap_node(&m, slot_of("foo")), 2);
	ck_assert_int_eq(lm__slotmap_node(&m, slot_of("bar")), 0);
	/* A MOVED slot goes to the node named, known or new; the others stay. */
	struct lm__redirect r;
	ck_assert_int_eq(redirect("MOVED 12182 10.0.0.1:7000", &r), 0);
	ck_assert_int_eq(lm__slotmap_assign(&m, r.slot, r.slot, r.host, r.port), 0);
	ck_assert_int_eq(lm__slotmap_node(&m, 12182), 0);
	ck_assert_int_eq(lm__slotmap_node(&m, 12183), 2);
	ck_assert_int_eq(lm__slotmap_assign(&m, 12182, 12182, "10.0.0.4", 7001), 3);
	ck_assert_uint_eq(m.nnodes, 4);
	ck_assert_str_eq(m.nodes[3].host, "10.0.0.4");
	/* Bad input is refused and changes nothing. */
	ck_assert_int_eq(lm__slotmap_assign(&m, 5, 4, "10.0.0.1", 7000), -EINVAL);
	ck_assert_int_eq(lm__slotmap_assign(&m, 0, LM__CLUSTER_SLOTS, "10.0.0.1", 7000), -EINVAL);
	ck_assert_int_eq(lm__slotmap_assign(&m, 0, 1, "", 7000), -EINVAL);
	ck_assert_int_eq(lm__slotmap_assign(&m, 0, 1, "10.0.0.1", 0), -EINVAL);
	ck_assert_int_eq(lm__slotmap_node(&m, LM__CLUSTER_SLOTS), -EINVAL);
	ck_assert_int_eq(lm__slotmap_node(&m, 0), 0);
	/* A full map says so. */
	char host[32];
	for (int i = (int)m.nnodes; i < LM__CLUSTER_NODES; i++) {
		snprintf(host, sizeof(host), "10.1.0.%d", i);
		ck_assert_int_eq(lm__slotmap_node_add(&m, host, 7000), i);
	}
	ck_assert_int_eq(lm__slotmap_node_add(&m, "10.2.0.1", 7000), -ENOSPC);
	ck_assert_int_eq(lm__slotmap_node_add(&m, "10.0.0.2", 7000), 1);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("cluster");
	TCase *tc = tcase_create("routing");
	tcase_add_test(tc, slots_match_redis);
	tcase_add_test(tc, page_keys_group_and_spread);
	tcase_add_test(tc, redirections_parse);
	tcase_add_test(tc, slot_map_routes_and_reports_holes);
	suite_add_tcase(s, tc);
	return lmt_run(s);
}
