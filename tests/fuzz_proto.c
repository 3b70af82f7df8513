/* SPDX-License-Identifier: MIT */
/* libFuzzer harness for lazymemd's parsers: requests, "stats" replies, stats pages, labels (tests/fuzz-proto.sh runs it). */
#include "proto.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lmd_request r;
	const char *why;
	const char *s = (const char *)data;
	if (lmd_parse(s, size, &r, &why) == 0) {
		/* What parses is one of the requests, with its arguments in range. */
		if (r.kind < LMD_REQ_LIST || r.kind > LMD_REQ_HELLO)
			abort();
		if ((r.kind == LMD_REQ_BUDGET && r.pid <= 0) || r.pid < 0)
			abort();
		if (r.kind == LMD_REQ_HELLO &&
		    (r.version < s || r.name < s || r.version + r.version_len > s + size ||
		     r.name + r.name_len > s + size || r.name_len > LMD_NAME_MAX ||
		     r.version_len > LMD_VERSION_MAX || !r.name_len || !r.version_len))
			abort();
	} else if (!why) {
		abort();
	}
	/* The command's parser of "stats" replies: counts, never writes past max. */
	struct lmd_entry e[2];
	int n = lmd_parse_stats(s, size, e, 2);
	if (n > 0 && (e[0].pid <= 0 || e[0].name[LMD_NAME_MAX] != '\0'))
		abort();
	/* Any bytes as a stats page, of any length: a clamped copy. */
	struct lm_stats st;
	lmd_stats_load(data, size, &st);
	if (st.resident_dirty > st.resident_pages ||
	    st.resident_clean != st.resident_pages - st.resident_dirty)
		abort();
	/* Any bytes as a process name: the escaped label stays within its buffer, terminated. */
	char name[300], label[64];
	size_t k = size < sizeof(name) - 1 ? size : sizeof(name) - 1;
	memcpy(name, data, k);
	name[k] = '\0';
	size_t used = lmd_escape_label(name, label, sizeof(label));
	if (used >= sizeof(label) || label[used] != '\0')
		abort();
	return 0;
}
