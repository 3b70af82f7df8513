/* SPDX-License-Identifier: MIT */
/* Whether an address is lazy memory, as /proc/self/smaps tells: for the helpers that run under lazymem run. */
#ifndef LMT_LAZYAT_H
#define LMT_LAZYAT_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* "yes" when addr is in a mapping registered with a userfaultfd (VmFlags "um"). */
static inline const char *lazy_at(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	if (!f)
		return "unknown";
	char line[512];
	bool in = false;
	const char *ans = "no";
	uintptr_t a = (uintptr_t)addr;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = a >= lo && a < hi;
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			ans = strstr(line, " um") ? "yes" : "no";
			break;
		}
	}
	fclose(f);
	return ans;
}

#endif
