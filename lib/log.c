/* SPDX-License-Identifier: MIT */
/* Logging: the runtime's messages to the application's log callback, never from a signal handler. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

/* The SIGBUS handler counts itself here: formatting and the callback are not async-signal-safe, so nothing is logged meanwhile. */
__thread int lm__in_signal __attribute__((tls_model("initial-exec")));

void lm__log(struct lm_runtime *rt, int level, const char *fmt, ...)
{
	if (!rt->opt.log || lm__in_signal)
		return;
	char msg[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	rt->opt.log(level, msg, rt->opt.log_arg);
}
