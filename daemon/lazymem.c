/* SPDX-License-Identifier: MIT */
/* lazymem: the command that shows lazy memory, from lazymemd, like free(1), ps(1) and top(1). */
#include "config.h"
#include "internal.h"
#include "proto.h"
#include "sockpath.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <inttypes.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <hiredis/hiredis.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Exit codes, as lazymem(1) documents them. */
enum { EX_OK = 0, EX_REFUSED = 1, EX_USAGE = 2, EX_DAEMON = 3 };

#define REPLY_TIMEOUT_MS 60000
#define REPLY_MAX (256u << 20)

static struct {
	const char *socket;
	bool json, human, bytes;
	double interval;	/* free -s, top -d */
	long count;		/* free -c, top -n */
	const char *min;	/* budget --min */
} O = { .count = -1 };

static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
	(void)sig;
	interrupted = 1;
}

/* ---- talking to the daemon ------------------------------------------------------------- */

struct reply {
	char *body;
	size_t len;
};

static int die_daemon(const char *path, const char *what, int err)
{
	fprintf(stderr, "lazymem: %s %s: %s\n", what, path, strerror(err));
	/* A daemon that is there but not ours to ask is not a missing daemon. */
	if (err == EACCES || err == EPERM) {
		fprintf(stderr, "lazymem: lazymemd runs, but its socket is not open to you "
				"(lazymemd -g GROUP names who may connect)\n");
		return EX_REFUSED;
	}
	if (err == ENOENT || err == ECONNREFUSED)
		fprintf(stderr, "lazymem: is lazymemd running? (start it with: lazymemd)\n");
	return EX_DAEMON;
}

static bool read_full(int fd, char *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		struct pollfd p = { fd, POLLIN, 0 };
		int ready = poll(&p, 1, REPLY_TIMEOUT_MS);
		if (ready < 0 && errno == EINTR)
			continue;	/* ^C in free -s or top: this round finishes first */
		if (ready <= 0) {
			errno = ETIMEDOUT;
			return false;
		}
		ssize_t n = read(fd, buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (!n)
				errno = EPIPE;
			return false;
		}
		got += (size_t)n;
	}
	return true;
}

/* One request, one reply.  Returns EX_OK, or EX_REFUSED or EX_DAEMON once it has said why. */
static int ask(const char *request, struct reply *r)
{
	memset(r, 0, sizeof(*r));
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	int rc = lm__socket_path(O.socket, 1, path, sizeof(path));
	if (rc == -ENOENT && lm__socket_system_too(O.socket, 1))
		rc = snprintf(path, sizeof(path), "%s", LM__SOCKET_ROOT) < 0 ? -EINVAL : 0;
	if (rc < 0) {
		fprintf(stderr, "lazymem: no socket path: %s (use -S, LAZYMEM_SOCKET or "
				"XDG_RUNTIME_DIR)\n", strerror(-rc));
		return EX_DAEMON;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	memcpy(a.sun_path, path, strlen(path) + 1);
	int c = fd < 0 ? -1 : connect(fd, (struct sockaddr *)&a, sizeof(a));
	/* No daemon of the user's own: the system's, which shows each user their processes. */
	if (c < 0 && fd >= 0 && (errno == ENOENT || errno == ECONNREFUSED) &&
	    lm__socket_system_too(O.socket, 1)) {
		snprintf(path, sizeof(path), "%s", LM__SOCKET_ROOT);
		memcpy(a.sun_path, path, strlen(path) + 1);
		c = connect(fd, (struct sockaddr *)&a, sizeof(a));
	}
	if (c < 0) {
		int e = errno;
		if (fd >= 0)
			close(fd);
		return die_daemon(path, "cannot connect to", e);
	}
	size_t n = strlen(request);
	if (send(fd, request, n, MSG_NOSIGNAL) != (ssize_t)n || send(fd, "\n", 1, MSG_NOSIGNAL) != 1) {
		int e = errno;
		close(fd);
		return die_daemon(path, "cannot send to", e);
	}
	/* The head: "ok LENGTH" or "error NAME message", read a byte at a time (it is short). */
	char head[300];
	size_t h = 0;
	for (;;) {
		if (h == sizeof(head) - 1 || !read_full(fd, head + h, 1)) {
			int e = h == sizeof(head) - 1 ? EPROTO : errno;
			close(fd);
			return die_daemon(path, "no reply from", e);
		}
		if (head[h] == '\n')
			break;
		h++;
	}
	head[h] = '\0';
	unsigned long long len;
	char extra;
	if (!strncmp(head, "error ", 6)) {
		/* "ESRCH no lazymem runtime ..." is said as "lazymem: no lazymem runtime ...". */
		const char *msg = strchr(head + 6, ' ');
		fprintf(stderr, "lazymem: %s\n", msg ? msg + 1 : head + 6);
		close(fd);
		return EX_REFUSED;
	}
	if (sscanf(head, "ok %llu%c", &len, &extra) != 1 || len > REPLY_MAX) {
		close(fd);
		return die_daemon(path, "a malformed reply from", EPROTO);
	}
	r->body = malloc((size_t)len + 1);
	if (!r->body || !read_full(fd, r->body, (size_t)len)) {
		int e = r->body ? errno : ENOMEM;
		close(fd);
		free(r->body);
		r->body = NULL;
		return die_daemon(path, "a short reply from", e);
	}
	r->body[len] = '\0';
	r->len = (size_t)len;
	close(fd);
	return EX_OK;
}

/* Every process the caller may see, parsed from a "stats" reply. */
static int fetch(pid_t pid, struct lmd_entry **out, int *n)
{
	char req[32];
	snprintf(req, sizeof(req), pid ? "stats %d" : "stats", (int)pid);
	struct reply r;
	int rc = ask(req, &r);
	if (rc != EX_OK)
		return rc;
	int count = lmd_parse_stats(r.body, r.len, NULL, 0);
	if (count < 0) {
		free(r.body);
		fprintf(stderr, "lazymem: the daemon's stats reply does not parse\n");
		return EX_DAEMON;
	}
	*out = calloc((size_t)count + 1, sizeof(**out));
	if (!*out) {
		free(r.body);
		return EX_DAEMON;
	}
	*n = lmd_parse_stats(r.body, r.len, *out, (size_t)count);
	free(r.body);
	return EX_OK;
}

/* ---- units --------------------------------------------------------------------------------- */

/* Bytes as free(1) shows them: kibibytes, or with -h three significant digits and a unit. */
static const char *size_str(uint64_t bytes, char *buf, size_t len)
{
	if (O.bytes) {
		snprintf(buf, len, "%" PRIu64, bytes);
	} else if (!O.human) {
		snprintf(buf, len, "%" PRIu64, bytes / 1024);
	} else {
		lmd_size_str(bytes, buf, len);
	}
	return buf;
}

/* "64M", "1G", "4096", "1.5G": bytes.  Decimal digits only: no nan, inf or hex. */
static int parse_size(const char *s, uint64_t *out)
{
	size_t digits = strspn(s, "0123456789"), frac = 0;
	if (s[digits] == '.')
		frac = strspn(s + digits + 1, "0123456789") + 1;
	if (!digits)
		return -1;
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end != s + digits + frac || errno || v < 0)
		return -1;
	double mul = 1;
	switch (*end) {
	case 'k': case 'K': mul = 1024.0; end++; break;
	case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
	case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
	case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
	default: break;
	}
	if (*end == 'i' && mul > 1)
		end++;
	if ((*end == 'B' || *end == 'b') && end[1] == '\0')
		end++;
	if (*end || v * mul >= 18446744073709551615.0)
		return -1;
	*out = (uint64_t)(v * mul);
	return 0;
}

