/* SPDX-License-Identifier: MIT */
/* The runtime: options and environment, the userfaultfd and its threads, opening and closing. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#define DEFAULT_READAHEAD 64
#define MAX_READAHEAD 1024
#define LM__PIN_MAX 8		/* handlers pinned one per CPU on at most this many CPUs */
#define MAX_THREADS 64

int lm_options_init(struct lm_options *opts)
{
	LM__KEEP_ERRNO;
	if (!opts)
		return -EINVAL;
	memset(opts, 0, sizeof(*opts));
	opts->size = sizeof(*opts);
	return 0;
}

/* As lazymemd logs: the process, then how much it matters, then the message. */
static void stderr_log(int level, const char *msg, void *arg)
{
	(void)arg;
	static const char *const names[] = { "error", "warning", "info", "debug" };
	fprintf(stderr, "lazymem[%d]: %s: %s\n", (int)getpid(), names[level < 0 ? 0 : level > 3 ? 3 : level],
		msg);
}

static int env_int(const char *name, int lo, int hi, int *out)
{
	const char *s = getenv(name);
	if (!s || !*s)
		return 0;
	char *end;
	long v = strtol(s, &end, 10);
	if (*end || v < lo || v > hi)
		return -EINVAL;
	*out = (int)v;
	return 0;
}

static int env_word(const char *name, const char *const *words, int n, int *out)
{
	const char *s = getenv(name);
	if (!s || !*s)
		return 0;
	for (int i = 0; i < n; i++)
		if (words[i] && !strcasecmp(s, words[i])) {
			*out = i;
			return 0;
		}
	return -EINVAL;
}

/* A size in bytes with an optional K, M, G or T suffix (powers of 1024). */
static int env_size(const char *name, uint64_t *out)
{
	const char *s = getenv(name);
	if (!s || !*s)
		return 0;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	unsigned shift = 0;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	}
	if (*end == 'i' && shift)
		end++;
	if ((*end == 'b' || *end == 'B') && shift)
		end++;
	if (*end || (shift && v > (UINT64_MAX >> shift)))
		return -EINVAL;
	*out = (uint64_t)v << shift;
	return 0;
}

/*
 * The CPUs this process may run on, at most LM__PIN_MAX of them into
 * cpus[]; returns how many there are (0 when that cannot be told), or
 * LM__PIN_MAX + 1 when there are more.
 */
static int allowed_cpus(int *cpus)
{
	cpu_set_t set;
	if (sched_getaffinity(0, sizeof(set), &set) < 0)
		return 0;
	int n = 0;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &set)) {
			if (n == LM__PIN_MAX)
				return n + 1;
			cpus[n++] = c;
		}
	return n;
}

/*
 * Environment variables fill in what the caller left at its default; a
 * malformed value is an error rather than silently ignored, so a typo in
 * LAZYMEM_MODE does not run the program in a mode nobody asked for.
 */
