/* SPDX-License-Identifier: MIT */
/* What the kernel says about memory pressure: PSI, /proc/meminfo and memory cgroups (v1 and v2). */
#include "pressure.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Reads a small kernel file whole; returns its length or -errno. */
static ssize_t slurp(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t n = 0;
	while (n < len - 1) {
		ssize_t k = read(fd, buf + n, len - 1 - n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			int e = -errno;
			close(fd);
			return e;
		}
		if (k == 0)
			break;
		n += (size_t)k;
	}
	close(fd);
	buf[n] = '\0';
	return (ssize_t)n;
}

static ssize_t slurp_at(const char *dir, const char *name, char *buf, size_t len)
{
	char path[LMD_SCOPE_PATH + 64];
	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path))
		return -ENAMETOOLONG;
	return slurp(path, buf, len);
}

/* The value of "key N" in a file of such lines (memory.stat, vmstat, oom_control). */
static int keyed(const char *text, const char *key, uint64_t *out)
{
	size_t kl = strlen(key);
	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		if (!strncmp(p, key, kl) && (p[kl] == ' ' || p[kl] == ':')) {
			char *end;
			errno = 0;
			unsigned long long v = strtoull(p + kl + 1, &end, 10);
			if (errno || end == p + kl + 1)
				return -EINVAL;
			*out = v;
			return 0;
		}
	}
	return -ENOENT;
}

/* A file holding one number, or "max" (v2) for no limit. */
static int number_at(const char *dir, const char *name, uint64_t *out)
{
	char buf[64];
	ssize_t n = slurp_at(dir, name, buf, sizeof(buf));
	if (n < 0)
		return (int)n;
	if (!strncmp(buf, "max", 3)) {
		*out = UINT64_MAX;
		return 0;
	}
	char *end;
	errno = 0;
	unsigned long long v = strtoull(buf, &end, 10);
	if (errno || end == buf || (*end && *end != '\n'))
		return -EINVAL;
	*out = v;
	return 0;
}

int lmd_psi_parse(const char *text, struct lmd_psi *out)
{
	memset(out, 0, sizeof(*out));
	double a10, a60, a300;
	unsigned long long total;
	const char *some = strstr(text, "some ");
	const char *full = strstr(text, "full ");
	if (!some || sscanf(some, "some avg10=%lf avg60=%lf avg300=%lf total=%llu", &a10, &a60, &a300,
			    &total) != 4)
		return -EINVAL;
	out->some10 = a10;
	out->some60 = a60;
	out->some_total = total;
	if (full && sscanf(full, "full avg10=%lf", &a10) == 1)
		out->full10 = a10;
	out->valid = true;
	return 0;
}

int lmd_meminfo_parse(const char *text, uint64_t *total, uint64_t *available)
{
	uint64_t t, a;
	if (keyed(text, "MemTotal", &t) < 0 || keyed(text, "MemAvailable", &a) < 0)
		return -EINVAL;
	*total = t << 10;
	*available = a << 10;
	return 0;
}

int lmd_cgroup_parse(const char *text, char *v1, size_t v1len, char *v2, size_t v2len)
{
	v1[0] = v2[0] = '\0';
	bool any = false;
	for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		/* hierarchy-ID:controller-list:path */
		const char *c1 = strchr(p, ':');
		const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		const char *eol = strchr(p, '\n');
		if (!c1 || !c2 || (eol && c2 > eol))
			continue;
		size_t plen = eol ? (size_t)(eol - c2 - 1) : strlen(c2 + 1);
		char *dst = NULL;
		size_t dlen = 0;
		if (c2 == c1 + 1 && !strncmp(p, "0:", 2)) {
			dst = v2, dlen = v2len;
		} else {
			/* The controller list is comma separated: "memory" as one of its words. */
			for (const char *w = c1 + 1; w < c2;) {
				const char *e = memchr(w, ',', (size_t)(c2 - w));
				e = e ? e : c2;
				if ((size_t)(e - w) == 6 && !strncmp(w, "memory", 6))
					dst = v1, dlen = v1len;
				w = e + 1;
			}
		}
		if (dst && plen < dlen) {
			memcpy(dst, c2 + 1, plen);
			dst[plen] = '\0';
			any = true;
		}
	}
	return any ? 0 : -ENOENT;
}

