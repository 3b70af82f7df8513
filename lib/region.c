/* SPDX-License-Identifier: MIT */
/* Regions: creation and destruction, the address-ordered region table, advice, and the application's munmap/mremap/madvise. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * The region reads its file through an open file description of its own
 * when it can (reopening /proc/self/fd/N): the kernel's readahead state
 * and the file offset then belong to lazymem, and the application's
 * sequential reads and ours do not disturb each other.  Failing that (no
 * /proc, a file since renamed over), a dup shares the caller's.
 */
static int reopen(int fd, const struct stat *st, bool rw)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	int nfd = open(path, (rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (nfd >= 0) {
		struct stat nst;
		if (fstat(nfd, &nst) == 0 && nst.st_dev == st->st_dev && nst.st_ino == st->st_ino)
			return nfd;
		close(nfd);
	}
	nfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	return nfd < 0 ? -errno : nfd;
}

/* The source file's descriptor checks: readable (and writable, shared), a file or a block device. */
static int check_file(size_t ps, int fd, off_t offset, bool shared, struct stat *st)
{
	if (fd < 0)
		return -EBADF;
	if (offset < 0 || ((size_t)offset & (ps - 1)))
		return -EINVAL;
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	if ((fl & O_ACCMODE) == O_WRONLY || (fl & O_PATH) ||
	    (shared && (fl & O_ACCMODE) != O_RDWR))
		return -EACCES;
	if (fstat(fd, st) < 0)
		return -errno;
	if (!S_ISREG(st->st_mode) && !S_ISBLK(st->st_mode))
		return -ENODEV;
	return 0;
}

/* A file or image region's own descriptor and the file's size as first seen. */
static int attach_file(struct lm_region *r, int fd, off_t offset, bool shared,
		       const struct stat *st)
{
	r->fd = reopen(fd, st, shared);
	r->shared = shared;
	if (r->fd < 0) {
		int err = r->fd;
		r->fd = -1;
		return err;
	}
	r->foff = (uint64_t)offset;
	uint64_t size = (uint64_t)st->st_size;
	/* A block device's st_size is 0: ask the device. */
	if (S_ISBLK(st->st_mode) && ioctl(r->fd, BLKGETSIZE64, &size) < 0)
		size = 0;
	atomic_init(&r->fsize, size);
	return 0;
}

/*
 * The region's memory, registered with the runtime's userfaultfd.
 * Hugetlb pages are reserved here, so that a fill never finds the pool
 * empty: the region fails now with -ENOMEM instead of a thread with
 * SIGBUS later.  Base pages are not: lazy memory costs nothing until it
 * is touched.
 */
static int map_region(struct lm_runtime *rt, struct lm_region *r, size_t len)
{
	int mflags = MAP_PRIVATE | MAP_ANONYMOUS;
	if (rt->huge)
		mflags |= MAP_HUGETLB | (int)(rt->page_shift << MAP_HUGE_SHIFT);
	else
		mflags |= MAP_NORESERVE;
	void *addr = mmap(NULL, len, PROT_READ | PROT_WRITE, mflags, -1, 0);
	if (addr == MAP_FAILED)
		return -errno;
	r->start = (uintptr_t)addr;
	int rc = lm__uffd_register(rt->ufd, r->start, len,
				   (rt->features & UFFD_FEATURE_PAGEFAULT_FLAG_WP) != 0);
	if (rc < 0) {
		munmap(addr, len);
		r->start = 0;
	}
	return rc;
}

/*
 * Publishes the mapped region in the table.  mmap may have handed out an
 * address the application just unmapped from another region.  Its
 * munmap returned once a handler had read the UNMAP event, a moment
 * before the handler cuts that range out of the table: wait for the event
 * batches in flight, or a fault here could find the old region, and the
 * late cut would remove the new one.
 */
static int publish(struct lm_runtime *rt, struct lm_region *r, size_t len)
{
	if (getpid() == rt->ufd_pid && rt->nthreads)
		lm__epoch_wait(&rt->evq);
	pthread_mutex_lock(&rt->lock);
	struct lm__extent ext = { r->start, r->start + len, r };
	int rc = lm__table_rebuild(rt, NULL, 0, 0, &ext);
	if (rc == 0)
		lm__region_list_add(rt, r);
	pthread_mutex_unlock(&rt->lock);
	return rc;
}

/*
 * remote: an image's cluster, which its data pages are read from (the
 * image region then owns it, closed with it or here on failure).
 */
static int create(struct lm_runtime *rt, size_t length, unsigned flags, int kind,
		  const void *buf, int fd, off_t offset, struct lm__remote *remote,
		  struct lm_region **out)
{
	bool image = kind == LM_SOURCE_IMAGE, has_file = kind == LM_SOURCE_FILE || image;
	bool shared = flags & LM_REGION_SHARED;
	size_t ps = rt ? (size_t)rt->page_size : 0;
	struct stat st;
	int rc = 0;
	if (!rt || !out || (!length && !image) || (flags & ~LM_REGION_SHARED) ||
	    ((flags & LM_REGION_SHARED) && kind != LM_SOURCE_FILE) ||
	    (kind == LM_SOURCE_MEMORY && !buf))
		rc = -EINVAL;
	if (!rc && has_file)
		rc = check_file(ps, fd, offset, shared, &st);
	/* An image says how long its region is, once its header and index check out. */
	struct lm__image *im = NULL;
	if (!rc && image)
		rc = lm__image_open(fd, ps, &im);
	if (rc < 0) {
		lm__remote_close(remote);
		return rc;
	}
	if (image) {
		im->remote = remote;
		length = im->length;
	}
	if (length > SIZE_MAX - ps) {
		lm__image_free(im);
		return -EINVAL;
	}
	size_t len = (length + ps - 1) & ~(ps - 1);
	/* Writeback must see writes: shared regions need write-protect tracking. */
	if (shared) {
		/*
		 * Async tracking could only write clean pages back blindly (see
		 * evict.c), and a flush could not be torn-free: not offered.
		 */
		if (!(rt->features & UFFD_FEATURE_PAGEFAULT_FLAG_WP) || getpid() != rt->ufd_pid ||
		    rt->wp_async || rt->huge)
			return -EOPNOTSUPP;
		atomic_store(&rt->track, true);
	}
	struct lm_region *r = lm__region_alloc(rt, len);
	if (!r) {
		lm__image_free(im);
		return -ENOMEM;
	}
	r->kind = kind;
	r->buf = buf;
	r->buflen = length;
	r->image = im;
	lm__store_init_source(&r->src, r);
	if ((has_file && (rc = attach_file(r, fd, offset, shared, &st)) < 0) ||
	    (rc = map_region(rt, r, len)) < 0) {
		lm__region_release(r);
		return rc;
	}
	/*
	 * A memory source inside a region would make the handler fault on
	 * registered memory while it copies (docs/DESIGN.md, invariant 1):
	 * refuse it.  Checked before rt->lock: the check takes the
	 * process-wide lock of all runtimes, which fork() takes before each
	 * runtime's lock.
	 */
	if (kind == LM_SOURCE_MEMORY && lm__overlaps_any_runtime((uintptr_t)buf, length))
		rc = -EINVAL;
	if (rc < 0 || (rc = publish(rt, r, len)) < 0) {
		lm__uffd_unregister(rt->ufd, r->start, len);
		munmap((void *)r->start, len);
		lm__region_release(r);
		return rc;
	}
	LM__STAT_ADD(rt, regions_live, 1);
	LM__STAT_ADD(rt, regions_created, 1);
	LM__STAT_ADD(rt, region_bytes, len);
	*out = r;
	return 0;
}

int lm_region_create_zero(struct lm_runtime *rt, size_t length, unsigned flags,
			  struct lm_region **out)
{
	LM__KEEP_ERRNO;
	return create(rt, length, flags, LM_SOURCE_ZERO, NULL, -1, 0, NULL, out);
}

int lm_region_create_image(struct lm_runtime *rt, int fd, unsigned flags, struct lm_region **out)
{
	LM__KEEP_ERRNO;
	if (flags)
		return -EINVAL;
	return create(rt, 0, flags, LM_SOURCE_IMAGE, NULL, fd, 0, NULL, out);
}

int lm_region_create_image_at(struct lm_runtime *rt, const char *where, unsigned flags,
			      struct lm_region **out)
{
	LM__KEEP_ERRNO;
	if (!rt || !where || !*where || !out || flags)
		return -EINVAL;
	if (strncmp(where, "redis://", 8)) {
		int fd = open(where, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		int rc = create(rt, 0, flags, LM_SOURCE_IMAGE, NULL, fd, 0, NULL, out);
		close(fd);
		return rc;
	}
	/* A cluster's client allocates and blocks: never in a signal handler. */
	if (rt->mode != LM_MODE_THREAD)
		return -EOPNOTSUPP;
	int fd;
	struct lm__remote *remote;
	int rc = lm__image_fetch(rt, where, (size_t)rt->page_size, &fd, &remote);
	if (rc < 0)
		return rc;
	rc = create(rt, 0, flags, LM_SOURCE_IMAGE, NULL, fd, 0, remote, out);
	close(fd);
	return rc;
}

int lm_region_create_memory(struct lm_runtime *rt, const void *buf, size_t length,
			    unsigned flags, struct lm_region **out)
{
	LM__KEEP_ERRNO;
	return create(rt, length, flags, LM_SOURCE_MEMORY, buf, -1, 0, NULL, out);
}

int lm_region_create_file(struct lm_runtime *rt, int fd, off_t offset, size_t length,
			  unsigned flags, struct lm_region **out)
{
	LM__KEEP_ERRNO;
	return create(rt, length, flags, LM_SOURCE_FILE, NULL, fd, offset, NULL, out);
}

static void drop_prefetch(struct lm_runtime *rt, struct lm_region *r)
{
	pthread_mutex_lock(&rt->pf_lock);
	struct lm__prefetch **pp = &rt->pf_head;
	while (*pp) {
		struct lm__prefetch *p = *pp;
		if (p->r == r) {
			*pp = p->next;
			lm__free(p);
		} else {
			pp = &p->next;
		}
	}
	rt->pf_tail = pp;
	pthread_mutex_unlock(&rt->pf_lock);
}

/* Called with rt->lock held. */
static void destroy_locked(struct lm_runtime *rt, struct lm_region *r)
{
	/* Snapshots first: their savers read the region's pages. */
	if (!r->parent)
		lm__snap_detach_all(r);
	for (size_t i = 0; i < r->naliases; i++)
		destroy_locked(rt, r->aliases[i]);
	/*
	 * Only the region's own extents: what the application unmapped, and
	 * whatever it mapped there since (maybe another region), is not ours.
	 * Unregistering wakes any thread still blocked on one of its pages.
	 * In a fork() child whose descriptor still serves the parent, an
	 * ioctl would act on the parent's address space: skip it.
	 */
	size_t n;
	struct lm__extent *ext = lm__region_extents(rt, r, 0, UINTPTR_MAX, &n);
	for (size_t i = 0; i < n && getpid() == rt->ufd_pid; i++)
		lm__uffd_unregister(rt->ufd, ext[i].start, ext[i].end - ext[i].start);
	drop_prefetch(rt, r);
	lm__table_rebuild_must(rt, r, 0, 0, NULL);
	lm__region_list_del(rt, r);
	/* Aliases are the application's memory now (it moved them): leave them mapped. */
	for (size_t i = 0; i < n && !r->parent; i++)
		munmap((void *)ext[i].start, ext[i].end - ext[i].start);
	lm__free(ext);
	if (!r->parent) {
		/* Aliases were never counted: they are parts of their parent. */
		LM__STAT_SUB(rt, regions_live, 1);
		LM__STAT_SUB(rt, region_bytes, r->len);
	}
	lm__region_release(r);
}

int lm_region_destroy(struct lm_region *r)
{
	LM__KEEP_ERRNO;
	if (!r || r->parent)
		return -EINVAL;
	struct lm_runtime *rt = r->rt;
	/* Nothing written to a shared region is lost: if it cannot reach the file, the region stays. */
	if (r->shared && getpid() == rt->pid) {
		int rc = lm__writeback(r, 0, r->npages);
		if (rc < 0)
			return rc;
	}
	/*
	 * An application's munmap returns once a handler has read its UNMAP
	 * event, a moment before the handler records the hole; a mapping the
	 * application then puts there must not be unmapped below.  So wait
	 * for the event batches in flight (without rt->lock, which applying
	 * a remap event takes).
	 */
	if (getpid() == rt->ufd_pid)
		lm__epoch_wait(&rt->evq);
	pthread_mutex_lock(&rt->lock);
	destroy_locked(rt, r);
	pthread_mutex_unlock(&rt->lock);
	return 0;
}

void lm__region_free_all(struct lm_runtime *rt)
{
	/* As in lm_region_destroy: holes recorded before anything is unmapped. */
	if (getpid() == rt->ufd_pid && rt->nthreads)
		lm__epoch_wait(&rt->evq);
	pthread_mutex_lock(&rt->lock);
	for (;;) {
		struct lm_region *victim = rt->regions;
		while (victim && victim->parent)
			victim = victim->next;
		if (!victim)
			break;
		destroy_locked(rt, victim);
	}
	pthread_mutex_unlock(&rt->lock);
}

void *lm_region_addr(const struct lm_region *r)
{
	return r ? (void *)r->start : NULL;
}

size_t lm_region_length(const struct lm_region *r)
{
	return r ? r->len : 0;
}

static int queue_prefetch(struct lm_runtime *rt, struct lm_region *r, uint64_t first,
			  uint64_t count)
{
	struct lm__prefetch *p = lm__malloc(sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->r = r;
	p->id = r->id;
	p->first = first;
	p->count = count;
	p->next = NULL;
	pthread_mutex_lock(&rt->pf_lock);
	if (!rt->pf_started) {
		int rc = lm__filler_init(&rt->pf_filler, rt, rt->opt.io == LM_IO_URING);
		if (rc == 0)
			rc = -pthread_create(&rt->pf_thread, NULL, lm__prefetch_main, rt);
		if (rc < 0) {
			lm__filler_fini(&rt->pf_filler);
			pthread_mutex_unlock(&rt->pf_lock);
			lm__free(p);
			return rc;
		}
		rt->pf_started = true;
	}
	*rt->pf_tail = p;
	rt->pf_tail = &p->next;
	pthread_cond_signal(&rt->pf_cond);
	pthread_mutex_unlock(&rt->pf_lock);
	return 0;
}

/*
 * Drops [start, end) of r, its live extents only: whatever the application
 * mapped where it unmapped part of the region is not ours to discard.  The
 * extents are copied out first: madvise waits for a handler to read its
 * event, and a handler may be waiting for this thread's read section.
 */
static int dontneed(struct lm_region *r, uintptr_t start, uintptr_t end)
{
	struct lm_runtime *rt = r->rt;
	size_t n;
	int idx = lm__read_lock(rt);
	struct lm__extent *ext = lm__region_extents(rt, r, start, end, &n);
	lm__read_unlock(rt, idx);
	int rc = 0;
	for (size_t i = 0; i < n; i++)
		if (madvise((void *)ext[i].start, ext[i].end - ext[i].start, MADV_DONTNEED) < 0 && !rc)
			rc = -errno;
	lm__free(ext);
	/*
	 * madvise returns once a handler has read the REMOVE event, a moment
	 * before the handler applies it: applied after the caller's next
	 * fill (a will-need right after), it would forget pages installed
	 * since, leaving them mapped but counted out.  So the batches in
	 * flight are waited out, as a rollback's drops and a destroy do.
	 */
	if (getpid() == rt->ufd_pid)
		lm__epoch_wait(&rt->evq);
	idx = lm__read_lock(rt);
	lm__region_forget(r, start, end, true);
	lm__read_unlock(rt, idx);
	return rc;
}

/*
 * Populate is what makes a range safe for system calls that write into
 * it where a fault cannot wait (signal mode, a user-mode-only
 * userfaultfd): a page installed write-protected for dirty tracking
 * would still fail such a call with EFAULT.  There the pages are filled
 * as if written: installed writable, and counted dirty (a budget then
 * writes them to swap rather than drops them).  A live snapshot keeps
 * them protected all the same: their first write must preserve them.
 */
static unsigned populate_flags(const struct lm_runtime *rt)
{
	bool cannot_wait = rt->mode == LM_MODE_SIGNAL || rt->origin == LM_UFFD_SYSCALL_USER;
	return cannot_wait ? LM_FILL_WRITE : 0;
}

static int populate(struct lm_region *r, uint64_t first, uint64_t count)
{
	struct lm_runtime *rt = r->rt;
	struct lm__filler f;
	int rc = lm__filler_init(&f, rt, false);
	if (rc < 0)
		return rc;
	long n;
	for (;;) {
		int idx = lm__read_lock(rt);
		n = lm__fill_range(&f, r, first, count, populate_flags(rt));
		/* "Resident when it returns" includes pages other threads were filling. */
		if (n != -EAGAIN)
			lm__pte_wait_settled(r, first, count);
		lm__read_unlock(rt, idx);
		if (n != -EAGAIN)
			break;
		/* The address space is changing: retry once the event is applied, outside. */
		sched_yield();
	}
	lm__filler_fini(&f);
	return n < 0 ? (int)n : 0;
}

int lm_region_advise(struct lm_region *r, size_t offset, size_t length, int advice)
{
	LM__KEEP_ERRNO;
	if (!r || r->parent || !length)
		return -EINVAL;
	struct lm_runtime *rt = r->rt;
	size_t ps = (size_t)rt->page_size;
	if ((offset & (ps - 1)) || offset >= r->len || length > r->len - offset)
		return -EINVAL;
	uint64_t first = offset >> rt->page_shift;
	uint64_t count = (length + ps - 1) >> rt->page_shift;
	switch (advice) {
	case LM_ADV_NORMAL:
	case LM_ADV_SEQUENTIAL:
	case LM_ADV_RANDOM:
		lm__region_set_advice(r, first, first + count - 1, advice);
		return 0;
	case LM_ADV_WILLNEED:
		return queue_prefetch(rt, r, first, count);
	case LM_ADV_POPULATE:
		return populate(r, first, count);
	case LM_ADV_DONTNEED:
		/* A shared region's writes are the file's: written back before they are dropped. */
		if (r->shared && getpid() == rt->pid) {
			int rc = lm__writeback(r, first, count);
			if (rc < 0)
				return rc;
		}
		/* What snapshots still need of the pages is preserved before they go. */
		lm__snap_before_drop(r, first, count);
		return dontneed(r, r->start + offset, r->start + offset + (count << rt->page_shift));
	}
	return -EINVAL;
}
