/* SPDX-License-Identifier: MIT */
/* userfaultfd: obtaining one, the feature probe, and every ioctl the runtime issues. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/capability.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/*
 * The installed uapi header may predate the features the kernel has; the
 * values below are the kernel's and are only used when the header lacks
 * them.  The feature probe decides whether they are actually available.
 */
#ifndef USERFAULTFD_IOC
#define USERFAULTFD_IOC 0xAA
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
struct uffdio_poison {
	struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
	__u64 mode;
	__s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif
#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
struct uffdio_move {
	__u64 dst;
	__u64 src;
	__u64 len;
#define UFFDIO_MOVE_MODE_DONTWAKE ((__u64)1 << 0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ((__u64)1 << 1)
	__u64 mode;
	__s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif

#ifndef PAGEMAP_SCAN
#define PAGE_IS_WRITTEN (1 << 1)
struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
struct pm_scan_arg {
	__u64 size;
	__u64 flags;
	__u64 start;
	__u64 end;
	__u64 walk_end;
	__u64 vec;
	__u64 vec_len;
	__u64 max_pages;
	__u64 category_inverted;
	__u64 category_mask;
	__u64 category_anyof_mask;
	__u64 return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

static int open_dev(void)
{
	int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return -errno;
	int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	int err = errno;
	close(dev);
	return fd < 0 ? -err : fd;
}

static int open_syscall(bool user_only)
{
	int flags = O_CLOEXEC | O_NONBLOCK | (user_only ? UFFD_USER_MODE_ONLY : 0);
	long fd = syscall(SYS_userfaultfd, flags);
	return fd < 0 ? -errno : (int)fd;
}

/* UFFDIO_API may be issued once per descriptor, so the probe uses its own. */
static int api(int fd, uint64_t want, uint64_t *got)
{
	struct uffdio_api a = { .api = UFFD_API, .features = want };
	if (ioctl(fd, UFFDIO_API, &a) < 0)
		return -errno;
	*got = a.features;
	return 0;
}

/*
 * Explains, in LM_LIMIT_* bits, why only user-mode faults may be
 * available: the kernel lets unprivileged users handle kernel-mode faults
 * only with CAP_SYS_PTRACE or vm.unprivileged_userfaultfd = 1.
 */
static unsigned explain_limits(int dev_err)
{
	unsigned why = 0;
	if (dev_err == -EACCES || dev_err == -EPERM || dev_err == -ENOENT)
		why |= LM_LIMIT_DEV_DENIED;
	cap_t caps = cap_get_proc();
	if (caps) {
		cap_flag_value_t v = CAP_CLEAR;
		if (cap_get_flag(caps, CAP_SYS_PTRACE, CAP_EFFECTIVE, &v) == 0 && v != CAP_SET)
			why |= LM_LIMIT_NO_PTRACE;
		cap_free(caps);
	}
	FILE *f = fopen("/proc/sys/vm/unprivileged_userfaultfd", "re");
	if (f) {
		int val = 1;
		if (fscanf(f, "%d", &val) == 1 && val == 0)
			why |= LM_LIMIT_SYSCTL;
		fclose(f);
	}
	return why;
}

static int open_origin(int origin)
{
	switch (origin) {
	case LM_UFFD_DEV:
		return open_dev();
	case LM_UFFD_SYSCALL:
		return open_syscall(false);
	case LM_UFFD_SYSCALL_USER:
		return open_syscall(true);
	}
	return -EINVAL;
}

/*
 * Opens a userfaultfd: /dev/userfaultfd first (works for any user the
 * node allows, kernel faults included), then the syscall, then the
 * syscall restricted to user-mode faults.  Features are probed on a
 * throw-away descriptor and the wanted subset that the kernel has is
 * enabled on the real one.  Thread mode cannot work with user-mode-only
 * faults missing nothing, but a kernel-mode access there gets EFAULT,
 * which the limits bits explain.
 */
int lm__uffd_open(int forced_origin, uint64_t want_features,
		  int *origin, unsigned *limits, uint64_t *features)
{
	int order[3] = { LM_UFFD_DEV, LM_UFFD_SYSCALL, LM_UFFD_SYSCALL_USER };
	int n = 3, dev_err = 0, last = -ENOSYS;
	if (forced_origin) {
		order[0] = forced_origin;
		n = 1;
	}
	for (int i = 0; i < n; i++) {
		int probe = open_origin(order[i]);
		if (probe < 0) {
			if (order[i] == LM_UFFD_DEV)
				dev_err = probe;
			last = probe;
			continue;
		}
		uint64_t avail = 0;
		int err = api(probe, 0, &avail);
		close(probe);
		if (err < 0) {
			last = err;
			continue;
		}
		int fd = open_origin(order[i]);
		if (fd < 0) {
			last = fd;
			continue;
		}
		uint64_t want = want_features & avail, got = 0;
		err = api(fd, want, &got);
		if (err < 0) {
			close(fd);
			last = err;
			continue;
		}
		*origin = order[i];
		*features = want;
		*limits = 0;
		if (order[i] == LM_UFFD_SYSCALL_USER)
			*limits |= forced_origin ? LM_LIMIT_FORCED : explain_limits(dev_err);
		return fd;
	}
	*limits = explain_limits(dev_err);
	return last;
}

int lm__uffd_register(int ufd, uintptr_t start, size_t len, bool wp)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = len },
		.mode = UFFDIO_REGISTER_MODE_MISSING | (wp ? UFFDIO_REGISTER_MODE_WP : 0),
	};
	if (ioctl(ufd, UFFDIO_REGISTER, &reg) < 0)
		return -errno;
	if (!(reg.ioctls & ((uint64_t)1 << _UFFDIO_COPY))) {
		lm__uffd_unregister(ufd, start, len);
		return -EOPNOTSUPP;
	}
	return 0;
}

