/* SPDX-License-Identifier: MIT */
/* The kernel side of lazymem-bench's memory-pressure comparisons: a swap file and a cgroup-v1 memory limit. */
#define _GNU_SOURCE
#include "kswap.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/wait.h>
#include <unistd.h>

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, text, strlen(text));
	int err = n < 0 ? -errno : 0;
	close(fd);
	return err;
}

static struct kswap *live;

static void teardown_at_exit(void)
{
	if (live)
		kswap_teardown(live);
}

static void teardown_on_signal(int sig)
{
	teardown_at_exit();
	signal(sig, SIG_DFL);
	raise(sig);
}

bool kswap_setup(struct kswap *k, const char *dir, uint64_t swap_bytes, const char *tag)
{
	memset(k, 0, sizeof(*k));
	static bool registered;
	if (!registered) {
		atexit(teardown_at_exit);
		signal(SIGINT, teardown_on_signal);
		signal(SIGTERM, teardown_on_signal);
		registered = true;
	}
	live = k;
	snprintf(k->swapfile, sizeof(k->swapfile), "%s/lazymem-bench-%s-%d.swap", dir, tag, getpid());
	snprintf(k->cgroup, sizeof(k->cgroup), "/sys/fs/cgroup/memory/lazymem-bench-%s-%d", tag,
		 getpid());
	int fd = open(k->swapfile, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
	if (fd < 0 || fallocate(fd, 0, 0, (off_t)swap_bytes) < 0) {
		fprintf(stderr, "lazymem-bench: kernel swap file %s: %s\n", k->swapfile, strerror(errno));
		if (fd >= 0)
			close(fd);
		unlink(k->swapfile);
		k->swapfile[0] = 0;
		return false;
	}
	close(fd);
	char cmd[4300];
	snprintf(cmd, sizeof(cmd), "mkswap -q '%s' >/dev/null 2>&1", k->swapfile);
	if (system(cmd) != 0 || swapon(k->swapfile, 0) < 0) {
		fprintf(stderr, "lazymem-bench: cannot enable the kernel swap file (mkswap/swapon, "
			"root needed): %s\n", strerror(errno));
		return false;
	}
	k->swap_on = true;
	if (mkdir(k->cgroup, 0755) < 0) {
		fprintf(stderr, "lazymem-bench: no cgroup-v1 memory controller (%s): %s\n", k->cgroup,
			strerror(errno));
		return false;
	}
	k->cg_made = true;
	return true;
}

int kswap_set_limit(const struct kswap *k, uint64_t bytes)
{
	char path[4200], val[64];
	snprintf(path, sizeof(path), "%s/memory.limit_in_bytes", k->cgroup);
	snprintf(val, sizeof(val), "%llu", (unsigned long long)bytes);
	int rc = write_file(path, val);
	if (rc < 0)
		fprintf(stderr, "lazymem-bench: cannot set %s: %s\n", path, strerror(-rc));
	return rc;
}

int kswap_enter(const struct kswap *k)
{
	char procs[4200], me[32];
	snprintf(procs, sizeof(procs), "%s/cgroup.procs", k->cgroup);
	snprintf(me, sizeof(me), "%d", getpid());
	return write_file(procs, me);
}

bool kswap_oom_killed(const struct kswap *k)
{
	char path[4200], line[256];
	snprintf(path, sizeof(path), "%s/memory.oom_control", k->cgroup);
	FILE *f = fopen(path, "re");
	long kills = 0;
	while (f && fgets(line, sizeof(line), f))
		sscanf(line, "oom_kill %ld", &kills);
	if (f)
		fclose(f);
	static long seen;
	bool more = kills > seen;
	seen = kills;
	return more;
}

void kswap_teardown(struct kswap *k)
{
	live = NULL;
	/* The cgroup cannot go while the child lives, nor the swap file while it is in use. */
	if (k->child > 0) {
		kill(k->child, SIGKILL);
		waitpid(k->child, NULL, 0);
		k->child = 0;
	}
	if (k->cg_made)
		rmdir(k->cgroup);
	if (k->swap_on)
		swapoff(k->swapfile);
	if (k->swap_on || k->swapfile[0])
		unlink(k->swapfile);
	k->cg_made = k->swap_on = false;
	k->swapfile[0] = 0;
}