static int apply_env(struct lm_options *o)
{
	static const char *const modes[] = { "default", "thread", "signal" };
	static const char *const ios[] = { "default", "uring", "pread" };
	static const char *const ufds[] = { "auto", "dev", "syscall", "user" };
	int rc = 0, dbg = 0;
	if (!o->mode)
		rc = rc ? rc : env_word("LAZYMEM_MODE", modes, 3, &o->mode);
	if (!o->io)
		rc = rc ? rc : env_word("LAZYMEM_IO", ios, 3, &o->io);
	if (!o->uffd_source)
		rc = rc ? rc : env_word("LAZYMEM_UFFD", ufds, 4, &o->uffd_source);
	if (!o->handler_threads)
		rc = rc ? rc : env_int("LAZYMEM_THREADS", 1, MAX_THREADS, &o->handler_threads);
	if (!o->readahead_max)
		rc = rc ? rc : env_int("LAZYMEM_READAHEAD", 1, MAX_READAHEAD, &o->readahead_max);
	static const char *const evicts[] = { "default", "clock", "fifo" };
	static const char *const dirties[] = { "default", "sync", "async" };
	if (!o->dirty_tracking)
		rc = rc ? rc : env_word("LAZYMEM_DIRTY", dirties, 3, &o->dirty_tracking);
	if (!o->evict_policy)
		rc = rc ? rc : env_word("LAZYMEM_EVICT", evicts, 3, &o->evict_policy);
	if (!o->budget)
		rc = rc ? rc : env_size("LAZYMEM_BUDGET", &o->budget);
	if (!o->budget_min)
		rc = rc ? rc : env_size("LAZYMEM_BUDGET_MIN", &o->budget_min);
	if (!o->swap_max)
		rc = rc ? rc : env_size("LAZYMEM_SWAP_MAX", &o->swap_max);
	if (!o->page_size)
		rc = rc ? rc : env_size("LAZYMEM_PAGE_SIZE", &o->page_size);
	if (!o->swap_dir) {
		const char *d = getenv("LAZYMEM_SWAP_DIR");
		if (d && *d)
			o->swap_dir = d;
	}
	if (!o->swap_url) {
		const char *d = getenv("LAZYMEM_SWAP");
		if (d && *d)
			o->swap_url = d;
	}
	if (!o->daemon_socket) {
		const char *d = getenv("LAZYMEM_SOCKET");
		if (d && !strcasecmp(d, "off"))
			o->flags |= LM_OPT_NO_REPORT;
		else if (d && *d)
			o->daemon_socket = d;
	}
	int pin = 1;
	rc = rc ? rc : env_int("LAZYMEM_PIN", 0, 1, &pin);
	if (!pin)
		o->flags |= LM_OPT_NO_PIN;
	int spin = 1;
	rc = rc ? rc : env_int("LAZYMEM_SPIN", 0, 1, &spin);
	if (!spin)
		o->flags |= LM_OPT_NO_SPIN;
	int stream = -1;
	rc = rc ? rc : env_int("LAZYMEM_STREAM", 0, 1, &stream);
	if (stream == 0)
		o->flags |= LM_OPT_NO_STREAM;
	else if (stream == 1)
		o->flags &= ~LM_OPT_NO_STREAM;
	rc = rc ? rc : env_int("LAZYMEM_DEBUG", 0, 9, &dbg);
	if (dbg && !o->log)
		o->log = stderr_log;
	return rc;
}

/*
 * A page size the runtime can use: the base one, or a huge page size
 * the kernel has a hugetlb pool for, up to 32 MiB.  Not 1 GiB pages:
 * every filler's staging buffer, every snapshot batch and an image's
 * header and index would each be a gigabyte.
 */
#define MAX_PAGE_SIZE ((uint64_t)32 << 20)

static bool page_size_ok(uint64_t ps)
{
	if (ps == (uint64_t)sysconf(_SC_PAGESIZE))
		return true;
	if (ps < 4096 || (ps & (ps - 1)) || ps > MAX_PAGE_SIZE)
		return false;
	char path[96];
	snprintf(path, sizeof(path), "/sys/kernel/mm/hugepages/hugepages-%llukB",
		 (unsigned long long)(ps >> 10));
	return access(path, F_OK) == 0;
}