static int parse_pid(const char *s, pid_t *pid)
{
	char *end;
	long v = strtol(s, &end, 10);
	if (!*s || *end || v <= 0 || v > INT32_MAX)
		return -1;
	*pid = (pid_t)v;
	return 0;
}

/* ---- free ---------------------------------------------------------------------------------- */

static void sum_free(const struct lmd_entry *e, int n, struct lm_free *t)
{
	memset(t, 0, sizeof(*t));
	for (int i = 0; i < n; i++) {
		struct lm_free f;
		if (lm_stats_free(&e[i].st, &f) < 0)
			continue;
		/* One process without a budget leaves the sum unbounded too. */
#define ADD(x) t->x = t->x == LM_UNLIMITED || f.x == LM_UNLIMITED ? LM_UNLIMITED : t->x + f.x
		ADD(total);
		ADD(free);
		ADD(available);
#undef ADD
		t->used += f.used;
		t->buff_cache += f.buff_cache;
		t->swap_total += f.swap_total;
		t->swap_used += f.swap_used;
		t->swap_free += f.swap_free;
	}
}

/* A size, or "unlimited" (JSON: null) for what no budget bounds. */
static const char *bound_str(uint64_t v, char *buf, size_t len)
{
	if (v == LM_UNLIMITED)
		return O.json ? "null" : "unlimited";
	if (O.json) {
		snprintf(buf, len, "%" PRIu64, v);
		return buf;
	}
	return size_str(v, buf, len);
}

static void print_free(const struct lm_free *t, int n)
{
	char a[6][32];
	if (O.json) {
		printf("{\"processes\":%d,\"total\":%s,\"used\":%" PRIu64 ",\"free\":%s"
		       ",\"buff_cache\":%" PRIu64 ",\"available\":%s,\"swap_total\":%" PRIu64
		       ",\"swap_used\":%" PRIu64 ",\"swap_free\":%" PRIu64 "}\n",
		       n, bound_str(t->total, a[0], 32), t->used, bound_str(t->free, a[1], 32),
		       t->buff_cache, bound_str(t->available, a[2], 32), t->swap_total, t->swap_used,
		       t->swap_free);
		return;
	}
	printf("%-6s %12s %12s %12s %12s %12s\n", "", "total", "used", "free", "buff/cache",
	       "available");
	printf("%-6s %12s %12s %12s %12s %12s\n", "Lazy:", bound_str(t->total, a[0], 32),
	       size_str(t->used, a[1], 32), bound_str(t->free, a[2], 32),
	       size_str(t->buff_cache, a[3], 32), bound_str(t->available, a[4], 32));
	printf("%-6s %12s %12s %12s\n", "Swap:", size_str(t->swap_total, a[0], 32),
	       size_str(t->swap_used, a[1], 32), size_str(t->swap_free, a[2], 32));
}

