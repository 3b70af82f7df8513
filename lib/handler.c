/* SPDX-License-Identifier: MIT */
/* The handler threads, a front end: they read the userfaultfd, apply its events in order and hand each fault to the resolver. */
#include "internal.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#define MSG_BATCH 32

#define LINGER_IDLE_NS 50000ull		/* linger while faults come at least this often */
#define LINGER_GAP_NS 200000ull		/* a turn this long: another task had the CPU */
#define LINGER_BACKOFF_NS 10000000ull	/* and then not again for this long */

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
static size_t drain(struct lm__filler *f, int ufd)
{
	struct lm_runtime *rt = f->rt;
	struct uffd_msg msgs[MSG_BATCH];
	size_t faults = 0;
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
		size_t nf = 0;
		for (size_t i = 0; i < count; i++)
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				handle_fault(f, &msgs[i]), nf++;
		/* Only lingering handlers watch it: a shared line not written per batch otherwise. */
		if (nf && f->cpu >= 0 && !(rt->opt.flags & LM_OPT_NO_SPIN))
			atomic_fetch_add_explicit(&rt->faults_read, nf, memory_order_relaxed);
		faults += nf;
		lm__epoch_exit(&rt->evq, ev);
		if (n < 0 && err == EINTR)
			continue;
		if (n < 0 || (size_t)n < sizeof(msgs))
			return faults;	/* EAGAIN: drained; anything else: nothing to read */
	}
}

/*
 * Pinned handlers woken for nothing.  Every pinned handler is woken for
 * every fault (see start_threads): the one on the faulting thread's CPU
 * takes it, the others find nothing.  Each of those wake-ups costs the
 * faulting thread an interrupt to another CPU, a halted one here, and a
 * CPU left idle draws the faulting thread itself over when the fill
 * wakes it (the scheduler prefers an idle CPU), where its next fault is
 * served from afar.  Measured on this two-CPU VM: random first touches
 * cost 12-13 us with both handlers asleep, 8.5 us with the other one
 * lingering, against the bare mechanism's 7.7 us.
 *
 * So a handler woken for nothing lingers: it holds its CPU, yielding
 * every turn, for as long as faults keep coming (LINGER_IDLE_NS after
 * the last one anywhere), instead of going back to sleep.  A handler not
 * asleep in epoll_wait is not woken, and a CPU running it is not idle.
 * It never reads the userfaultfd meanwhile: taking the faults of another
 * CPU's thread is what costs most.
 *
 * Yielding lets any other task on its CPU run first.  One that ran only
 * briefly may be the faulting thread, moved here: the handler goes back
 * to sleep, where it is the one to take that thread's faults.  One that
 * kept the CPU for a long turn is a competitor (another program, or a
 * thread of this one that computes): then lingering would take its time
 * and sleeping would still cost the faulting thread a wake-up per fault,
 * so the handler leaves the userfaultfd's waiters for LINGER_BACKOFF_NS
 * (dormant), unless it is the last one waiting.  A dormant handler's
 * CPU's faulting threads are served from another CPU meanwhile, at most
 * for that long: it then waits again, and stays if it finds work.
 */
enum linger_end { LINGER_IDLE, LINGER_MOVED, LINGER_CONTENDED };

static long involuntary_switches(void)
{
	struct rusage ru;
	return getrusage(RUSAGE_THREAD, &ru) < 0 ? -1 : ru.ru_nivcsw;
}

static enum linger_end linger(struct lm__filler *f)
{
	struct lm_runtime *rt = f->rt;
	uint64_t now = lm__now_ns(), start = now;
	if (now < f->spin_after)
		return LINGER_CONTENDED;
	LM__STAT_ADD(rt, handler_lingers, 1);
	uint64_t seen = atomic_load_explicit(&rt->faults_read, memory_order_relaxed);
	uint64_t last = now;
	long sw = involuntary_switches();
	enum linger_end end = LINGER_IDLE;
	while (!atomic_load_explicit(&rt->stopping, memory_order_relaxed)) {
		uint64_t before = now;
		sched_yield();
		now = lm__now_ns();
		if (involuntary_switches() != sw) {
			end = now - before > LINGER_GAP_NS ? LINGER_CONTENDED : LINGER_MOVED;
			if (end == LINGER_CONTENDED)
				f->spin_after = now + LINGER_BACKOFF_NS;
			now = before;	/* the other task's turn was not spent lingering */
			break;
		}
		uint64_t c = atomic_load_explicit(&rt->faults_read, memory_order_relaxed);
		if (lm__stream_help(f)) {
			now = lm__now_ns();
			last = now;
			sw = involuntary_switches();
		} else if (c != seen) {
			seen = c;
			last = now;
		} else if (now - last > LINGER_IDLE_NS) {
			break;
		}
	}
	LM__STAT_ADD(rt, handler_linger_ns, now - start);
	return end;
}

/* Leaves the userfaultfd's waiters until f->spin_after, unless no other handler would be left. */
static void go_dormant(struct lm__filler *f)
{
	struct lm_runtime *rt = f->rt;
	int armed = atomic_load_explicit(&rt->armed, memory_order_relaxed);
	do {
		if (armed <= 1)
			return;
	} while (!atomic_compare_exchange_weak_explicit(&rt->armed, &armed, armed - 1,
							memory_order_acq_rel, memory_order_relaxed));
	if (epoll_ctl(f->epfd, EPOLL_CTL_DEL, rt->ufd, NULL) < 0) {
		atomic_fetch_add_explicit(&rt->armed, 1, memory_order_acq_rel);
		return;
	}
	f->dormant = true;
	LM__STAT_ADD(rt, handler_dormant, 1);
}

/* Waits on the userfaultfd again; messages pending make the set ready at once. */
static void rearm(struct lm__filler *f)
{
	struct lm_runtime *rt = f->rt;
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 1 };
	if (epoll_ctl(f->epfd, EPOLL_CTL_ADD, rt->ufd, &ev) < 0 && errno != EEXIST)
		return;	/* tried again at the next turn */
	f->dormant = false;
	atomic_fetch_add_explicit(&rt->armed, 1, memory_order_acq_rel);
}

void *lm__handler_main(void *arg)
{
	lm__thread_mark();
	struct lm__filler *f = arg;
	struct lm_runtime *rt = f->rt;
	sigset_t all;
	/* Application signals are not ours to take. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	bool lingers = f->cpu >= 0 && !(rt->opt.flags & LM_OPT_NO_SPIN);
	struct epoll_event evs[8];
	while (!atomic_load_explicit(&rt->stopping, memory_order_relaxed)) {
		uint64_t now = f->dormant ? lm__now_ns() : 0;
		if (f->dormant && now >= f->spin_after)
			rearm(f);
		/* Dormant: back at spin_after (or, if rearming failed, at the next millisecond). */
		int timeout = !f->dormant ? -1 :
			      now < f->spin_after ? (int)((f->spin_after - now + 999999) / 1000000) : 1;
		int n = epoll_wait(f->epfd, evs, 8, timeout);
		if (n < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			if (evs[i].data.u64 == 0)
				return NULL;	/* stop_fd: the runtime is closing */
			/*
			 * A stream's work goes on here, outside the batch and its
			 * read section (a fault's own handler fills only to the
			 * limit it saw: fault.c, "Sequential streams").
			 */
			bool had = drain(f, rt->ufd) != 0;
			lm__stream_help(f);
			if (!had && lingers && linger(f) == LINGER_CONTENDED)
				go_dormant(f);
		}
	}
	return NULL;
}