static int check_options(struct lm_options *o)
{
	if (o->page_size && !page_size_ok(o->page_size))
		return -EINVAL;
	if (o->page_size == (uint64_t)sysconf(_SC_PAGESIZE))
		o->page_size = 0;
	/*
	 * Hugetlb pages cannot be moved out by UFFDIO_MOVE (eviction) nor
	 * tracked by asynchronous write protection: what needs them is
	 * refused, not half done.
	 */
	if (o->page_size && (o->budget || o->dirty_tracking == LM_DIRTY_ASYNC))
		return -EOPNOTSUPP;
	if (o->mode < 0 || o->mode > LM_MODE_SIGNAL || o->io < 0 || o->io > LM_IO_PREAD ||
	    o->uffd_source < 0 || o->uffd_source > LM_UFFD_SYSCALL_USER ||
	    o->handler_threads < 0 || o->handler_threads > MAX_THREADS ||
	    o->readahead_max < 0 || o->readahead_max > MAX_READAHEAD ||
	    (o->flags & ~(LM_OPT_NO_ENV | LM_OPT_NO_REPORT | LM_OPT_NO_PIN | LM_OPT_NO_SPIN |
			  LM_OPT_NO_STREAM)) ||
	    o->evict_policy < 0 || o->evict_policy > LM_EVICT_FIFO ||
	    o->dirty_tracking < 0 || o->dirty_tracking > LM_DIRTY_ASYNC ||
	    (o->swap_max && o->swap_max < 4096) ||
	    (o->swap_url && strncmp(o->swap_url, "redis://", 8)))
		return -EINVAL;
	/* A remote store's client allocates and blocks: never in a signal handler. */
	if (o->swap_url && o->mode == LM_MODE_SIGNAL)
		return -EOPNOTSUPP;
	if (!o->evict_policy)
		o->evict_policy = LM_EVICT_CLOCK;
	if (!o->dirty_tracking)
		o->dirty_tracking = LM_DIRTY_SYNC;
	if (!o->mode)
		o->mode = LM_MODE_THREAD;
	if (!o->io)
		o->io = LM_IO_URING;
	if (!o->readahead_max)
		o->readahead_max = DEFAULT_READAHEAD;
	/*
	 * Huge pages: the same bytes per fill at most, but at least one
	 * page (a 2 MiB page is already 512 base pages of readahead).  Each
	 * filler's staging buffer is then a page: 2 MiB, where the default
	 * for base pages is 256 KiB.
	 */
	if (o->page_size) {
		uint64_t max = (uint64_t)o->readahead_max * (uint64_t)sysconf(_SC_PAGESIZE) /
			       o->page_size;
		o->readahead_max = max ? (int)max : 1;
	}
	if (!o->handler_threads) {
		/* One per CPU the process may run on (a handler pinned to each: see start_threads). */
		int cpus[LM__PIN_MAX], n = allowed_cpus(cpus);
		o->handler_threads = n < 1 ? 1 : n > 4 ? 4 : n;
	}
	return 0;
}

static int epoll_add(int epfd, int fd, uint64_t tag)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = tag };
	return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static int start_threads(struct lm_runtime *rt)
{
	int n = rt->opt.handler_threads;
	rt->threads = lm__calloc((size_t)n, sizeof(*rt->threads));
	rt->fillers = lm__calloc((size_t)n, sizeof(*rt->fillers));
	if (!rt->threads || !rt->fillers)
		return -ENOMEM;
	for (int i = 0; i < n; i++)
		rt->fillers[i].epfd = -1;
	for (int i = 0; i < n; i++) {
		/* Signal mode's one thread reads events only: it never reads a file. */
		int rc = lm__filler_init(&rt->fillers[i], rt,
					 rt->opt.io == LM_IO_URING && rt->mode == LM_MODE_THREAD);
		if (rc < 0)
			return rc;
	}
	/*
	 * A fault's round trip is cheapest when the handler runs on the
	 * faulting thread's CPU: that CPU is awake and about to block, while
	 * waking another (a halted vCPU, here) costs tens of microseconds.
	 * The kernel cannot be asked to wake the local handler, so with one
	 * handler per allowed CPU, each on its CPU, every handler has an
	 * epoll set of its own and all are woken: the local one runs at once
	 * and takes the message, the others find nothing.  Measured here on
	 * two CPUs: random first touches 24-28 us -> 11 us.  With fewer
	 * handlers than CPUs (or more than 8 CPUs, where waking all would
	 * cost more than it saves) they share one set and one is woken.
	 */
	int cpus[LM__PIN_MAX], ncpu = allowed_cpus(cpus);
	bool pin = rt->mode == LM_MODE_THREAD && !(rt->opt.flags & LM_OPT_NO_PIN) && ncpu > 1 &&
		   ncpu <= LM__PIN_MAX && n == ncpu;
	for (int i = 0; i < n; i++) {
		struct lm__filler *f = &rt->fillers[i];
		int rc;
		f->epfd = rt->epfd;
		if (pin) {
			f->epfd = epoll_create1(EPOLL_CLOEXEC);
			if (f->epfd < 0)
				return -errno;
			if ((rc = epoll_add(f->epfd, rt->stop_fd, 0)) < 0 ||
			    (rc = epoll_add(f->epfd, rt->ufd, 1)) < 0)
				return rc;
			atomic_fetch_add(&rt->armed, 1);
		}
		pthread_attr_t attr;
		pthread_attr_init(&attr);
		if (pin) {
			cpu_set_t one;
			CPU_ZERO(&one);
			f->cpu = cpus[i];
			CPU_SET(f->cpu, &one);
			pthread_attr_setaffinity_np(&attr, sizeof(one), &one);
		}
		rc = pthread_create(&rt->threads[i], &attr, lm__handler_main, f);
		pthread_attr_destroy(&attr);
		/* The CPU went from the mask since it was read (a cpuset changed): unpinned, then. */
		if (rc && pin) {
			f->cpu = -1;
			rc = pthread_create(&rt->threads[i], NULL, lm__handler_main, f);
		}
		if (rc) {
			/* Threads already started exit when close signals them. */
			rt->nthreads = i;
			return -rc;
		}
		rt->nthreads = i + 1;
	}
	LM__STAT_SET(rt, handler_threads, rt->nthreads);
	return 0;
}


