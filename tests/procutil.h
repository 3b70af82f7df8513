/* SPDX-License-Identifier: MIT */
/* /proc readers shared by the tests and the benchmark: a /proc/meminfo field, a sysctl's number. */
#ifndef LM_PROCUTIL_H
#define LM_PROCUTIL_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* The number after "key:" in /proc/meminfo (kB for sizes), or -1 when absent. */
static inline long lmt_meminfo(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[256];
	size_t n = strlen(key);
	long v = -1;
	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == ':' && sscanf(line + n + 1, "%ld", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

/* The kernel's default huge page size in bytes, 0 without hugetlb. */
static inline size_t lmt_huge_page_size(void)
{
	long kb = lmt_meminfo("Hugepagesize");
	return kb > 0 ? (size_t)kb << 10 : 0;
}

/* The number a sysctl file holds, or -1. */
static inline long lmt_sysctl_read(const char *path)
{
	FILE *f = fopen(path, "re");
	long v = -1;
	if (f) {
		if (fscanf(f, "%ld", &v) != 1)
			v = -1;
		fclose(f);
	}
	return v;
}

static inline bool lmt_sysctl_write(const char *path, long v)
{
	FILE *f = fopen(path, "we");
	if (!f)
		return false;
	fprintf(f, "%ld\n", v);
	return fclose(f) == 0;
}

#define LMT_NR_HUGEPAGES "/proc/sys/vm/nr_hugepages"

#endif /* LM_PROCUTIL_H */
