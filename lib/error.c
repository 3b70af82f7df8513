/* SPDX-License-Identifier: MIT */
/* Error messages and the library version. */
#include "internal.h"

#include <errno.h>
#include <string.h>

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