static void nap(double seconds)
{
	struct timespec ts = { (time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9) };
	while (!interrupted && nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int cmd_free(void)
{
	/* As free(1): -c alone repeats every second. */
	if (O.count > 0 && O.interval <= 0)
		O.interval = 1;
	long count = O.count >= 0 ? O.count : O.interval > 0 ? -1 : 1;
	for (long i = 0; count < 0 || i < count; i++) {
		if (i) {
			nap(O.interval);
			if (interrupted)
				break;
			if (!O.json)
				printf("\n");
		}
		struct lmd_entry *e = NULL;
		int n = 0, rc = fetch(0, &e, &n);
		if (rc != EX_OK)
			return rc;
		struct lm_free t;
		sum_free(e, n, &t);
		print_free(&t, n);
		fflush(stdout);
		free(e);
		if (O.interval <= 0 && O.count < 0)
			break;
	}
	return EX_OK;
}

/* ---- ps and top ---------------------------------------------------------------------------- */

static uint64_t pages(const struct lmd_entry *e, uint64_t n)
{
	return n * (e->st.page_size ? e->st.page_size : 4096);
}

/*
 * A name or version as a JSON string, by the daemon's own writer:
 * control characters and all.  Both are at most 32 bytes (LMD_NAME_MAX,
 * LMD_VERSION_MAX), and a byte takes 6 at most escaped.
 */
static void json_name(const char *s)
{
	_Static_assert(LMD_VERSION_MAX <= LMD_NAME_MAX, "versions fit the names' buffer");
	char buf[6 * LMD_NAME_MAX + 3];
	lmd_json_string(s, buf, sizeof(buf));
	fputs(buf, stdout);
}

static void print_ps(const struct lmd_entry *e, int n)
{
	if (O.json) {
		printf("{\"processes\":[");
		for (int i = 0; i < n; i++) {
			printf("%s{\"pid\":%d,\"uid\":%u,\"name\":", i ? "," : "", (int)e[i].pid,
			       (unsigned)e[i].uid);
			json_name(e[i].name);
			printf(",\"runtimes\":%d,\"regions\":%" PRIu64 ",\"resident\":%" PRIu64
			       ",\"dirty\":%" PRIu64 ",\"swapped\":%" PRIu64 ",\"faults_per_s\":%.1f"
			       ",\"budget\":%" PRIu64 "}",
			       e[i].runtimes, e[i].st.regions_live, pages(&e[i], e[i].st.resident_pages),
			       pages(&e[i], e[i].st.resident_dirty), pages(&e[i], e[i].st.swapped_pages),
			       e[i].faults_per_s, e[i].st.budget_bytes);
		}
		printf("]}\n");
		return;
	}
	printf("%7s %-10s %-16s %7s %10s %10s %10s %10s %10s\n", "PID", "USER", "NAME", "REGIONS",
	       "RESIDENT", "DIRTY", "SWAPPED", "FAULTS/S", "BUDGET");
	for (int i = 0; i < n; i++) {
		char a[4][32], user[16];
		/* As ps(1): the name when there is one, else the number. */
		struct passwd *pw = getpwuid(e[i].uid);
		if (pw)
			snprintf(user, sizeof(user), "%.10s", pw->pw_name);
		else
			snprintf(user, sizeof(user), "%u", (unsigned)e[i].uid);
		printf("%7d %-10s %-16.16s %7" PRIu64 " %10s %10s %10s %10.0f %10s\n", (int)e[i].pid,
		       user, e[i].name, e[i].st.regions_live,
		       size_str(pages(&e[i], e[i].st.resident_pages), a[0], 32),
		       size_str(pages(&e[i], e[i].st.resident_dirty), a[1], 32),
		       size_str(pages(&e[i], e[i].st.swapped_pages), a[2], 32), e[i].faults_per_s,
		       e[i].st.budget_bytes ? size_str(e[i].st.budget_bytes, a[3], 32) : "-");
	}
}

static int cmd_ps(void)
{
	struct lmd_entry *e = NULL;
	int n = 0, rc = fetch(0, &e, &n);
	if (rc != EX_OK)
		return rc;
	print_ps(e, n);
	free(e);
	return EX_OK;
}

static int by_activity(const void *a, const void *b)
{
	const struct lmd_entry *x = a, *y = b;
	if (x->faults_per_s != y->faults_per_s)
		return x->faults_per_s < y->faults_per_s ? 1 : -1;
	return (x->st.resident_pages < y->st.resident_pages) -
	       (x->st.resident_pages > y->st.resident_pages);
}

static int cmd_top(void)
{
	double delay = O.interval > 0 ? O.interval : 2;
	bool tty = isatty(STDOUT_FILENO) && !O.json;
	for (long i = 0; !interrupted && (O.count < 0 || i < O.count); i++) {
		if (i)
			nap(delay);
		if (interrupted)
			break;
		struct lmd_entry *e = NULL;
		int n = 0, rc = fetch(0, &e, &n);
		if (rc != EX_OK)
			return rc;
		qsort(e, (size_t)n, sizeof(*e), by_activity);
		if (tty)
			printf("\033[H\033[2J");
		if (!O.json) {
			time_t now = time(NULL);
			char when[32];
			strftime(when, sizeof(when), "%H:%M:%S", localtime(&now));
			printf("lazymem top - %s, %d processes, every %.1fs\n\n", when, n, delay);
			struct lm_free t;
			sum_free(e, n, &t);
			print_free(&t, n);
			printf("\n");
		}
		print_ps(e, n);
		fflush(stdout);
		free(e);
	}
	return EX_OK;
}

/* ---- vmstat ------------------------------------------------------------------------------- */

/* What vmstat shows, summed over processes: counters by the second, and three gauges. */
struct vm_sample {
	pid_t pid;
	uint64_t faults, fills, swapin, swapout, evicts, refaults, budgets;
};

static struct vm_sample vm_of(const struct lmd_entry *e)
{
	const struct lm_stats *st = &e->st;
	return (struct vm_sample){
		.pid = e->pid,
		.faults = st->faults_missing + st->faults_wp,
		.fills = st->fills_zero + st->fills_memory + st->fills_file + st->fills_image,
		.swapin = st->swap_reads,
		.swapout = st->swap_writes,
		.evicts = st->evicted_pages,
		.refaults = st->refaults,
		.budgets = st->budget_changes,
	};
}

static int by_vm_pid(const void *a, const void *b)
{
	pid_t x = ((const struct vm_sample *)a)->pid, y = ((const struct vm_sample *)b)->pid;
	return (x > y) - (x < y);
}

/*
 * The rates between two samples: only processes in both count, so that
 * one that starts or exits in between adds neither its whole history nor
 * a negative rate.
 */
static struct vm_sample vm_delta(const struct vm_sample *a, int na, const struct vm_sample *b,
				 int nb)
{
	struct vm_sample d = { 0 };
	for (int i = 0, j = 0; i < na && j < nb;) {
		if (a[i].pid < b[j].pid) {
			i++;
		} else if (a[i].pid > b[j].pid) {
			j++;
		} else {
#define D(f) d.f += b[j].f >= a[i].f ? b[j].f - a[i].f : 0
			D(faults); D(fills); D(swapin); D(swapout); D(evicts); D(refaults); D(budgets);
#undef D
			i++, j++;
		}
	}
	return d;
}

/* lazymem vmstat [INTERVAL [COUNT]]: like vmstat(8), a line of rates per interval. */
static int cmd_vmstat(double delay, long count)
{
	struct vm_sample *prev = NULL;
	int nprev = 0;
	double tprev = 0;
	int rc = EX_OK;
	for (long i = 0; !interrupted && (count < 0 || i <= count); i++) {
		if (i)
			nap(delay);
		if (interrupted)
			break;
		struct lmd_entry *e = NULL;
		int n = 0;
		if ((rc = fetch(0, &e, &n)) != EX_OK)
			break;
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		double t = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
		struct vm_sample *cur = calloc((size_t)n + 1, sizeof(*cur));
		uint64_t res = 0, swapped = 0, budget = 0;
		for (int k = 0; k < n; k++) {
			cur[k] = vm_of(&e[k]);
			uint64_t ps = e[k].st.page_size ? e[k].st.page_size : 4096;
			res += e[k].st.resident_pages * ps;
			swapped += e[k].st.swapped_pages * ps;
			budget += e[k].st.budget_bytes;
		}
		qsort(cur, (size_t)n, sizeof(*cur), by_vm_pid);
		free(e);
		if (i) {
			struct vm_sample d = vm_delta(prev, nprev, cur, n);
			double dt = t - tprev > 0 ? t - tprev : 1;
			char a[3][32];
			if (O.json) {
				printf("{\"processes\":%d,\"resident\":%" PRIu64 ",\"swapped\":%" PRIu64
				       ",\"budget\":%" PRIu64 ",\"faults\":%.1f,\"fills\":%.1f,"
				       "\"swapin\":%.1f,\"swapout\":%.1f,\"evicted\":%.1f,"
				       "\"refaults\":%.1f,\"budget_changes\":%.1f}\n",
				       n, res, swapped, budget, (double)d.faults / dt, (double)d.fills / dt,
				       (double)d.swapin / dt, (double)d.swapout / dt, (double)d.evicts / dt,
				       (double)d.refaults / dt, (double)d.budgets / dt);
			} else {
				if ((i - 1) % 20 == 0)
					printf("%5s %9s %9s %9s %8s %8s %8s %8s %8s %8s %7s\n", "procs",
					       "resident", "swapped", "budget", "faults", "fills", "swapin",
					       "swapout", "evicted", "refaults", "budgets");
				printf("%5d %9s %9s %9s %8.0f %8.0f %8.0f %8.0f %8.0f %8.0f %7.1f\n", n,
				       size_str(res, a[0], 32), size_str(swapped, a[1], 32),
				       budget ? size_str(budget, a[2], 32) : "-", (double)d.faults / dt,
				       (double)d.fills / dt, (double)d.swapin / dt, (double)d.swapout / dt,
				       (double)d.evicts / dt, (double)d.refaults / dt, (double)d.budgets / dt);
			}
			fflush(stdout);
		}
		free(prev);
		prev = cur;
		nprev = n;
		tprev = t;
	}
	free(prev);
	return rc;
}

/* ---- stat ---------------------------------------------------------------------------------- */

static int cmd_stat(pid_t pid)
{
	struct lmd_entry *e = NULL;
	int n = 0, rc = fetch(pid, &e, &n);
	if (rc != EX_OK)
		return rc;
	if (n < 1) {
		fprintf(stderr, "lazymem: no lazymem runtime reports from process %d\n", (int)pid);
		free(e);
		return EX_REFUSED;
	}
	int need = lm_stats_format(&e->st, O.json ? LM_FORMAT_JSON : LM_FORMAT_TEXT, NULL, 0);
	char *buf = need >= 0 ? malloc((size_t)need + 1) : NULL;
	if (!buf) {
		free(e);
		return EX_DAEMON;
	}
	lm_stats_format(&e->st, O.json ? LM_FORMAT_JSON : LM_FORMAT_TEXT, buf, (size_t)need + 1);
	if (O.json) {
		printf("{\"pid\":%d,\"uid\":%u,\"name\":", (int)e->pid, (unsigned)e->uid);
		json_name(e->name);
		printf(",\"version\":");
		json_name(e->version);
		printf(",\"runtimes\":%d,\"faults_per_s\":%.1f,\"stats\":%s}\n", e->runtimes,
		       e->faults_per_s, buf);
	} else {
		printf("process %d (%s), uid %u, lazymem %s, %d runtime%s, %.1f faults/s\n\n",
		       (int)e->pid, e->name, (unsigned)e->uid, e->version, e->runtimes,
		       e->runtimes == 1 ? "" : "s", e->faults_per_s);
		/* The counters without their histogram lines, which come next as bars. */
		for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
			if (strncmp(line, "fill_latency_", 13))
				printf("  %s\n", line);
		uint64_t total = 0, top = 0;
		for (int b = 0; b < LM_LAT_BUCKETS; b++) {
			total += e->st.fill_latency[b];
			top = e->st.fill_latency[b] > top ? e->st.fill_latency[b] : top;
		}
		printf("\nfill latency (fault to install), %" PRIu64 " fills:\n", total);
		for (int b = 0; b < LM_LAT_BUCKETS && total; b++) {
			if (!e->st.fill_latency[b])
				continue;
			double ns = (double)(1ull << (b + 8));
			char lim[32];
			if (b == LM_LAT_BUCKETS - 1)
				snprintf(lim, sizeof(lim), ">= %.0f ms", ns / 2e6);
			else if (ns < 1e3)
				snprintf(lim, sizeof(lim), "< %.0f ns", ns);
			else if (ns < 1e6)
				snprintf(lim, sizeof(lim), "< %.1f us", ns / 1e3);
			else
				snprintf(lim, sizeof(lim), "< %.1f ms", ns / 1e6);
			int bar = (int)(40.0 * (double)e->st.fill_latency[b] / (double)top + 0.5);
			printf("  %12s %12" PRIu64 " %5.1f%% %.*s\n", lim, e->st.fill_latency[b],
			       100.0 * (double)e->st.fill_latency[b] / (double)total, bar > 0 ? bar : 1,
			       "########################################");
		}
	}
	free(buf);
	free(e);
	return EX_OK;
}

/* ---- budget, metrics, version -------------------------------------------------------------- */

/* budget PID SIZE, or min PID SIZE (lazymem budget PID --min SIZE): the least the policy may set. */
static int cmd_budget(const char *what, pid_t pid, uint64_t bytes)
{
	char req[64];
	snprintf(req, sizeof(req), "%s %d %" PRIu64, what, (int)pid, bytes);
	struct reply r;
	int rc = ask(req, &r);
	if (rc != EX_OK)
		return rc;
	char a[32];
	bool min = !strcmp(what, "min");
	if (O.json)
		printf("{\"pid\":%d,\"%s\":%" PRIu64 "}\n", (int)pid, min ? "budget_min" : "budget",
		       bytes);
	else
		printf("process %d: %s %s%s\n", (int)pid, min ? "least budget" : "budget",
		       bytes ? size_str(bytes, a, 32) : min ? "the daemon's default" : "none",
		       bytes && !O.human && !O.bytes ? " KiB" : "");
	free(r.body);
	return EX_OK;
}

static int cmd_raw(const char *request)
{
	struct reply r;
	int rc = ask(request, &r);
	if (rc != EX_OK)
		return rc;
	fwrite(r.body, 1, r.len, stdout);
	free(r.body);
	return EX_OK;
}

/*
 * The preload library `run` puts in front of the program: $LAZYMEM_PRELOAD,
 * else the one of the build tree this command was built in, else the
 * installed one.
 */
static int find_preload(char *out, size_t len)
{
	const char *env = getenv("LAZYMEM_PRELOAD");
	if (env && *env) {
		snprintf(out, len, "%s", env);
		return access(out, R_OK) == 0 ? 0 : -errno;
	}
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = 0;
		char *slash = strrchr(exe, '/');
		if (slash)
			*slash = 0;
		static const char *const rel[] = { "/../lib/.libs/", "/../../lib/.libs/" };
		for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
			int k = snprintf(out, len, "%s%sliblazymem-preload.so", exe, rel[i]);
			if (k > 0 && (size_t)k < len && access(out, R_OK) == 0)
				return 0;
		}
	}
	snprintf(out, len, "%s/liblazymem-preload.so", LM_LIBDIR);
	return access(out, R_OK) == 0 ? 0 : -errno;
}