int lm__uffd_unregister(int ufd, uintptr_t start, size_t len)
{
	struct uffdio_range r = { .start = start, .len = len };
	return ioctl(ufd, UFFDIO_UNREGISTER, &r) < 0 ? -errno : 0;
}

/*
 * The kernel reports progress in the copy/zeropage field: the bytes done,
 * or a negative errno.  EINTR is retried here, for the part not done.
 */
int lm__uffd_copy(int ufd, uintptr_t dst, const void *src, size_t len, bool wp, size_t *done)
{
	size_t off = 0;
	for (;;) {
		struct uffdio_copy c = {
			.dst = dst + off,
			.src = (uintptr_t)src + off,
			.len = len - off,
			.mode = wp ? UFFDIO_COPY_MODE_WP : 0,
		};
		int rc = ioctl(ufd, UFFDIO_COPY, &c);
		int err = rc < 0 ? errno : 0;
		if (c.copy > 0)
			off += (size_t)c.copy;
		if (!err) {
			*done = len;
			return 0;
		}
		if (err == EINTR && off < len)
			continue;
		*done = off;
		return -err;
	}
}

int lm__uffd_zeropage(int ufd, uintptr_t dst, size_t len, size_t *done)
{
	size_t off = 0;
	for (;;) {
		struct uffdio_zeropage z = {
			.range = { .start = dst + off, .len = len - off },
			.mode = 0,
		};
		int rc = ioctl(ufd, UFFDIO_ZEROPAGE, &z);
		int err = rc < 0 ? errno : 0;
		if (z.zeropage > 0)
			off += (size_t)z.zeropage;
		if (!err) {
			*done = len;
			return 0;
		}
		if (err == EINTR && off < len)
			continue;
		*done = off;
		return -err;
	}
}

/*
 * Moves len bytes of present pages from src to dst (dst registered with
 * ufd, its page table entries empty).  Stops at the first page that is
 * absent (-ENOENT) or shared with another process (-EBUSY: after fork),
 * or when an event is pending (-EAGAIN), with *done the bytes moved
 * before it.
 */
int lm__uffd_move(int ufd, uintptr_t dst, uintptr_t src, size_t len, size_t *done)
{
	size_t off = 0;
	for (;;) {
		struct uffdio_move m = {
			.dst = dst + off,
			.src = src + off,
			.len = len - off,
			.mode = UFFDIO_MOVE_MODE_DONTWAKE,
		};
		int rc = ioctl(ufd, UFFDIO_MOVE, &m);
		int err = rc < 0 ? errno : 0;
		if (m.move > 0)
			off += (size_t)m.move;
		if (!err) {
			*done = len;
			return 0;
		}
		if (err == EINTR && off < len)
			continue;
		*done = off;
		return -err;
	}
}

/*
 * Write-protects [start, start + len), or lifts the protection and wakes
 * the range's writers.  EAGAIN (an event is pending) is the caller's to
 * handle, like everywhere else: retrying here could wait for a handler
 * that is waiting for the caller.
 */
int lm__uffd_writeprotect(int ufd, uintptr_t start, size_t len, bool protect)
{
	for (;;) {
		struct uffdio_writeprotect w = {
			.range = { .start = start, .len = len },
			.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
		};
		if (ioctl(ufd, UFFDIO_WRITEPROTECT, &w) == 0)
			return 0;
		if (errno != EINTR)
			return -errno;
	}
}

/* Installs a poison marker: the next access raises SIGBUS; wakes the waiters. */
int lm__uffd_poison(int ufd, uintptr_t dst, size_t len)
{
	for (;;) {
		struct uffdio_poison p = {
			.range = { .start = dst, .len = len },
			.mode = 0,
		};
		if (ioctl(ufd, UFFDIO_POISON, &p) == 0)
			return 0;
		if (errno != EINTR)
			return -errno;
	}
}

int lm__uffd_wake(int ufd, uintptr_t start, size_t len)
{
	struct uffdio_range r = { .start = start, .len = len };
	return ioctl(ufd, UFFDIO_WAKE, &r) < 0 ? -errno : 0;
}

/*
 * Asynchronous write protection: reports the pages of [start, end) written
 * since they were last protected, as ranges, and protects them again in
 * the same step (PAGEMAP_SCAN with PM_SCAN_WP_MATCHING), so a write that
 * lands after the scan is seen by the next one.  Returns the number of
 * ranges stored (at most n), or -errno; *next is where the scan stopped
 * (end, or earlier when the ranges did not fit).
 */
int lm__uffd_scan_written(int pagemap_fd, uintptr_t start, uintptr_t end,
			  struct lm__range *out, unsigned n, uintptr_t *next)
{
	struct page_region vec[n ? n : 1];
	struct pm_scan_arg a = {
		.size = sizeof(a),
		.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
		.start = start,
		.end = end,
		.vec = (uintptr_t)vec,
		.vec_len = n,
		.category_mask = PAGE_IS_WRITTEN,
		.return_mask = PAGE_IS_WRITTEN,
	};
	long rc;
	do
		rc = ioctl(pagemap_fd, PAGEMAP_SCAN, &a);
	while (rc < 0 && errno == EINTR);
	if (rc < 0)
		return -errno;
	for (long i = 0; i < rc; i++) {
		out[i].start = (uintptr_t)vec[i].start;
		out[i].end = (uintptr_t)vec[i].end;
	}
	*next = a.walk_end ? (uintptr_t)a.walk_end : end;
	return (int)rc;
}
