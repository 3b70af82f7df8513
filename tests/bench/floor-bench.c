/* SPDX-License-Identifier: MIT */
/* lazymem-bench's floor: the bare userfaultfd mechanism, a minimal handler doing one UFFDIO_COPY per fault. */
#define _GNU_SOURCE
#include "swap-bench.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef UFFD_FEATURE_SIGBUS
#define UFFD_FEATURE_SIGBUS (1 << 7)
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/*
 * What a fault costs with nothing of lazymem's in the way: no page
 * table, no readahead, no epoll, one thread blocked in read() on the
 * userfaultfd and one UFFDIO_COPY of a zero page per fault; or, in
 * signal mode, a SIGBUS handler that does the copy in the faulting
 * thread.  Every random first-touch figure is read against it.
 */

static int new_uffd(uint64_t features)
{
	int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (fd < 0) {
		int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		fd = dev < 0 ? -1 : ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
		if (dev >= 0)
			close(dev);
	}
	if (fd < 0)
		return -errno;
	struct uffdio_api api = { .api = UFFD_API, .features = features };
	if (ioctl(fd, UFFDIO_API, &api) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

static void pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

struct handler {
	int ufd;
	size_t ps;
	const unsigned char *zero;
	uintptr_t stop;		/* the page whose fault ends the handler */
	int cpu;		/* -1: not pinned */
};

static void copy_page(int ufd, uintptr_t dst, const unsigned char *src, size_t ps)
{
	struct uffdio_copy c = { .dst = dst, .src = (uintptr_t)src, .len = ps };
	/* EEXIST: the page is there already; EAGAIN: retried by the fault anyway. */
	(void)ioctl(ufd, UFFDIO_COPY, &c);
}

static void *handler_main(void *arg)
{
	struct handler *h = arg;
	if (h->cpu >= 0)
		pin(h->cpu);
	for (;;) {
		struct uffd_msg m;
		ssize_t n = read(h->ufd, &m, sizeof(m));
		if (n < 0 && errno == EINTR)
			continue;
		if (n != (ssize_t)sizeof(m))
			break;
		if (m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		uintptr_t a = (uintptr_t)m.arg.pagefault.address & ~(uintptr_t)(h->ps - 1);
		copy_page(h->ufd, a, h->zero, h->ps);
		if (a == h->stop)
			break;
	}
	return NULL;
}

static int sig_ufd = -1;
static size_t sig_ps;
static const unsigned char *sig_zero;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	copy_page(sig_ufd, (uintptr_t)si->si_addr & ~(uintptr_t)(sig_ps - 1), sig_zero, sig_ps);
}

static __attribute__((noinline)) void touch(unsigned char *base, const uint32_t *perm, size_t npages,
		  unsigned shift)
{
	volatile unsigned char *p = base;
	for (size_t i = 0; i < npages; i++)
		p[(size_t)perm[i] << shift] = 0xa4;
}

double floor_rand(int kind, const uint32_t *perm, size_t npages, unsigned shift)
{
	size_t ps = (size_t)1 << shift, len = (npages + 1) << shift;
	int ufd = new_uffd(kind == FLOOR_SIGNAL ? UFFD_FEATURE_SIGBUS : 0);
	if (ufd < 0)
		return ufd;
	unsigned char *zero = aligned_alloc(ps, ps);
	unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int rc = 0;
	uint64_t t0 = 0, t1 = 0;
	cpu_set_t old;
	sched_getaffinity(0, sizeof(old), &old);
	int cpu = sched_getcpu();
	if (!zero || p == MAP_FAILED) {
		rc = -ENOMEM;
		goto out;
	}
	memset(zero, 0, ps);
	madvise(p, len, MADV_NOHUGEPAGE);
	struct uffdio_register reg = { .range = { (uintptr_t)p, len },
				       .mode = UFFDIO_REGISTER_MODE_MISSING };
	if (ioctl(ufd, UFFDIO_REGISTER, &reg) < 0) {
		rc = -errno;
		goto out;
	}
	if (kind == FLOOR_SIGNAL) {
		struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO }, prev;
		sigemptyset(&sa.sa_mask);
		sig_ufd = ufd;
		sig_ps = ps;
		sig_zero = zero;
		sigaction(SIGBUS, &sa, &prev);
		t0 = now_ns();
		touch(p, perm, npages, shift);
		t1 = now_ns();
		sigaction(SIGBUS, &prev, NULL);
		sig_ufd = -1;
	} else {
		/* Pinned: the handler on the toucher's CPU, both held there; unpinned: wherever. */
		bool pinned = kind == FLOOR_THREAD_PINNED && cpu >= 0;
		if (pinned)
			pin(cpu);
		struct handler h = { ufd, ps, zero, (uintptr_t)p + (npages << shift), pinned ? cpu : -1 };
		pthread_t th;
		if ((rc = -pthread_create(&th, NULL, handler_main, &h)) < 0)
			goto out;
		t0 = now_ns();
		touch(p, perm, npages, shift);
		t1 = now_ns();
		/* The page past the measured ones stops the handler. */
		*(volatile unsigned char *)(p + (npages << shift)) = 1;
		pthread_join(th, NULL);
		sched_setaffinity(0, sizeof(old), &old);
	}
	for (size_t i = 0; i < npages; i += npages / 64 + 1)
		if (p[(size_t)perm[i] << shift] != 0xa4)
			rc = -EIO;
out:
	if (p != MAP_FAILED)
		munmap(p, len);
	free(zero);
	close(ufd);
	return rc < 0 ? rc : (double)(t1 - t0) / (double)npages;
}

/* --busy: a thread that keeps the CPUs it may run on from going idle. */
static atomic_bool busy_on;
static pthread_t busy_thread;

static void *busy_main(void *arg)
{
	(void)arg;
	while (atomic_load_explicit(&busy_on, memory_order_relaxed))
		__builtin_ia32_pause();
	return NULL;
}

void busy_start(void)
{
	atomic_store(&busy_on, true);
	if (pthread_create(&busy_thread, NULL, busy_main, NULL) != 0)
		atomic_store(&busy_on, false);
}

void busy_stop(void)
{
	if (!atomic_exchange(&busy_on, false))
		return;
	pthread_join(busy_thread, NULL);
}