static void run_usage(FILE *f)
{
	fprintf(f,
		"usage: lazymem run [OPTIONS] [--] PROGRAM [ARGS]\n"
		"  -b, --budget SIZE      resident memory at most (K, M, G, T); default none\n"
		"  -m, --mode MODE        thread (default) or signal: how faults are resolved\n"
		"  -s, --swap-dir DIR     where the swap file goes (default $TMPDIR, else /tmp)\n"
		"      --swap URL         evicted pages go to a Redis Cluster instead:\n"
		"                         redis://HOST:PORT[,HOST:PORT...][?wait=N&timeout=MS&retry=MS]\n"
		"  -t, --threshold SIZE   anonymous mmaps this large and up are lazy (default 256K)\n"
		"      --no-inherit       programs it executes run without lazy memory\n"
		"      --no-report        do not report to lazymemd\n"
		"  -q, --quiet            no message when lazy memory cannot be had\n"
		"      --stats FILE       the runtime's counters, as JSON, to FILE at exit\n"
		"exit: the program's own status; 125 lazymem failed, 126 cannot execute, 127 not found\n");
}

/*
 * Deletes the swap keys a run's runtimes left in the cluster: every key
 * of lm:swap:TOKEN:*, master by master (SCAN, then UNLINK one key at a
 * time, pipelined: keys of several slots cannot go in one UNLINK).  The
 * masters come from CLUSTER SLOTS of the first seed that answers.
 */
