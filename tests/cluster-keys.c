/* SPDX-License-Identifier: MIT */
/* Test helper: lib/cluster.c's page keys and slots, and its reading of a redirection, for tests/cluster-routing.sh. */
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * cluster-keys keys NS FIRST COUNT   one line per page: its key and slot
 * cluster-keys redirect TEXT         kind slot host port, or exit 1
 */
int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "keys")) {
		uint64_t first = strtoull(argv[3], NULL, 0), count = strtoull(argv[4], NULL, 0);
		char key[128];
		for (uint64_t pg = first; pg < first + count; pg++) {
			int n = lm__cluster_page_key(key, sizeof(key), argv[2], pg);
			if (n < 0)
				return 1;
			printf("%s %u\n", key, lm__cluster_slot(key, (size_t)n));
		}
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "redirect")) {
		struct lm__redirect r;
		if (lm__cluster_redirect(argv[2], strlen(argv[2]), &r) < 0)
			return 1;
		printf("%s %u %s %d\n", r.kind == LM__REDIRECT_MOVED ? "moved" : "ask", r.slot, r.host,
		       r.port);
		return 0;
	}
	fprintf(stderr, "usage: cluster-keys keys NS FIRST COUNT | redirect TEXT\n");
	return 2;
}
