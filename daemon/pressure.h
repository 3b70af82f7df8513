/* SPDX-License-Identifier: MIT */
/* What the kernel says about memory pressure: PSI, /proc/meminfo and memory cgroups (v1 and v2). */
#ifndef LMD_PRESSURE_H
#define LMD_PRESSURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Pressure stall information: the share of time tasks waited on memory, in percent. */
struct lmd_psi {
	bool valid;		/* the file existed and parsed */
	double some10, some60;	/* some task stalled: avg10, avg60 */
	double full10;		/* every task stalled: avg10 */
	uint64_t some_total;	/* microseconds, cumulative */
};

/* Parses the text of /proc/pressure/memory or a cgroup's memory.pressure. */
int lmd_psi_parse(const char *text, struct lmd_psi *out);

/* MemTotal and MemAvailable from the text of /proc/meminfo, in bytes. */
int lmd_meminfo_parse(const char *text, uint64_t *total, uint64_t *available);

enum lmd_scope_kind {
	LMD_SCOPE_SYSTEM = 0,	/* the machine: MemTotal, MemAvailable, /proc/pressure/memory */
	LMD_SCOPE_V1 = 1,	/* a cgroup-v1 memory cgroup with a limit */
	LMD_SCOPE_V2 = 2,	/* a cgroup-v2 cgroup with memory.max */
};

#define LMD_SCOPE_PATH 256

/*
 * Where memory can run out for a process: the innermost memory cgroup
 * with a limit on the way from its own cgroup to the root, or the
 * machine.  available is what the kernel can still hand out without
 * reclaiming anything but clean file pages: the limit less the usage
 * plus the inactive file pages (MemAvailable for the machine).
 */
struct lmd_scope {
	int kind;			/* enum lmd_scope_kind */
	char path[LMD_SCOPE_PATH];	/* the cgroup's directory; "" for the machine */
	uint64_t limit, usage, available;
	uint64_t oom_kills;		/* the cgroup's (or machine's) OOM kills so far */
	struct lmd_psi psi;		/* memory.pressure (v2) or /proc/pressure/memory */
};

/*
 * Finds the memory cgroup directories of a process from the text of
 * /proc/PID/cgroup: the v1 memory hierarchy's path and the v2 path
 * (either may come back empty).
 */
int lmd_cgroup_parse(const char *text, char *v1, size_t v1len, char *v2, size_t v2len);

/*
 * Which scope process pid is in: walks up from its cgroup (under the v1
 * memory mount at v1root and the v2 mount at v2root) to the first one
 * with a limit below total (the machine's memory); the machine when
 * there is none.  Sets kind and path only: lmd_scope_read reads the
 * figures, once per scope however many processes share it.  Returns 0
 * or -errno (-ESRCH: the process is gone).
 */
int lmd_scope_find(pid_t pid, const char *v1root, const char *v2root, uint64_t total,
		   struct lmd_scope *out);

/* Reads a scope's figures again (its kind and path kept).  Returns 0 or -errno. */
int lmd_scope_read(struct lmd_scope *s);

#endif