static int purge_swap(const char *url, const char *token)
{
	const char *p = url + 8;
	size_t hosts = strcspn(p, "/?");
	char host[64];
	int port = 0;
	redisContext *seed = NULL;
	for (size_t at = 0; at < hosts && !seed;) {
		size_t len = strcspn(p + at, ",/?");
		if (lm__cluster_endpoint(p + at, len, host, sizeof(host), &port) == 0) {
			seed = redisConnectWithTimeout(host, port, (struct timeval){ 2, 0 });
			if (seed && seed->err) {
				redisFree(seed);
				seed = NULL;
			}
		}
		at += len + 1;
	}
	if (!seed)
		return -EHOSTUNREACH;
	redisSetTimeout(seed, (struct timeval){ 5, 0 });
	redisReply *slots = redisCommand(seed, "CLUSTER SLOTS");
	redisFree(seed);
	if (!slots || slots->type != REDIS_REPLY_ARRAY) {
		freeReplyObject(slots);
		return -EPROTO;
	}
	char match[96];
	snprintf(match, sizeof(match), "lm:swap:%s:*", token);
	int rc = 0;
	for (size_t i = 0; i < slots->elements; i++) {
		redisReply *e = slots->element[i];
		if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
		    e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2)
			continue;
		redisContext *m = redisConnectWithTimeout(e->element[2]->element[0]->str,
							  (int)e->element[2]->element[1]->integer,
							  (struct timeval){ 2, 0 });
		if (!m || m->err) {
			redisFree(m);
			rc = -EHOSTUNREACH;
			continue;
		}
		redisSetTimeout(m, (struct timeval){ 5, 0 });
		char cursor[32] = "0";
		do {
			redisReply *r = redisCommand(m, "SCAN %s MATCH %s COUNT 1000", cursor, match);
			if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
				freeReplyObject(r);
				rc = -EIO;
				break;
			}
			snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
			redisReply *keys = r->element[1];
			for (size_t k = 0; k < keys->elements; k++)
				redisAppendCommand(m, "UNLINK %b", keys->element[k]->str,
						   (size_t)keys->element[k]->len);
			for (size_t k = 0; k < keys->elements; k++) {
				redisReply *x = NULL;
				if (redisGetReply(m, (void **)&x) != REDIS_OK)
					rc = -EIO;
				freeReplyObject(x);
			}
			freeReplyObject(r);
		} while (strcmp(cursor, "0") && !m->err);
		redisFree(m);
	}
	freeReplyObject(slots);
	return rc;
}

