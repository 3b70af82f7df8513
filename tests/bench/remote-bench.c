/* SPDX-License-Identifier: MIT */
/* lazymem-bench's remote.* measurements: far memory and restores from a Redis Cluster, on simulated links. */
#define _GNU_SOURCE
#include "swap-bench.h"

#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lazymem.h"

/*
 * Three masters and three replicas, each redis-server in a network
 * namespace of its own (scripts/redis-cluster.sh); the benchmark joins
 * machine a's namespace, whose link to the cluster is, in turn, the bare
 * veth pair and bridge, then the harness's delaying relay (lmrc-relay)
 * adding nothing, 50 us and 500 us each way: a simulated round trip of
 * 100 us and of 1 ms, this kernel having no netem.  Per link:
 *
 *  remote.rtt.<link>          a PING's round trip (median, us): the link
 *                             itself; relay0 - veth is what the relay adds;
 *  remote.refault.rand.<link> a random read of a page evicted to the
 *                             cluster (64 MiB region, budget a quarter),
 *                             us per access, against the same on lazymem's
 *                             local swap file: remote / local, lower is
 *                             better (FluidMem: 24.9 us remote, 106.6 us
 *                             from a local SSD);
 *  remote.restore.seq.<link>  a lazy restore of a 64 MiB image read whole,
 *                             in order, from the cluster, against the same
 *                             image from a local file with a cold cache:
 *                             us per MiB, remote / local, lower is better.
 *
 * At 100 us, and at 1 ms with the suffix .rtt1ms: the swap.* workloads
 * over 2x the budget (8 MiB) with the swap in the cluster, against the
 * kernel's swap to the local disk at the same budget (accesses per
 * second, lazymem / kernel, higher is better), lazymem's local swap file
 * beside them (swap-bench.c); and at 100 us, restore.remote.first_access:
 * a 4 GiB image (256 MiB with --quick) opened from the cluster and one
 * page touched, in ms, against reading the whole image from the cluster
 * (as "kernel": what a restore that is not lazy waits for).
 */

static const char *const links[][2] = {
	{ "veth", "off" }, { "relay0", "0" }, { "100us", "50" }, { "1ms", "500" },
};
#define NLINKS (sizeof(links) / sizeof(links[0]))

static const char names[] =
	"remote.rtt.veth remote.rtt.relay0 remote.rtt.100us remote.rtt.1ms "
	"remote.refault.rand.veth remote.refault.rand.relay0 "
	"remote.refault.rand.100us remote.refault.rand.1ms "
	"remote.restore.seq.veth remote.restore.seq.relay0 "
	"remote.restore.seq.100us remote.restore.seq.1ms restore.remote.first_access "
	"swap.remote.uniform.2x.read swap.remote.uniform.2x.write swap.remote.zipf.2x.read "
	"swap.remote.zipf.2x.write swap.remote.seq.2x.read swap.remote.seq.2x.write "
	"swap.remote.uniform.2x.read.rtt1ms swap.remote.uniform.2x.write.rtt1ms "
	"swap.remote.zipf.2x.read.rtt1ms swap.remote.zipf.2x.write.rtt1ms "
	"swap.remote.seq.2x.read.rtt1ms swap.remote.seq.2x.write.rtt1ms";

bool remote_bench_selected(const char *only)
{
	return !only || strstr(names, only);
}

static bool want(const struct swap_bench_config *c, const char *name)
{
	return !c->only || strstr(name, c->only);
}

static char cluster_dir[256];

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int sh(const char *fmt, ...)
{
	char cmd[4 * PATH_MAX];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(cmd))
		return -ENAMETOOLONG;
	int st = system(cmd);
	return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -EIO;
}