static void close_runtime(struct lm_runtime *rt);

/*
 * The caller's options (a prefix of struct lm_options of any version),
 * the environment, checked.  *io_required: io_uring was asked for by name
 * (required), not by default (preferred), which the check then fills in.
 */
static int gather_options(const struct lm_options *user, struct lm_options *o, bool *io_required)
{
	lm_options_init(o);
	if (user) {
		if (user->size < offsetof(struct lm_options, budget) || user->size > 4096)
			return -EINVAL;
		memcpy(o, user, user->size < sizeof(*o) ? user->size : sizeof(*o));
		o->size = sizeof(*o);
		/* Reserved fields must be zero, so that later versions can give them a meaning. */
		if (o->reserved32)
			return -EINVAL;
	}
	int rc = 0;
	if (!(o->flags & LM_OPT_NO_ENV))
		rc = apply_env(o);
	*io_required = o->io == LM_IO_URING;
	return rc ? rc : check_options(o);
}

/* A runtime with its locks and epochs, its stats page, and no descriptor yet. */
static struct lm_runtime *runtime_new(const struct lm_options *o, int *rc)
{
	struct lm_runtime *rt = lm__calloc(1, sizeof(*rt));
	if (!rt) {
		*rc = -ENOMEM;
		return NULL;
	}
	rt->opt = *o;
	rt->stats_fd = -1;
	rt->page_size = o->page_size ? (long)o->page_size : sysconf(_SC_PAGESIZE);
	rt->page_shift = (unsigned)__builtin_ctzl((unsigned long)rt->page_size);
	rt->huge = o->page_size != 0;
	/* Snapshot and save batches: LM__SNAP_BATCH base pages' worth, at least one page. */
	rt->batch = rt->huge ? 1 : LM__SNAP_BATCH;
	if ((*rc = lm__stats_init(rt)) < 0) {
		lm__free(rt);
		return NULL;
	}
	rt->mode = o->mode;
	rt->ufd = rt->epfd = rt->stop_fd = rt->stage_ufd = rt->ev_kick = rt->pagemap_fd =
		rt->ev_pagemap = rt->snap_memfd = -1;
	pthread_mutex_init(&rt->ev_setup_lock, NULL);
	pthread_mutex_init(&rt->evict_lock, NULL);
	rt->pid = rt->ufd_pid = getpid();
	rt->pf_tail = &rt->pf_head;
	pthread_mutex_init(&rt->lock, NULL);
	lm__epoch_init(&rt->rcu);
	lm__epoch_init(&rt->evq);
	pthread_mutex_init(&rt->ev_lock, NULL);
	pthread_mutex_init(&rt->pf_lock, NULL);
	pthread_cond_init(&rt->pf_cond, NULL);
	atomic_init(&rt->table, NULL);
	return rt;
}

/*
 * The runtime's userfaultfd and what its kernel can do.  No fork events:
 * with them the kernel holds a forking thread inside clone() until a
 * handler reads the event, while glibc holds the allocator's locks and
 * the fork handlers hold the runtime's, so a handler that needed either
 * could never read it.  The runtime follows fork() itself instead
 * (fork.c): the child takes a userfaultfd of its own and fills from its
 * copy of the regions.
 */
