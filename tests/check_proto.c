/* SPDX-License-Identifier: MIT */
/* lazymemd's request parser and Prometheus formatter, without a socket. */
#include "../daemon/proto.h"

#include <check.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static int parse(const char *s, struct lmd_request *r)
{
	const char *why;
	int rc = lmd_parse(s, strlen(s), r, &why);
	if (rc)
		ck_assert_ptr_nonnull(why);
	return rc;
}

START_TEST(requests)
{
	struct lmd_request r;
	ck_assert_int_eq(parse("list", &r), 0);
	ck_assert_int_eq(r.kind, LMD_REQ_LIST);
	ck_assert_int_eq(parse("  json\r", &r), 0);
	ck_assert_int_eq(r.kind, LMD_REQ_JSON);
	ck_assert_int_eq(parse("metrics", &r), 0);
	ck_assert_int_eq(parse("version", &r), 0);
	ck_assert_int_eq(parse("help", &r), 0);
	ck_assert_int_eq(parse("stats 1234", &r), 0);
	ck_assert_int_eq(r.kind, LMD_REQ_STATS);
	ck_assert_int_eq(r.pid, 1234);
	ck_assert_int_eq(parse("budget 77 512M", &r), 0);
	ck_assert_int_eq(r.kind, LMD_REQ_BUDGET);
	ck_assert_int_eq(r.pid, 77);
	ck_assert_uint_eq(r.bytes, 512ull << 20);
	ck_assert_int_eq(parse("budget 77 0", &r), 0);
	ck_assert_uint_eq(r.bytes, 0);
	/* Without a pid, stats and json mean every process the caller may see. */
	ck_assert_int_eq(parse("stats", &r), 0);
	ck_assert_int_eq(r.kind, LMD_REQ_STATS);
	ck_assert_int_eq(r.pid, 0);
	ck_assert_int_eq(parse("json 42", &r), 0);
	ck_assert_int_eq(r.kind, LMD_REQ_JSON);
	ck_assert_int_eq(r.pid, 42);
	ck_assert_int_eq(parse("hello 0.3.0 my-app", &r), 0);
	ck_assert_int_eq(r.kind, LMD_REQ_HELLO);
	ck_assert_uint_eq(r.version_len, 5);
	ck_assert_int_eq(memcmp(r.version, "0.3.0", 5), 0);
	ck_assert_uint_eq(r.name_len, 6);
	ck_assert_int_eq(memcmp(r.name, "my-app", 6), 0);
}
END_TEST

