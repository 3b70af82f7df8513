/* SPDX-License-Identifier: MIT */
/* Where lazymemd's socket is: one rule for the runtime, the daemon and the command. */
#include "sockpath.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>
#include <unistd.h>

int lm__socket_path(const char *path, int use_env, char *buf, size_t len)
{
	char tmp[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
	const char *env = use_env ? getenv("LAZYMEM_SOCKET") : NULL;
	int n;
	if (path && *path)
		n = snprintf(tmp, sizeof(tmp), "%s", path);
	else if (env && *env && strcasecmp(env, "off"))
		n = snprintf(tmp, sizeof(tmp), "%s", env);
	else if (geteuid() == 0)
		n = snprintf(tmp, sizeof(tmp), "%s", LM__SOCKET_ROOT);
	else if ((env = getenv("XDG_RUNTIME_DIR")) && *env == '/')
		n = snprintf(tmp, sizeof(tmp), "%s/lazymem/lazymemd.sock", env);
	else
		return -ENOENT;
	/* sun_path holds the name and, for portability, its terminating NUL. */
	if (n < 0 || (size_t)n >= sizeof(tmp) - 1 || (size_t)n >= len)
		return -ENAMETOOLONG;
	memcpy(buf, tmp, (size_t)n + 1);
	return 0;
}

int lm__socket_system_too(const char *path, int use_env)
{
	const char *env = use_env ? getenv("LAZYMEM_SOCKET") : NULL;
	return !(path && *path) && !(env && *env && strcasecmp(env, "off")) && geteuid() != 0;
}