static volatile sig_atomic_t run_child;

static void forward(int sig)
{
	if (run_child > 0)
		kill(run_child, sig);
}

/*
 * With the swap in a cluster, the program runs as a child and this
 * process waits for it: the preload library never closes its runtime
 * (threads may run until the process is gone), so its keys are deleted
 * here, once the program and whatever it executed that inherited the
 * run's token are done with them.  Signals sent to this process go to
 * the program (the terminal's go to both: the interrupt and quit keys
 * are left to it), and its status is this process's, a signal included.
 */
static int run_with_purge(char **argv, const char *url)
{
	enum { EX_RUN = 125, EX_NOEXEC = 126, EX_NOTFOUND = 127 };
	char token[32];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(token, sizeof(token), "run-%d-%08lx", (int)getpid(),
		 (unsigned long)(ts.tv_nsec ^ (ts.tv_sec << 20)) & 0xffffffffUL);
	setenv("LAZYMEM_SWAP_RUN", token, 1);
	int sigs[] = { SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGWINCH, SIGCONT };
	pid_t child = fork();
	if (child < 0) {
		fprintf(stderr, "lazymem: run: fork: %s\n", strerror(errno));
		return EX_RUN;
	}
	if (child == 0) {
		execvp(argv[0], argv);
		int err = errno;
		fprintf(stderr, "lazymem: run: %s: %s\n", argv[0], strerror(err));
		_exit(err == ENOENT ? EX_NOTFOUND : EX_NOEXEC);
	}
	run_child = child;
	struct sigaction sa = { .sa_handler = forward };
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
	signal(SIGINT, SIG_IGN);
	signal(SIGQUIT, SIG_IGN);
	int st;
	while (waitpid(child, &st, 0) < 0 && errno == EINTR)
		;
	run_child = 0;
	/*
	 * A cluster no seed of which answers now is most likely one the
	 * program could not use either (it said so): no second line for it.
	 */
	int rc = purge_swap(url, token);
	if (rc < 0 && rc != -EHOSTUNREACH && !getenv("LAZYMEM_QUIET"))
		fprintf(stderr, "lazymem: run: could not delete the program's swap keys "
			"(lm:swap:%s:*) from %s: %s\n", token, url, strerror(-rc));
	if (WIFSIGNALED(st)) {
		int sig = WTERMSIG(st);
		signal(sig, SIG_DFL);
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, sig);
		sigprocmask(SIG_UNBLOCK, &set, NULL);
		kill(getpid(), sig);
		return 128 + sig;
	}
	return WEXITSTATUS(st);
}

/*
 * lazymem run: executes the program with the preload library and its
 * settings in the environment; the program replaces this process, so its
 * status and signals are its own (with a swap in a cluster, it runs as a
 * child instead: see run_with_purge).
 */