static int read_system(struct lmd_scope *s)
{
	char buf[8192];
	ssize_t n = slurp("/proc/meminfo", buf, sizeof(buf));
	if (n < 0)
		return (int)n;
	uint64_t total, avail;
	int rc = lmd_meminfo_parse(buf, &total, &avail);
	if (rc < 0)
		return rc;
	s->limit = total;
	s->available = avail;
	s->usage = total > avail ? total - avail : 0;
	if (slurp("/proc/vmstat", buf, sizeof(buf)) > 0)
		keyed(buf, "oom_kill", &s->oom_kills);
	if (slurp("/proc/pressure/memory", buf, sizeof(buf)) <= 0 || lmd_psi_parse(buf, &s->psi) < 0)
		s->psi.valid = false;
	return 0;
}

int lmd_scope_read(struct lmd_scope *s)
{
	if (s->kind == LMD_SCOPE_SYSTEM)
		return read_system(s);
	bool v1 = s->kind == LMD_SCOPE_V1;
	uint64_t limit, usage, inactive = 0, dirty = 0, writeback = 0;
	int rc = number_at(s->path, v1 ? "memory.limit_in_bytes" : "memory.max", &limit);
	if (!rc)
		rc = number_at(s->path, v1 ? "memory.usage_in_bytes" : "memory.current", &usage);
	if (rc < 0)
		return rc == -ENOENT ? -ESRCH : rc;
	char buf[8192];
	if (slurp_at(s->path, "memory.stat", buf, sizeof(buf)) > 0) {
		keyed(buf, v1 ? "total_inactive_file" : "inactive_file", &inactive);
		keyed(buf, v1 ? "total_dirty" : "file_dirty", &dirty);
		keyed(buf, v1 ? "total_writeback" : "file_writeback", &writeback);
	}
	s->limit = limit;
	s->usage = usage;
	/*
	 * Clean file pages the kernel drops before it kills: usage that is
	 * not really in use.  Dirty ones and those under writeback are not
	 * that (a swap file's fresh writes are such pages): they must reach
	 * the disk first, and a cgroup can run out while they do.
	 */
	uint64_t free = limit > usage ? limit - usage : 0;
	uint64_t unclean = dirty + writeback;
	inactive = inactive > unclean ? inactive - unclean : 0;
	s->available = free + (inactive < usage ? inactive : usage);
	if (s->available > limit)
		s->available = limit;
	if (slurp_at(s->path, v1 ? "memory.oom_control" : "memory.events", buf, sizeof(buf)) > 0)
		keyed(buf, "oom_kill", &s->oom_kills);
	/* cgroup v1 has no pressure file of its own: the machine's is the best there is. */
	ssize_t n = v1 ? slurp("/proc/pressure/memory", buf, sizeof(buf)) :
			 slurp_at(s->path, "memory.pressure", buf, sizeof(buf));
	if (n <= 0 || lmd_psi_parse(buf, &s->psi) < 0)
		s->psi.valid = false;
	return 0;
}

/* Walks from root/rel up to root, stopping at the first directory with a limit below total. */
static bool limited_ancestor(const char *root, const char *rel, int kind, uint64_t total,
			     struct lmd_scope *out)
{
	char path[LMD_SCOPE_PATH];
	if (!root || !*root || !*rel ||
	    (size_t)snprintf(path, sizeof(path), "%s%s", root, rel) >= sizeof(path))
		return false;
	size_t rootlen = strlen(root);
	for (;;) {
		uint64_t limit;
		/* The root cgroup has no limit file in v2, and an unlimited one in v1. */
		if (strlen(path) > rootlen &&
		    number_at(path, kind == LMD_SCOPE_V1 ? "memory.limit_in_bytes" : "memory.max",
			      &limit) == 0 &&
		    limit < total) {
			out->kind = kind;
			memcpy(out->path, path, sizeof(path));
			return true;
		}
		char *slash = strrchr(path, '/');
		if (!slash || (size_t)(slash - path) < rootlen)
			return false;
		*slash = '\0';
	}
}

int lmd_scope_find(pid_t pid, const char *v1root, const char *v2root, uint64_t total,
		   struct lmd_scope *out)
{
	memset(out, 0, sizeof(*out));
	out->kind = LMD_SCOPE_SYSTEM;
	char path[64], buf[4096], v1[LMD_SCOPE_PATH], v2[LMD_SCOPE_PATH];
	snprintf(path, sizeof(path), "/proc/%d/cgroup", (int)pid);
	ssize_t n = slurp(path, buf, sizeof(buf));
	if (n < 0)
		return n == -ENOENT ? -ESRCH : (int)n;
	if (lmd_cgroup_parse(buf, v1, sizeof(v1), v2, sizeof(v2)) < 0)
		return 0;
	if (!limited_ancestor(v1root, v1, LMD_SCOPE_V1, total, out) &&
	    !limited_ancestor(v2root, v2, LMD_SCOPE_V2, total, out))
		out->kind = LMD_SCOPE_SYSTEM;
	return 0;
}
