/* SPDX-License-Identifier: MIT */
/* libFuzzer harness for lazymemd's request parser and label escaping (tests/fuzz-proto.sh runs it). */
#include "proto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct lmd_request r;
	const char *why;
	if (lmd_parse((const char *)data, size, &r, &why) == 0) {
		/* What parses is one of the requests, with its arguments in range. */
		if (r.kind < LMD_REQ_LIST || r.kind > LMD_REQ_HELP)
			abort();
		if ((r.kind == LMD_REQ_STATS || r.kind == LMD_REQ_BUDGET) && r.pid <= 0)
			abort();
	} else if (!why) {
		abort();
	}
	/* Any bytes as a process name: the escaped label stays within its buffer, terminated. */
	char name[300], label[64];
	size_t n = size < sizeof(name) - 1 ? size : sizeof(name) - 1;
	memcpy(name, data, n);
	name[n] = '\0';
	size_t used = lmd_escape_label(name, label, sizeof(label));
	if (used >= sizeof(label) || label[used] != '\0')
		abort();
	return 0;
}
