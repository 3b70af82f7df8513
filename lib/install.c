/* SPDX-License-Identifier: MIT */
/* Installing pages: the one way contents get into a region's memory, and what each failure of it means. */
#include "internal.h"

#include <errno.h>

/*
 * Like the kernel's own userfaultfd code, which installs every page
 * through one function, every page lazymem puts into a region goes
 * through lm__install: the fill path (faults, readahead, prefetch),
 * rollback, and the zeros given to registered memory no region owns.
 * The rules of docs/DESIGN.md's invariant 4 are said once, here:
 *
 *  - 0: every page of the run is in.
 *  - -EEXIST at page *done: another path populated it.  The caller keeps
 *    going after it (and wakes it: a fault may wait there).
 *  - -EAGAIN: the address space is changing (mremap, fork, an event not
 *    read yet).  Never retried here: the caller puts its pages back and
 *    lets the access replay, since the event it waits for may need this
 *    very thread to leave its read section.
 *  - anything else at page *done: that page cannot be installed there
 *    (ENOENT: not mapped any more; ESRCH: the process is gone).
 *
 * A partial run counts as such; the counts are the runtime's.
 * Async-signal-safe: the signal-mode fault path installs here too.
 */
int lm__install(struct lm_runtime *rt, int ufd, uintptr_t addr, const unsigned char *src,
		unsigned n, unsigned how, unsigned *done)
{
	size_t ps = (size_t)rt->page_size, bytes = 0;
	int rc;
	LM__ASSERT(!((how & LM__INSTALL_ZEROS) && (how & LM__INSTALL_WP)));
	if ((how & LM__INSTALL_ZEROS) && rt->huge) {
		/* Hugetlb has no zero page to map: a copy of zeros, a page at a time. */
		rc = 0;
		for (unsigned i = 0; i < n && !rc; i++) {
			size_t one = 0;
			rc = lm__uffd_copy(ufd, addr + i * ps, rt->zeros, ps, false, &one);
			bytes += one;
		}
	} else if (how & LM__INSTALL_ZEROS) {
		rc = lm__uffd_zeropage(ufd, addr, (size_t)n * ps, &bytes);
	} else {
		rc = lm__uffd_copy(ufd, addr, src, (size_t)n * ps, (how & LM__INSTALL_WP) != 0,
				   &bytes);
	}
	*done = (unsigned)(bytes / ps);
	if (rc == -EEXIST)
		LM__STAT_ADD(rt, copy_eexist, 1);
	else if (rc == -EAGAIN)
		LM__STAT_ADD(rt, copy_eagain, 1);
	if (rc && *done && rc != -EEXIST)
		LM__STAT_ADD(rt, copy_partial, 1);
	return rc;
}
