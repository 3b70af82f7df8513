/* SPDX-License-Identifier: MIT */
/* The kernel side of lazymem-bench's memory-pressure comparisons: a swap file and a cgroup-v1 memory limit. */
#ifndef LM_KSWAP_H
#define LM_KSWAP_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * A swap file in dir, enabled, and a memory cgroup of its own; both are
 * removed by kswap_teardown, at exit and on SIGINT or SIGTERM too, so
 * that an interrupted benchmark leaves no swap enabled behind it.
 */
struct kswap {
	char swapfile[4096];
	char cgroup[4096];
	bool swap_on, cg_made;
	volatile pid_t child;	/* a process in the cgroup: killed before the cgroup goes */
};

/* false, with the reason on stderr, when this machine cannot. */
bool kswap_setup(struct kswap *k, const char *dir, uint64_t swap_bytes, const char *tag);
int kswap_set_limit(const struct kswap *k, uint64_t bytes);
/* Moves the calling process into the cgroup. */
int kswap_enter(const struct kswap *k);
/* True when the kernel's OOM killer killed something in the cgroup since the last call. */
bool kswap_oom_killed(const struct kswap *k);
void kswap_teardown(struct kswap *k);

#endif