static int open_uffd(struct lm_runtime *rt)
{
	const struct lm_options *o = &rt->opt;
	uint64_t want = UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE |
			UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_THREAD_ID | UFFD_FEATURE_POISON |
			UFFD_FEATURE_PAGEFAULT_FLAG_WP;
	if (rt->mode == LM_MODE_SIGNAL)
		want |= UFFD_FEATURE_SIGBUS;
	if (o->dirty_tracking == LM_DIRTY_ASYNC)
		want |= UFFD_FEATURE_WP_ASYNC;
	if (rt->huge)
		want |= UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
	rt->ufd = lm__uffd_open(o->uffd_source, want, &rt->origin, &rt->limits, &rt->features);
	if (rt->ufd < 0) {
		lm__log(rt, 1, "no userfaultfd: %s (limits 0x%x)", lm_strerror(rt->ufd), rt->limits);
		return rt->ufd;
	}
	/*
	 * Hugetlb has no UFFDIO_ZEROPAGE: zeros are copied in, from a page
	 * never written (the shared zero page, no memory).
	 */
	if (rt->huge) {
		void *z = mmap(NULL, (size_t)rt->page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS,
			       -1, 0);
		if (z == MAP_FAILED)
			return -ENOMEM;
		rt->zeros = z;
	}
	/* Write protection of hugetlb pages is a feature of its own (Linux 5.19). */
	if (rt->huge && !(rt->features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM))
		rt->features &= ~(uint64_t)UFFD_FEATURE_PAGEFAULT_FLAG_WP;
	/*
	 * Without UFFDIO_POISON (kernels before 6.6) a page that cannot be
	 * filled could not raise SIGBUS in thread mode: its toucher would
	 * fault forever.  Better to say so here.
	 */
	if ((rt->mode == LM_MODE_SIGNAL && !(rt->features & UFFD_FEATURE_SIGBUS)) ||
	    !(rt->features & UFFD_FEATURE_POISON)) {
		lm__log(rt, 1, "the kernel lacks %s", rt->mode == LM_MODE_SIGNAL &&
			!(rt->features & UFFD_FEATURE_SIGBUS) ? "UFFD_FEATURE_SIGBUS" : "UFFDIO_POISON");
		return -EOPNOTSUPP;
	}
	if (o->dirty_tracking == LM_DIRTY_ASYNC) {
		rt->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
		if (!(rt->features & UFFD_FEATURE_WP_ASYNC) || rt->pagemap_fd < 0) {
			lm__log(rt, 1, "asynchronous write protection unavailable (WP_ASYNC, "
				"/proc/self/pagemap)");
			return -EOPNOTSUPP;
		}
		rt->wp_async = true;
	}
	LM__STAT_SET(rt, uffd_origin, rt->origin);
	LM__STAT_SET(rt, uffd_limits, rt->limits);
	LM__STAT_SET(rt, uffd_features, rt->features);
	LM__STAT_SET(rt, mode, rt->mode);
	lm__log(rt, 3, "userfaultfd origin %d features 0x%llx mode %d", rt->origin,
		(unsigned long long)rt->features, rt->mode);
	return 0;
}

/* The handler threads (and in signal mode the SIGBUS handler), woken through one epoll set. */
static int start_front_ends(struct lm_runtime *rt)
{
	int rc;
	rt->epfd = epoll_create1(EPOLL_CLOEXEC);
	rt->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (rt->epfd < 0 || rt->stop_fd < 0)
		return -errno;
	if ((rc = epoll_add(rt->epfd, rt->stop_fd, 0)) < 0 ||
	    (rc = epoll_add(rt->epfd, rt->ufd, 1)) < 0)
		return rc;
	if (rt->mode == LM_MODE_SIGNAL) {
		/* Events (remove, unmap, remap) still come as messages: one thread reads them. */
		rt->opt.handler_threads = 1;
		if ((rc = lm__signal_attach(rt)) < 0)
			return rc;
	}
	return start_threads(rt);
}

