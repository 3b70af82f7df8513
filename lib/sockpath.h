/* SPDX-License-Identifier: MIT */
/* Where lazymemd's socket is: one rule for the runtime, the daemon and the command. */
#ifndef LM_SOCKPATH_H
#define LM_SOCKPATH_H

#include <stddef.h>

#define LM__SOCKET_ROOT "/run/lazymem/lazymemd.sock"

/*
 * Writes the socket's path to buf: path when not NULL, else
 * $LAZYMEM_SOCKET (when use_env), else /run/lazymem/lazymemd.sock for
 * root and $XDG_RUNTIME_DIR/lazymem/lazymemd.sock for anyone else.
 * Returns 0, -ENOENT when no rule gives a path (a user without
 * XDG_RUNTIME_DIR) or -ENAMETOOLONG when it does not fit a sockaddr_un.
 */
int lm__socket_path(const char *path, int use_env, char *buf, size_t len);

/*
 * Whether the system daemon's socket (LM__SOCKET_ROOT) is a place to try
 * after the one lm__socket_path gave, or instead of it when it gave
 * -ENOENT: for a user who is not root, when neither path nor
 * $LAZYMEM_SOCKET (when use_env) named one.  A system-wide daemon then
 * sees every user's processes, each user only their own.
 */
int lm__socket_system_too(const char *path, int use_env);

#endif