/* "stats" replies parse back into what was formatted, and a page is read defensively. */
START_TEST(stats_roundtrip)
{
	struct lm_stats a, b;
	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.faults_missing = 123;
	a.resident_pages = 77;
	a.resident_dirty = 7;
	a.budget_bytes = 1ull << 40;
	a.restore_faults = 5;
	a.fill_latency[0] = 1;
	a.fill_latency[LM_LAT_BUCKETS - 1] = 99;
	a.page_size = 4096;
	a.version = LM_STATS_VERSION;
	b = a;
	b.faults_missing = 1;
	struct lmd_proc procs[2] = {
		{ .pid = 10, .uid = 1000, .name = "with space", .st = &a, .version = "0.3.0",
		  .runtimes = 2, .faults_per_s = 12.5 },
		{ .pid = 11, .uid = 0, .name = NULL, .st = &b },
	};
	int n = lmd_format_stats(procs, 2, NULL, 0);
	ck_assert_int_gt(n, 0);
	char *buf = malloc((size_t)n + 1);
	ck_assert_int_eq(lmd_format_stats(procs, 2, buf, (size_t)n + 1), n);
	struct lmd_entry e[2];
	ck_assert_int_eq(lmd_parse_stats(buf, (size_t)n, e, 2), 2);
	ck_assert_int_eq(e[0].pid, 10);
	ck_assert_uint_eq(e[0].uid, 1000);
	ck_assert_str_eq(e[0].name, "with_space");
	ck_assert_str_eq(e[0].version, "0.3.0");
	ck_assert_int_eq(e[0].runtimes, 2);
	ck_assert(e[0].faults_per_s > 12.4 && e[0].faults_per_s < 12.6);
	ck_assert_int_eq(memcmp(&e[0].st, &a, sizeof(a)), 0);
	ck_assert_str_eq(e[1].name, "?");
	ck_assert_uint_eq(e[1].st.faults_missing, 1);
	/* Only max stored, all counted; garbage refused. */
	ck_assert_int_eq(lmd_parse_stats(buf, (size_t)n, e, 1), 2);
	ck_assert_int_eq(lmd_parse_stats("faults_missing 1\n", 16, e, 2), -EINVAL);
	ck_assert_int_eq(lmd_parse_stats("pid 1\nfaults_missing x\n", 23, e, 2), -EINVAL);
	ck_assert_int_eq(lmd_parse_stats("pid 1\nsomething_new 5\n", 22, e, 2), 1);
	free(buf);

	/* A page: signed gauges clamp, clean is derived, a short page is a prefix. */
	struct lm_stats page, out;
	memset(&page, 0, sizeof(page));
	page.size = sizeof(page);
	page.resident_pages = (uint64_t)-3;
	page.resident_dirty = 2;
	page.swapped_pages = 9;
	page.resident_clean = 12345;
	lmd_stats_load(&page, sizeof(page), &out);
	ck_assert_uint_eq(out.resident_pages, 0);
	ck_assert_uint_eq(out.resident_dirty, 0);
	ck_assert_uint_eq(out.resident_clean, 0);
	ck_assert_uint_eq(out.swapped_pages, 9);
	page.resident_pages = 10;
	page.size = 1u << 30;	/* lies: the mapping's length wins */
	lmd_stats_load(&page, offsetof(struct lm_stats, swapped_pages), &out);
	ck_assert_uint_eq(out.resident_pages, 10);
	ck_assert_uint_eq(out.resident_clean, 8);
	ck_assert_uint_eq(out.swapped_pages, 0);
	lmd_stats_load(&page, 8, &out);
	ck_assert_uint_eq(out.resident_pages, 0);

	/* Several runtimes of one process: amounts add, enums do not. */
	struct lm_stats s1 = a, s2 = a;
	s1.mode = s2.mode = 1;
	s1.uffd_features = 1;
	s2.uffd_features = 4;
	lmd_stats_add(&s1, &s2);
	ck_assert_uint_eq(s1.faults_missing, 246);
	ck_assert_uint_eq(s1.mode, 1);
	ck_assert_uint_eq(s1.uffd_features, 5);
	ck_assert_uint_eq(s1.page_size, 4096);
	/* A hugetlb runtime beside: its pages count as the base pages they hold. */
	struct lm_stats h = a, h2 = a;
	h.page_size = h2.page_size = 2u << 20;
	h.resident_pages = 3;
	s2 = a;
	s2.resident_pages = 5;
	lmd_stats_add(&h, &s2);
	ck_assert_uint_eq(h.page_size, 4096);
	ck_assert_uint_eq(h.resident_pages, 3 * 512 + 5);
	s2 = a;
	s2.resident_pages = 5;
	h2.resident_pages = 3;
	lmd_stats_add(&s2, &h2);
	ck_assert_uint_eq(s2.page_size, 4096);
	ck_assert_uint_eq(s2.resident_pages, 5 + 3 * 512);
	ck_assert_uint_eq(s2.budget_bytes, a.budget_bytes * 2);
}
END_TEST