int lm_runtime_open(const struct lm_options *user, struct lm_runtime **out)
{
	LM__KEEP_ERRNO;
	if (!out)
		return -EINVAL;
	struct lm_options o;
	bool io_required;
	int rc = gather_options(user, &o, &io_required);
	if (rc < 0)
		return rc;
	struct lm_runtime *rt = runtime_new(&o, &rc);
	if (!rt)
		return rc;
	rt->io_required = io_required;
	if ((rc = open_uffd(rt)) < 0 || (rc = start_front_ends(rt)) < 0)
		goto fail;
	lm__runtime_register(rt);
	LM__STAT_SET(rt, budget_min_bytes, o.budget_min);
	if (o.budget && (rc = lm_runtime_set_budget(rt, o.budget)) < 0) {
		lm__runtime_unregister(rt);
		goto fail;
	}
	lm__report_start(rt);
	*out = rt;
	return 0;
fail:
	close_runtime(rt);
	return rc;
}

static void stop_threads(struct lm_runtime *rt)
{
	atomic_store(&rt->stopping, true);
	uint64_t one = 1;
	/* In a child the eventfd is shared with the parent's threads: leave it be. */
	if (getpid() == rt->pid && rt->stop_fd >= 0 &&
	    write(rt->stop_fd, &one, sizeof(one)) < 0) {
		/* An eventfd write only fails on overflow, which cannot happen here. */
	}
	for (int i = 0; i < rt->nthreads; i++)
		pthread_join(rt->threads[i], NULL);
	rt->nthreads = 0;
	pthread_mutex_lock(&rt->pf_lock);
	pthread_cond_broadcast(&rt->pf_cond);
	pthread_mutex_unlock(&rt->pf_lock);
	if (rt->pf_started) {
		pthread_join(rt->pf_thread, NULL);
		rt->pf_started = false;
	}
}

static void close_runtime(struct lm_runtime *rt)
{
	/* The daemon first: it must not push a budget to a runtime going away. */
	lm__report_stop(rt);
	lm__runtime_unregister(rt);
	/* The evictor stops first: nothing is evicted from regions about to go. */
	lm__evict_shutdown(rt);
	/* Regions go next, while the handlers still serve faults on them. */
	lm__region_free_all(rt);
	stop_threads(rt);
	lm__signal_detach(rt);
	while (rt->pf_head) {
		struct lm__prefetch *p = rt->pf_head;
		rt->pf_head = p->next;
		lm__free(p);
	}
	if (rt->fillers)
		for (int i = 0; i < rt->opt.handler_threads; i++)
			lm__filler_fini(&rt->fillers[i]);
	lm__filler_fini(&rt->pf_filler);
	for (int i = 0; rt->fillers && i < rt->opt.handler_threads; i++)
		if (rt->fillers[i].epfd >= 0 && rt->fillers[i].epfd != rt->epfd)
			close(rt->fillers[i].epfd);
	lm__free(rt->fillers);
	lm__free(rt->threads);
	lm__free(atomic_load(&rt->table));
	lm__free(rt->spare);
	if (rt->epfd >= 0)
		close(rt->epfd);
	if (rt->stop_fd >= 0)
		close(rt->stop_fd);
	if (rt->ufd >= 0)
		close(rt->ufd);
	if (rt->pagemap_fd >= 0)
		close(rt->pagemap_fd);
	if (rt->snap_memfd >= 0)
		close(rt->snap_memfd);
	if (rt->zeros)
		munmap((void *)rt->zeros, (size_t)rt->page_size);
	if (rt->swap_ok)
		lm__swap_close(&rt->swap);
	pthread_mutex_destroy(&rt->ev_setup_lock);
	pthread_mutex_destroy(&rt->evict_lock);
	pthread_mutex_destroy(&rt->lock);
	lm__epoch_fini(&rt->rcu);
	lm__epoch_fini(&rt->evq);
	pthread_mutex_destroy(&rt->ev_lock);
	pthread_mutex_destroy(&rt->pf_lock);
	pthread_cond_destroy(&rt->pf_cond);
	lm__stats_fini(rt);
	lm__free(rt);
}

int lm_runtime_close(struct lm_runtime *rt)
{
	LM__KEEP_ERRNO;
	if (!rt)
		return -EINVAL;
	close_runtime(rt);
	return 0;
}