/* The median PING round trip, in us, of n on one connection. */
static double ping_us(const char *host, int port, int n)
{
	redisContext *ctx = redisConnectWithTimeout(host, port, (struct timeval){ 2, 0 });
	if (!ctx || ctx->err)
		return -1;
	double *v = malloc((size_t)n * sizeof(*v));
	for (int i = 0; i < n; i++) {
		uint64_t t = now_ns();
		redisReply *r = redisCommand(ctx, "PING");
		v[i] = (double)(now_ns() - t) / 1e3;
		freeReplyObject(r);
	}
	double m = median(v, n);
	free(v);
	redisFree(ctx);
	return m;
}

static struct lm_runtime *open_rt(const char *url, size_t budget)
{
	struct lm_options o;
	lm_options_init(&o);
	o.flags = LM_OPT_NO_ENV | LM_OPT_NO_REPORT;
	o.mode = LM_MODE_THREAD;
	o.budget = budget;
	o.swap_url = url;
	struct lm_runtime *rt = NULL;
	int rc = lm_runtime_open(&o, &rt);
	if (rc < 0)
		fprintf(stderr, "lazymem-bench: remote: runtime (%s): %s\n", url ? url : "local",
			lm_strerror(rc));
	return rt;
}

/* us per random read of an evicted page: 64 MiB written under a 16 MiB budget, then read at random. */
static double refault_us(const char *url, size_t pages, size_t reads)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	struct lm_runtime *rt = open_rt(url, pages * ps / 4);
	struct lm_region *r;
	if (!rt)
		return -1;
	double us = -1;
	if (lm_region_create_zero(rt, pages * ps, 0, &r) == 0) {
		volatile unsigned char *p = lm_region_addr(r);
		for (size_t i = 0; i < pages; i++)
			p[i * ps] = (unsigned char)(i | 1);
		uint64_t seed = 0x9e3779b97f4a7c15ull;
		unsigned bad = 0;
		uint64_t t = now_ns();
		for (size_t k = 0; k < reads; k++) {
			size_t i = (size_t)(xorshift(&seed) % pages);
			bad += p[i * ps] != (unsigned char)(i | 1);
		}
		us = (double)(now_ns() - t) / 1e3 / (double)reads;
		if (bad)
			us = -1;
		lm_region_destroy(r);
	}
	lm_runtime_close(rt);
	return us;
}

/* us per MiB of a whole lazy restore read in order: the image by name (a path or a URL). */
static double restore_us_per_mib(const char *where, size_t len, bool drop)
{
	if (drop)
		drop_caches();
	struct lm_runtime *rt = open_rt(NULL, 0);
	struct lm_region *r;
	if (!rt)
		return -1;
	double us = -1;
	uint64_t t = now_ns();
	if (lm_region_create_image_at(rt, where, 0, &r) == 0) {
		const volatile uint64_t *p = lm_region_addr(r);
		uint64_t sum = 0;
		for (size_t i = 0; i < len / 8; i += 512)
			sum += p[i];
		us = (double)(now_ns() - t) / 1e3 / (double)(len >> 20);
		if (!sum)
			us = -1;
		lm_region_destroy(r);
	}
	lm_runtime_close(rt);
	return us;
}

/* A 64 MiB image of non-zero pages, saved to where (a path or a URL). */
static int save_image(const char *where, size_t len)
{
	struct lm_runtime *rt = open_rt(NULL, 0);
	struct lm_region *r;
	struct lm_snapshot *s;
	if (!rt)
		return -1;
	int rc = lm_region_create_zero(rt, len, 0, &r);
	if (!rc) {
		uint64_t *p = lm_region_addr(r), seed = 0x2545f4914f6cdd1dull;
		for (size_t i = 0; i < len / 8; i++)
			p[i] = xorshift(&seed) | 1;
		rc = lm_snapshot_take(r, 0, &s);
		if (!rc) {
			rc = lm_snapshot_save(s, where, LM_SAVE_WAIT);
			lm_snapshot_release(s);
		}
		lm_region_destroy(r);
	}
	lm_runtime_close(rt);
	return rc;
}

/*
 * restore.remote.first_access: a large image in the cluster opened and one
 * page in its middle touched, ms, against reading it whole.  The image is
 * put there for this and deleted after (its keys by the generation's name).
 */
