/* SPDX-License-Identifier: MIT */
/* The handler threads, a front end: they read the userfaultfd, apply its events in order and hand each fault to the resolver. */
#include "internal.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <sys/epoll.h>
#include <unistd.h>

#define MSG_BATCH 32

/* Decodes a fault message and hands it to the resolver (resolve.c). */
static void handle_fault(struct lm__filler *f, const struct uffd_msg *m)
{
	struct lm_runtime *rt = f->rt;
	struct lm__fault ft = {
		.addr = (uintptr_t)m->arg.pagefault.address & ~((uintptr_t)rt->page_size - 1),
		.write = (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0,
		.wp = (m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) != 0,
	};
	LM__STAT_ADD(rt, faults_thread, 1);
	/* One counter each: an atomic add of zero costs as much as any on the fault path. */
	if (ft.wp)
		LM__STAT_ADD(rt, faults_wp, 1);
	else
		LM__STAT_ADD(rt, faults_missing, 1);
	lm__resolve(f, rt, &ft);
}

/* The application dropped [start, end) with madvise: the pages come from the source again. */
static void handle_remove(struct lm_runtime *rt, uintptr_t start, uintptr_t end)
{
	int idx = lm__read_lock(rt);
	struct lm__rtable *t = atomic_load_explicit(&rt->table, memory_order_acquire);
	for (size_t i = 0; t && i < t->n; i++) {
		const struct lm__extent *e = &t->e[i];
		if (start < e->end && e->start < end)
			lm__region_forget(e->r, e->start > start ? e->start : start,
					  e->end < end ? e->end : end, true);
	}
	lm__read_unlock(rt, idx);
}

/* Applies one event message, in the order the kernel queued it. */
static void apply_event(struct lm_runtime *rt, const struct uffd_msg *m)
{
	/* Counted once applied: a count that moved tells that its event's effects are visible. */
	switch (m->event) {
	case UFFD_EVENT_REMAP:
		lm__region_remap(rt, (uintptr_t)m->arg.remap.from, (uintptr_t)m->arg.remap.to,
				 (size_t)m->arg.remap.len);
		LM__STAT_ADD(rt, events_remap, 1);
		break;
	case UFFD_EVENT_REMOVE:
		handle_remove(rt, (uintptr_t)m->arg.remove.start, (uintptr_t)m->arg.remove.end);
		LM__STAT_ADD(rt, events_remove, 1);
		break;
	case UFFD_EVENT_UNMAP:
		lm__region_unmapped(rt, (uintptr_t)m->arg.remove.start,
				    (uintptr_t)m->arg.remove.end);
		LM__STAT_ADD(rt, events_unmap, 1);
		break;
	}
}

/*
 * Reads and handles every message pending on the userfaultfd.
 *
 * Events are applied in the order the kernel queued them: one system
 * call queues several (mremap: REMAP, then UNMAP of the old range), and
 * two handlers applying them concurrently could forget the moved pages
 * before moving them.  So one handler at a time reads and applies its
 * batch's events under ev_lock; the batch's faults are handled after it
 * is released, in parallel.  Each batch is also one section of the evq
 * epoch, which lm_region_destroy waits out (a section per batch, not per
 * drain, so that steady faults never starve it).
 *
 * No fork waits for this path: the runtime does not ask for fork events
 * (see signal.c), so taking locks or allocating here can never hold up a
 * fork() that itself holds the allocator's locks.
 */
static void drain(struct lm__filler *f, int ufd)
{
	struct lm_runtime *rt = f->rt;
	struct uffd_msg msgs[MSG_BATCH];
	for (;;) {
		int ev = lm__epoch_enter(&rt->evq);
		/* Counted from before the read until the batch's events are applied. */
		pthread_mutex_lock(&rt->ev_lock);
		atomic_fetch_add_explicit(&rt->ev_unapplied, 1, memory_order_seq_cst);
		ssize_t n = read(ufd, msgs, sizeof(msgs));
		int err = n < 0 ? errno : 0;
		size_t count = n > 0 ? (size_t)n / sizeof(msgs[0]) : 0;
		for (size_t i = 0; i < count; i++)
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
				apply_event(rt, &msgs[i]);
		atomic_fetch_sub_explicit(&rt->ev_unapplied, 1, memory_order_seq_cst);
		pthread_mutex_unlock(&rt->ev_lock);
		for (size_t i = 0; i < count; i++)
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				handle_fault(f, &msgs[i]);
		lm__epoch_exit(&rt->evq, ev);
		if (n < 0 && err == EINTR)
			continue;
		if (n < 0 || (size_t)n < sizeof(msgs))
			return;	/* EAGAIN: drained; anything else: nothing to read */
	}
}

void *lm__handler_main(void *arg)
{
	struct lm__filler *f = arg;
	struct lm_runtime *rt = f->rt;
	sigset_t all;
	/* Application signals are not ours to take. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	struct epoll_event evs[8];
	while (!atomic_load_explicit(&rt->stopping, memory_order_relaxed)) {
		int n = epoll_wait(f->epfd, evs, 8, -1);
		if (n < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			if (evs[i].data.u64 == 0)
				return NULL;	/* stop_fd: the runtime is closing */
			drain(f, rt->ufd);
		}
	}
	return NULL;
}