/* Garbage of every kind is refused with a reason, never a crash or a partial request. */
START_TEST(malformed)
{
	static const char *const bad[] = {
		"", "   ", "lis", "listx", "list extra", "stats 0", "json 0", "json x",
		"hello 1", "hello 1 2 3", "hello 0.3.0 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "stats -1",
		"stats 12x", "stats 99999999999", "stats 1 2", "budget 1", "budget 1 12Q",
		"budget 1 99999999999999999999", "budget 1 20000000T", "budget x 1M",
		"LIST", "a b c d e", "help me",
	};
	struct lmd_request r;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(parse(bad[i], &r) == -EINVAL, "accepted '%s'", bad[i]);
	/* Binary bytes, embedded NULs, and an overlong line. */
	const char bin[] = { 'l', 'i', 's', 't', 0, 'x' };
	const char *why;
	ck_assert_int_eq(lmd_parse(bin, sizeof(bin), &r, &why), -EINVAL);
	char hi[] = "stats 1\xff";
	ck_assert_int_eq(parse(hi, &r), -EINVAL);
	char *lng = malloc(LMD_LINE_MAX + 2);
	memset(lng, ' ', LMD_LINE_MAX + 1);
	memcpy(lng, "list", 4);
	ck_assert_int_eq(lmd_parse(lng, LMD_LINE_MAX + 1, &r, &why), -EINVAL);
	ck_assert_int_eq(lmd_parse(lng, LMD_LINE_MAX, &r, &why), 0);
	free(lng);
	/* Random bytes: never accepted as anything but what they spell. */
	uint64_t s = 42;
	char buf[64];
	for (int k = 0; k < 100000; k++) {
		size_t n = (size_t)(s % sizeof(buf));
		for (size_t i = 0; i < n; i++) {
			s ^= s << 13;
			s ^= s >> 7;
			s ^= s << 17;
			buf[i] = (char)(s & 0xff);
		}
		if (lmd_parse(buf, n, &r, &why) == 0)
			ck_assert(r.kind >= LMD_REQ_LIST && r.kind <= LMD_REQ_HELP);
		else
			ck_assert_ptr_nonnull(why);
	}
}
END_TEST

/* Prometheus text: HELP and TYPE for every stat, base units, _total on counters, labels escaped. */
START_TEST(metrics_text)
{
	struct lm_stats a, b;
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	a.size = b.size = sizeof(a);
	a.page_size = b.page_size = 4096;
	a.resident_pages = 10;
	a.faults_missing = 5;
	a.fill_ns_total = 1500000000;
	a.budget_bytes = 1 << 20;
	b.faults_missing = 7;
	a.remote_rtt_lt_100us = 3;
	a.remote_rtt_lt_1ms = 2;
	a.remote_rtt_ge_100ms = 1;
	a.remote_rtt_ns_total = 250000000;
	a.mode = LM_MODE_THREAD;
	b.uffd_origin = LM_UFFD_SYSCALL_USER;
	struct lmd_proc procs[2] = {
		{ .pid = 100, .uid = 0, .name = "app \"one\"\\", .st = &a },
		{ .pid = 200, .uid = 0, .name = "two\nlines", .st = &b },
	};
	int n = lmd_format_metrics(procs, 2, NULL, 0);
	ck_assert_int_gt(n, 0);
	char *buf = malloc((size_t)n + 1);
	ck_assert_int_eq(lmd_format_metrics(procs, 2, buf, (size_t)n + 1), n);
	ck_assert_ptr_nonnull(strstr(buf, "# TYPE lazymem_faults_missing_total counter\n"));
	ck_assert_ptr_nonnull(strstr(buf, "lazymem_faults_missing_total{pid=\"100\",name=\"app \\\"one\\\"\\\\\"} 5\n"));
	ck_assert_ptr_nonnull(strstr(buf, "lazymem_faults_missing_total{pid=\"200\",name=\"two\\nlines\"} 7\n"));
	ck_assert_ptr_nonnull(strstr(buf, "# TYPE lazymem_resident_bytes gauge\n"));
	ck_assert_ptr_nonnull(strstr(buf, "lazymem_resident_bytes{pid=\"100\",name=\"app \\\"one\\\"\\\\\"} 40960\n"));
	ck_assert_ptr_nonnull(strstr(buf, "lazymem_fill_seconds_total{pid=\"100\","));
	ck_assert_ptr_nonnull(strstr(buf, "} 1.500000000\n"));
	ck_assert_ptr_nonnull(strstr(buf, "# TYPE lazymem_budget_bytes gauge\n"));
	ck_assert_ptr_null(strstr(buf, "_bytes_bytes"));
	/* Enums are info metrics, their value a label; no bare number to decode. */
	ck_assert_ptr_nonnull(strstr(buf, "# TYPE lazymem_mode_info gauge\n"));
	ck_assert_ptr_nonnull(strstr(buf, "lazymem_mode_info{pid=\"100\",name=\"app \\\"one\\\"\\\\\",mode=\"thread\"} 1\n"));
	ck_assert_ptr_nonnull(strstr(buf, "lazymem_uffd_origin_info{pid=\"200\",name=\"two\\nlines\",origin=\"user\"} 1\n"));
	ck_assert_ptr_null(strstr(buf, "lazymem_mode{"));
	ck_assert_ptr_null(strstr(buf, "lazymem_uffd_origin{"));
	ck_assert_ptr_null(strstr(buf, "_total_total"));
	/* The remote store's round trips: a histogram, cumulative, not five counters. */
	ck_assert_ptr_nonnull(strstr(buf, "# TYPE lazymem_remote_rtt_seconds histogram\n"));
	ck_assert_ptr_nonnull(strstr(buf, "lazymem_remote_rtt_seconds_bucket{pid=\"100\",name=\"app \\\"one\\\"\\\\\",le=\"0.001\"} 5\n"));
	ck_assert_ptr_nonnull(strstr(buf, "lazymem_remote_rtt_seconds_bucket{pid=\"100\",name=\"app \\\"one\\\"\\\\\",le=\"+Inf\"} 6\n"));
	ck_assert_ptr_nonnull(strstr(buf, "lazymem_remote_rtt_seconds_count{pid=\"100\",name=\"app \\\"one\\\"\\\\\"} 6\n"));
	ck_assert_ptr_null(strstr(buf, "remote_rtt_lt_"));
	/* Every metric has HELP and TYPE, in that order, once. */
	size_t helps = 0, types = 0;
	for (const char *p = buf; (p = strstr(p, "# HELP ")); p++)
		helps++;
	for (const char *p = buf; (p = strstr(p, "# TYPE ")); p++)
		types++;
	ck_assert_uint_eq(helps, types);
	ck_assert_uint_gt(helps, 50);
	/* Truncated output is still terminated and the length needed is reported. */
	char small[32];
	ck_assert_int_eq(lmd_format_metrics(procs, 2, small, sizeof(small)), n);
	ck_assert_uint_eq(strlen(small), sizeof(small) - 1);
	ck_assert_int_eq(lmd_format_metrics(NULL, 1, buf, 10), -EINVAL);
	free(buf);
}
END_TEST