static int first_access(const struct swap_bench_config *c, bool quick, double rtt, int runs)
{
	const char *url = "redis://10.251.0.11:7000/bench-first-access";
	size_t len = quick ? (256u << 20) : (4ull << 30);
	if (save_image(url, len) < 0)
		return -EIO;
	double fv[runs], wv[runs];
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	for (int i = 0; i < runs; i++) {
		struct lm_runtime *rt = open_rt(NULL, 0);
		struct lm_region *r;
		fv[i] = wv[i] = -1;
		if (!rt)
			return -EIO;
		uint64_t t = now_ns();
		if (lm_region_create_image_at(rt, url, 0, &r) == 0) {
			volatile unsigned char *p = lm_region_addr(r);
			size_t pg = (len / ps) / 2 + (size_t)i * 4099;
			if (p[pg * ps])
				fv[i] = (double)(now_ns() - t) / 1e6;
			lm_region_destroy(r);
		}
		lm_runtime_close(rt);
		wv[i] = restore_us_per_mib(url, len, false) * (double)(len >> 20) / 1e3;
	}
	double f = median(fv, runs), w = median(wv, runs), target = 10 + 2 * rtt / 1e3;
	const char *name = "restore.remote.first_access";
	if (c->json)
		printf("{\"name\":\"%s\",\"unit\":\"ms\",\"lazymem\":%.2f,\"kernel\":%.1f,"
		       "\"ratio\":%.4f,\"better\":\"lower\",\"image_bytes\":%zu,\"target_ms\":%.2f}\n",
		       name, f, w, w > 0 ? f / w : 0, len, target);
	else
		printf("%-34s %12.2f %12.1f %8.4f  ms (%zu MiB image; target <= %.2f ms: %s)\n", name,
		       f, w, w > 0 ? f / w : 0, len >> 20, target, f >= 0 && f <= target ? "ok" : "MISS");
	fflush(stdout);
	/* The image stays until the cluster is stopped, at the end. */
	return 0;
}

static void report(const struct swap_bench_config *c, const char *name, const char *unit,
		   double remote, const char *versus, double local, double rtt)
{
	double ratio = local > 0 ? remote / local : 0;
	if (c->json)
		printf("{\"name\":\"%s\",\"unit\":\"%s\",\"lazymem\":%.2f,\"%s\":%.2f,\"ratio\":%.3f,"
		       "\"better\":\"lower\",\"rtt_us\":%.1f}\n",
		       name, unit, remote, versus, local, ratio, rtt);
	else
		printf("%-34s %12.2f %12.2f %8.2f  %s (rtt %.0f us)\n", name, remote, local, ratio,
		       unit, rtt);
	fflush(stdout);
}