static int cmd_run(int argc, char **argv)
{
	enum { EX_RUN = 125, EX_NOEXEC = 126, EX_NOTFOUND = 127 };
	enum { NO_INHERIT = 256, NO_REPORT, STATS, SWAP, HELP };
	static const struct option longs[] = {
		{ "budget", required_argument, NULL, 'b' },
		{ "mode", required_argument, NULL, 'm' },
		{ "swap-dir", required_argument, NULL, 's' },
		{ "swap", required_argument, NULL, SWAP },
		{ "threshold", required_argument, NULL, 't' },
		{ "no-inherit", no_argument, NULL, NO_INHERIT },
		{ "no-report", no_argument, NULL, NO_REPORT },
		{ "quiet", no_argument, NULL, 'q' },
		{ "stats", required_argument, NULL, STATS },
		{ "help", no_argument, NULL, HELP },
		{ NULL, 0, NULL, 0 },
	};
	uint64_t bytes;
	int opt;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "+b:m:s:t:q", longs, NULL)) != -1) {
		switch (opt) {
		case 'b':
			if (parse_size(optarg, &bytes) < 0) {
				fprintf(stderr, "lazymem: run: --budget %s is not a size\n", optarg);
				return EX_USAGE;
			}
			setenv("LAZYMEM_BUDGET", optarg, 1);
			break;
		case 'm':
			if (strcmp(optarg, "thread") && strcmp(optarg, "signal")) {
				fprintf(stderr, "lazymem: run: --mode is thread or signal\n");
				return EX_USAGE;
			}
			setenv("LAZYMEM_MODE", optarg, 1);
			break;
		case 's': {
			struct stat st;
			if (stat(optarg, &st) < 0 || !S_ISDIR(st.st_mode) ||
			    access(optarg, W_OK | X_OK) < 0) {
				fprintf(stderr, "lazymem: run: --swap-dir %s: %s\n", optarg,
					errno && !(stat(optarg, &st) == 0 && !S_ISDIR(st.st_mode))
						? strerror(errno) : "not a directory");
				return EX_USAGE;
			}
			setenv("LAZYMEM_SWAP_DIR", optarg, 1);
			break;
		}
		case 't':
			if (parse_size(optarg, &bytes) < 0 || bytes == 0) {
				fprintf(stderr, "lazymem: run: --threshold %s is not a size above 0\n",
				optarg);
				return EX_USAGE;
			}
			char num[32];
			snprintf(num, sizeof(num), "%" PRIu64, bytes);
			setenv("LAZYMEM_THRESHOLD", num, 1);
			break;
		case SWAP:
			if (strncmp(optarg, "redis://", 8)) {
				fprintf(stderr, "lazymem: run: --swap %s is not a redis:// URL\n", optarg);
				return EX_USAGE;
			}
			setenv("LAZYMEM_SWAP", optarg, 1);
			break;
		case NO_INHERIT: setenv("LAZYMEM_NO_INHERIT", "1", 1); break;
		case NO_REPORT: setenv("LAZYMEM_SOCKET", "off", 1); break;
		case 'q': setenv("LAZYMEM_QUIET", "1", 1); break;
		case STATS: setenv("LAZYMEM_STATS", optarg, 1); break;
		case HELP: run_usage(stdout); return EX_OK;
		default: run_usage(stderr); return EX_USAGE;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "lazymem: run: no program given\n");
		run_usage(stderr);
		return EX_USAGE;
	}
	if (O.socket && !getenv("LAZYMEM_SOCKET"))
		setenv("LAZYMEM_SOCKET", O.socket, 1);
	char lib[PATH_MAX], pre[2 * PATH_MAX];
	int rc = find_preload(lib, sizeof(lib));
	if (rc < 0) {
		fprintf(stderr, "lazymem: run: no preload library (%s: %s); set LAZYMEM_PRELOAD\n",
			lib, strerror(-rc));
		return EX_RUN;
	}
	const char *old = getenv("LD_PRELOAD");
	snprintf(pre, sizeof(pre), "%s%s%s", lib, old && *old ? ":" : "", old ? old : "");
	setenv("LD_PRELOAD", pre, 1);
	const char *swap = getenv("LAZYMEM_SWAP");
	if (swap && !strncmp(swap, "redis://", 8))
		return run_with_purge(argv + optind, swap);
	execvp(argv[optind], argv + optind);
	int err = errno;
	fprintf(stderr, "lazymem: run: %s: %s\n", argv[optind], strerror(err));
	return err == ENOENT ? EX_NOTFOUND : EX_NOEXEC;
}

/* Where "run" is among the arguments, if it is the command: the index, else 0. */
static int run_index(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--"))
			return 0;
		if (argv[i][0] == '-') {
			if (!strcmp(argv[i], "-S") || !strcmp(argv[i], "--socket"))
				i++;
			continue;
		}
		return strcmp(argv[i], "run") ? 0 : i;
	}
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: lazymem [-S SOCKET] [--json] [-h|-b] COMMAND [ARGS]\n"
		"commands:\n"
		"  free [-s SECONDS] [-c COUNT]  lazy memory of every process, like free(1)\n"
		"  ps                           one line per process\n"
		"  stat PID                     every counter of a process, and its fault latencies\n"
		"  top [-d SECONDS] [-n COUNT]  ps, refreshed\n"
		"  budget PID SIZE              set a process's memory budget (0: none); K, M, G, T\n"
		"  budget PID --min SIZE        the least budget lazymemd's pressure policy may set\n"
		"  pressure                     what the pressure policy sees, what it did and why\n"
		"  vmstat [INTERVAL [COUNT]]    rates per second like vmstat(8): faults, fills, swap\n"
		"                               in and out, evictions, refaults, budget changes\n"
		"  run [OPTIONS] PROGRAM [ARGS] run a program on lazy memory (lazymem run --help)\n"
		"  metrics                      Prometheus text exposition\n"
		"  version                      this command's and the daemon's version\n"
		"options:\n"
		"  -S, --socket PATH  lazymemd's socket (default: $LAZYMEM_SOCKET, else the usual place)\n"
		"  -j, --json         JSON output\n"
		"  -h, --human        sizes with units (default: KiB)\n"
		"  -b, --bytes        sizes in bytes\n"
		"      --help         this text\n"
		"exit: 0 done, 1 refused (no such process, not yours, failed), 2 usage, 3 no daemon\n");
}