/* JSON: every field, escaped names, balanced, the length needed when truncated. */
/*
 * The one JSON string writer: every control character escaped, quotes and
 * backslashes, U+2028/9; UTF-8 kept, other bytes U+FFFD; and what it
 * makes of every byte, alone and in a name, is JSON to python's parser.
 */
START_TEST(json_strings)
{
	char out[512];
	static const struct {
		const char *in, *want;
	} cases[] = {
		{ "plain", "\"plain\"" },
		{ "", "\"\"" },
		{ "q\"b\\s", "\"q\\\"b\\\\s\"" },
		{ "\b\t\n\f\r", "\"\\b\\t\\n\\f\\r\"" },
		{ "\x01\x0b\x1f\x7f", "\"\\u0001\\u000b\\u001f\\u007f\"" },
		{ "caf\xc3\xa9 \xf0\x9f\x98\x80", "\"caf\xc3\xa9 \xf0\x9f\x98\x80\"" },
		{ "a\xff" "b\xc3", "\"a\\ufffdb\\ufffd\"" },
		{ "\xc0\xaf", "\"\\ufffd\\ufffd\"" },		/* an overlong slash */
		{ "\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"" },	/* a surrogate */
		{ "x\xe2\x80\xa8y\xe2\x80\xa9", "\"x\\u2028y\\u2029\"" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t k = lmd_json_string(cases[i].in, out, sizeof(out));
		ck_assert_msg(!strcmp(out, cases[i].want), "case %zu: %s", i, out);
		ck_assert_uint_eq(k, strlen(cases[i].want));
	}
	/* Like snprintf: cut short but terminated, the length needed returned. */
	char small[4];
	ck_assert_uint_eq(lmd_json_string("abcdef", small, sizeof(small)), 8);
	ck_assert_str_eq(small, "\"ab");
	ck_assert_uint_eq(lmd_json_string(NULL, NULL, 0), 2);
	/* Every byte, alone and between others, through python's json. */
	char path[] = "/tmp/lazymem-json-XXXXXX";
	int fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	FILE *f = fdopen(fd, "w");
	fputs("[", f);
	for (int c = 1; c < 256; c++) {
		char in[8] = { 'a', (char)c, 'z', (char)c, 0 };
		lmd_json_string(in, out, sizeof(out));
		fprintf(f, "%s%s", c > 1 ? "," : "", out);
	}
	fputs("]", f);
	fclose(f);
	char cmd[256];
	snprintf(cmd, sizeof(cmd),
		 "python3 -c 'import json, sys; v = json.load(open(sys.argv[1], encoding=\"utf-8\")); "
		 "assert len(v) == 255 and v[9] == \"a\\nz\\n\" and v[0x7e] == \"a\\x7fz\\x7f\"' %s",
		 path);
	int rc = system(cmd);
	unlink(path);
	ck_assert_msg(rc == 0, "python3 did not read the strings back as JSON");
}
END_TEST

START_TEST(json_text)
{
	struct lm_stats a;
	memset(&a, 0, sizeof(a));
	a.size = sizeof(a);
	a.faults_missing = 9;
	a.fill_latency[3] = 4;
	a.page_size = 4096;
	struct lmd_proc procs[2] = {
		{ .pid = 10, .uid = 1000, .name = "q\"b\\s\x01", .st = &a },
		{ .pid = 11, .uid = 0, .name = NULL, .st = &a },
	};
	int n = lmd_format_json(procs, 2, NULL, 0);
	ck_assert_int_gt(n, 0);
	char *buf = malloc((size_t)n + 1);
	ck_assert_int_eq(lmd_format_json(procs, 2, buf, (size_t)n + 1), n);
	ck_assert_ptr_nonnull(strstr(buf, "{\"processes\":[{\"pid\":10,\"uid\":1000,"));
	ck_assert_ptr_nonnull(strstr(buf, "\"name\":\"q\\\"b\\\\s\\u0001\""));
	ck_assert_ptr_nonnull(strstr(buf, "\"faults_missing\":9,"));
	ck_assert_ptr_nonnull(strstr(buf, "\"fill_latency\":[0,0,0,4,"));
	ck_assert_ptr_nonnull(strstr(buf, "{\"pid\":11,\"uid\":0,\"name\":\"\""));
	ck_assert_ptr_nonnull(strstr(buf, "\"page_size\":4096"));
	int depth = 0, maxd = 0;
	bool in_str = false;
	for (const char *p = buf; *p; p++) {
		if (in_str) {
			if (*p == '\\')
				p++;
			else if (*p == '"')
				in_str = false;
			continue;
		}
		if (*p == '"')
			in_str = true;
		else if (*p == '{' || *p == '[')
			depth++;
		else if (*p == '}' || *p == ']')
			depth--;
		ck_assert_int_ge(depth, 0);
		maxd = depth > maxd ? depth : maxd;
	}
	ck_assert_int_eq(depth, 0);
	ck_assert_int_eq(maxd, 5);	/* object, list, process, stats, histogram */
	/* An older client's smaller struct: only its prefix. */
	struct lm_stats old = a;
	old.size = (uint32_t)offsetof(struct lm_stats, faults_wp);
	struct lmd_proc p1 = { .pid = 5, .uid = 0, .name = "o", .st = &old };
	ck_assert_int_gt(lmd_format_json(&p1, 1, buf, (size_t)n + 1), 0);
	ck_assert_ptr_nonnull(strstr(buf, "\"faults_missing\":9"));
	ck_assert_ptr_null(strstr(buf, "\"faults_wp\""));
	char small[16];
	ck_assert_int_eq(lmd_format_json(procs, 2, small, sizeof(small)), n);
	ck_assert_uint_eq(strlen(small), sizeof(small) - 1);
	ck_assert_int_eq(lmd_format_json(procs, 0, small, sizeof(small)), 16);
	ck_assert_str_eq(small, "{\"processes\":[]");
	free(buf);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("proto");
	TCase *tc = tcase_create("proto");
	tcase_add_test(tc, requests);
	tcase_add_test(tc, malformed);
	tcase_add_test(tc, metrics_text);
	tcase_add_test(tc, json_strings);
	tcase_add_test(tc, json_text);
	tcase_add_test(tc, stats_roundtrip);
	suite_add_tcase(s, tc);
	return lmt_run(s);
}