int remote_bench_run(const struct swap_bench_config *c, bool quick)
{
	if (!remote_bench_selected(c->only))
		return 0;
	if (geteuid() != 0 || system("command -v redis-server >/dev/null && command -v ip >/dev/null")) {
		fprintf(stderr, "lazymem-bench: remote.*: skipped (needs root, redis-server, iproute2)\n");
		return 0;
	}
	snprintf(cluster_dir, sizeof(cluster_dir), "%s/lm-bench-cluster.XXXXXX",
		 c->dir ? c->dir : "/tmp");
	if (!mkdtemp(cluster_dir))
		return -errno;
	char script[PATH_MAX], relay[PATH_MAX];
	snprintf(script, sizeof(script), "%s/scripts/redis-cluster.sh", LM_SRCDIR);
	snprintf(relay, sizeof(relay), "%s/tests/lmrc-relay", LM_BUILDDIR);
	if (sh("%s start %s/c >/dev/null", script, cluster_dir) < 0) {
		fprintf(stderr, "lazymem-bench: remote.*: the cluster did not start\n");
		return -EIO;
	}
	/* This thread, and the runtimes' threads it starts, on machine a. */
	int home = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	int ns = open("/run/netns/lmrc-a", O_RDONLY | O_CLOEXEC);
	int rc = home < 0 || ns < 0 || setns(ns, CLONE_NEWNET) < 0 ? -errno : 0;
	if (ns >= 0)
		close(ns);
	const char *seed = "10.251.0.11:7000";
	char url[128], img[128], local[sizeof(cluster_dir) + 16];
	snprintf(url, sizeof(url), "redis://%s", seed);
	snprintf(img, sizeof(img), "redis://%s/bench-image", seed);
	snprintf(local, sizeof(local), "%s/image", cluster_dir);
	size_t pages = quick ? 4096 : 16384, reads = quick ? 500 : 2000;
	size_t img_len = (size_t)(quick ? 16 : 64) << 20;
	int runs = c->runs > 0 ? c->runs : 3;
	bool restore = false;
	for (size_t l = 0; l < NLINKS; l++) {
		char name[96];
		snprintf(name, sizeof(name), "remote.restore.seq.%s", links[l][0]);
		restore |= want(c, name);
	}
	if (!rc && restore && (save_image(img, img_len) < 0 || save_image(local, img_len) < 0))
		rc = -EIO;
	/* The peers do not depend on the link: measured once, medians of the runs. */
	double local_refault = -1, local_restore = -1;
	double v[runs > 0 ? runs : 1];
	if (!rc) {
		for (int i = 0; i < runs; i++)
			v[i] = refault_us(NULL, pages, reads);
		local_refault = median(v, runs);
		for (int i = 0; restore && i < runs; i++)
			v[i] = restore_us_per_mib(local, img_len, true);
		local_restore = restore ? median(v, runs) : -1;
	}
	if (!rc && !c->json)
		printf("\n%-34s %12s %12s %8s  (a Redis Cluster of 3+3 in namespaces; links simulated)\n",
		       "remote", "cluster", "local", "ratio");
	for (size_t l = 0; !rc && l < NLINKS; l++) {
		char name[96];
		if ((rc = sh("LMRC_RELAY=%s %s relay %s/c %s", relay, script, cluster_dir,
			     links[l][1])) < 0)
			break;
		double rtt = ping_us("10.251.0.11", 7000, 2000);
		snprintf(name, sizeof(name), "remote.rtt.%s", links[l][0]);
		if (want(c, name)) {
			if (c->json)
				printf("{\"name\":\"%s\",\"unit\":\"us\",\"network\":%.1f}\n", name, rtt);
			else
				printf("%-34s %12.1f %12s %8s  us (a PING)\n", name, rtt, "", "");
		}
		snprintf(name, sizeof(name), "remote.refault.rand.%s", links[l][0]);
		if (want(c, name)) {
			for (int i = 0; i < runs; i++)
				v[i] = refault_us(url, pages, reads);
			report(c, name, "us_per_access", median(v, runs), "local_swap", local_refault,
			       rtt);
		}
		snprintf(name, sizeof(name), "remote.restore.seq.%s", links[l][0]);
		if (restore && want(c, name)) {
			for (int i = 0; i < runs; i++)
				v[i] = restore_us_per_mib(img, img_len, false);
			report(c, name, "us_per_MiB", median(v, runs), "local_file", local_restore, rtt);
		}
		bool slow = !strcmp(links[l][0], "1ms");
		if (!strcmp(links[l][0], "100us") || slow) {
			struct swap_bench_config sc = *c;
			sc.mode = LM_MODE_THREAD;
			sc.budget = 8u << 20;
			sc.swap_url = url;
			sc.suffix = slow ? ".rtt1ms" : NULL;
			if ((rc = swap_bench_run(&sc)) < 0)
				break;
		}
		if (!strcmp(links[l][0], "100us") && want(c, "restore.remote.first_access"))
			rc = first_access(c, quick, rtt, runs);
	}
	if (home >= 0) {
		setns(home, CLONE_NEWNET);
		close(home);
	}
	unlink(local);
	sh("%s stop %s/c >/dev/null 2>&1", script, cluster_dir);
	sh("rm -rf %s", cluster_dir);
	return rc;
}