int main(int argc, char **argv)
{
	static const struct option longs[] = {
		{ "socket", required_argument, NULL, 'S' }, { "json", no_argument, NULL, 'j' },
		{ "human", no_argument, NULL, 'h' },	    { "bytes", no_argument, NULL, 'b' },
		{ "seconds", required_argument, NULL, 's' }, { "count", required_argument, NULL, 'c' },
		{ "delay", required_argument, NULL, 'd' },   { "iterations", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'H' },	     { "version", no_argument, NULL, 'V' },
		{ "min", required_argument, NULL, 'm' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;
	char *end;
	/* run takes its own options, and everything after the program is the program's. */
	int run = run_index(argc, argv);
	while ((opt = getopt_long(run ? run : argc, argv, "S:jhbs:c:d:n:V", longs, NULL)) != -1) {
		switch (opt) {
		case 'S': O.socket = optarg; break;
		case 'j': O.json = true; break;
		case 'h': O.human = true; break;
		case 'b': O.bytes = true; break;
		case 's': case 'd':
			O.interval = strtod(optarg, &end);
			if (*end || O.interval <= 0 || O.interval > 86400) {
				fprintf(stderr, "lazymem: -%c wants seconds, more than 0\n", opt);
				return EX_USAGE;
			}
			break;
		case 'c': case 'n':
			O.count = strtol(optarg, &end, 10);
			if (*end || O.count < 1) {
				fprintf(stderr, "lazymem: -%c wants a count, at least 1\n", opt);
				return EX_USAGE;
			}
			break;
		case 'm': O.min = optarg; break;
		case 'H': usage(stdout); return EX_OK;
		case 'V': printf("lazymem %s\n", PACKAGE_VERSION); return EX_OK;
		default: usage(stderr); return EX_USAGE;
		}
	}
	if (run)
		return cmd_run(argc - run, argv + run);
	if (optind >= argc) {
		usage(stderr);
		return EX_USAGE;
	}
	signal(SIGPIPE, SIG_IGN);
	/*
	 * Only the repeating commands catch ^C, to finish their last round;
	 * a single request is simply interrupted.
	 */
	struct sigaction sa = { .sa_handler = on_signal, .sa_flags = SA_RESTART };
	if (argc > optind && (!strcmp(argv[optind], "top") || !strcmp(argv[optind], "free") ||
			      !strcmp(argv[optind], "vmstat"))) {
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
	}
	const char *cmd = argv[optind];
	int args = argc - optind - 1;
	char **arg = argv + optind + 1;
	pid_t pid;
	uint64_t bytes = 0;
	if (!strcmp(cmd, "free") && !args)
		return cmd_free();
	if (!strcmp(cmd, "ps") && !args)
		return cmd_ps();
	if (!strcmp(cmd, "top") && !args)
		return cmd_top();
	/* With --json, the daemon's own JSON of every counter: what metrics has, as JSON. */
	if (!strcmp(cmd, "metrics") && !args)
		return cmd_raw(O.json ? "json" : "metrics");
	if (!strcmp(cmd, "version") && !args) {
		printf("lazymem %s\n", PACKAGE_VERSION);
		fflush(stdout);
		return cmd_raw("version");
	}
	if (!strcmp(cmd, "stat") && args == 1) {
		if (parse_pid(arg[0], &pid) < 0) {
			fprintf(stderr, "lazymem: stat: %s is not a process id\n", arg[0]);
			return EX_USAGE;
		}
		return cmd_stat(pid);
	}
	if (!strcmp(cmd, "pressure") && !args)
		return cmd_raw("pressure");
	if (!strcmp(cmd, "vmstat") && args <= 2) {
		double delay = 1;
		long count = -1;
		if ((args >= 1 && (delay = strtod(arg[0], &end), *end || delay <= 0 || delay > 86400)) ||
		    (args == 2 && (count = strtol(arg[1], &end, 10), *end || count < 1))) {
			fprintf(stderr, "lazymem: vmstat: usage: vmstat [INTERVAL [COUNT]] (seconds, "
					"more than 0; count at least 1)\n");
			return EX_USAGE;
		}
		return cmd_vmstat(delay, count);
	}
	if (!strcmp(cmd, "budget") && (args == 2 || (args == 1 && O.min))) {
		uint64_t min = 0;
		if (parse_pid(arg[0], &pid) < 0 || (args == 2 && parse_size(arg[1], &bytes) < 0) ||
		    (O.min && parse_size(O.min, &min) < 0)) {
			fprintf(stderr, "lazymem: budget: usage: budget PID SIZE, or budget PID --min SIZE "
					"(SIZE like 4096, 512M, 2G)\n");
			return EX_USAGE;
		}
		/* 0.5 is not 0: it must not lift the budget by rounding down to it. */
		const char *sz[2] = { args == 2 ? arg[1] : NULL, O.min };
		uint64_t val[2] = { bytes, min };
		for (int k = 0; k < 2; k++)
			if (sz[k] && !val[k] && strpbrk(sz[k], "123456789")) {
				fprintf(stderr, "lazymem: budget: %s is less than a byte; 0 (exactly) %s\n",
					sz[k], k ? "leaves the floor to the daemon" : "lifts the budget");
				return EX_USAGE;
			}
		int rc = O.min ? cmd_budget("min", pid, min) : EX_OK;
		return rc == EX_OK && args == 2 ? cmd_budget("budget", pid, bytes) : rc;
	}
	fprintf(stderr, "lazymem: %s: unknown command or wrong arguments (try --help)\n", cmd);
	return EX_USAGE;
}
