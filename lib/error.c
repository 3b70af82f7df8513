/* SPDX-License-Identifier: MIT */
/* Error messages, the library version, and the debug build's report of a broken invariant. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * Messages are for the errors lazymem returns, worded for its callers;
 * anything else falls back to the C library's table (strerrordesc_np is
 * thread-safe and does not touch errno, unlike strerror).
 */
const char *lm_strerror(int err)
{
	switch (err) {
	case 0:
		return "Success";
	case -EINVAL:
		return "Invalid argument (NULL, zero length, unaligned offset or unknown flag)";
	case -EBADF:
		return "Bad file descriptor (closed, or -1)";
	case -ENOMEM:
		return "Out of memory";
	case -ENOSYS:
		return "userfaultfd is not available in this kernel";
	case -EPERM:
		return "userfaultfd not permitted (see vm.unprivileged_userfaultfd and CAP_SYS_PTRACE)";
	case -EACCES:
		return "Permission denied (file descriptor not open for reading)";
	case -EOPNOTSUPP:
		return "Not supported here: a userfaultfd feature, or io_uring when asked for by name";
	case -EBUSY:
		return "Busy: the object is still in use";
	case -ENOEXEC:
		return "Not a lazymem image (another format, version or page size)";
	case -EBADMSG:
		return "Damaged data: a checksum does not match, or the file is truncated";
	case -ENOSPC:
		return "No space: the swap file or its disk is full";
	}
	if (err < 0) {
		const char *s = strerrordesc_np(-err);
		if (s)
			return s;
	}
	return "Unknown error";
}

const char *lm_version(void)
{
	return PACKAGE_VERSION;
}

#ifdef LM_DEBUG
/*
 * A debug build stops at the first broken invariant, where it broke: the
 * state after it is already wrong, and every later symptom would point
 * elsewhere.  Only ever compiled into debug builds (LM__ASSERT).  Written
 * with write(2), which is async-signal-safe: the check may fail in a
 * SIGBUS handler.
 */
void lm__assert_fail(const char *expr, const char *file, int line, const char *func)
{
	char buf[512];
	int n = snprintf(buf, sizeof(buf), "lazymem: %s:%d: %s: invariant broken: %s\n", file, line,
			 func, expr);
	if (n > 0 && write(STDERR_FILENO, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1) < 0) {
		/* Nothing more to do: the abort below is the report. */
	}
	abort();
}
#endif
