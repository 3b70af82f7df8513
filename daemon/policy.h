/* SPDX-License-Identifier: MIT */
/* lazymemd's pressure policy: which budgets to give the runtimes of one scope, from what the kernel says. */
#ifndef LMD_POLICY_H
#define LMD_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* lazymemd.conf's settings, as it spells them (see lazymemd(8) for the reasoning). */
struct lmd_policy_conf {
	bool enabled;		/* policy: on */
	uint64_t interval_ms;	/* interval: how often the scopes are read */
	double low_pct;		/* low: below this much available (percent of the limit), budgets go down */
	double high_pct;	/* high: above it, the policy's budgets are lifted */
	uint64_t low_min;	/* low_min: the low mark is at least this many bytes */
	double psi_some;	/* psi: PSI some avg10 (percent) counted as pressure when memory is short too */
	double hold_s;		/* hold: seconds without pressure before the policy's budgets go */
	double lookahead_s;	/* lookahead: seconds of the scope's recent fall taken off what is available */
	uint64_t floor;		/* floor: the least budget of a runtime that names none */
	bool proactive;		/* proactive: offload cold memory while its stalls stay under target */
	double target;		/* target: the stall (percent of time filling pages) proactive mode aims at */
	double step;		/* step: percent of a runtime's resident memory offloaded per second */
	/* Not the policy's, but the daemon's, in the same file: each user's share of its tables. */
	uint64_t user_runtimes;		/* user_runtimes: runtimes of one uid at most (root: no limit) */
	uint64_t user_connections;	/* user_connections: connections of one uid at most */
};

/* The defaults: policy on, reactive only. */
void lmd_policy_defaults(struct lmd_policy_conf *c);

/*
 * One "key = value" setting; a line of lazymemd.conf or a -o argument.
 * Sizes take K, M, G, T; percentages a number, with an optional %.
 * Returns 0, or -EINVAL with *why set to a static message.
 */
int lmd_policy_set(struct lmd_policy_conf *c, const char *key, const char *value, const char **why);

/*
 * Reads a whole config file: blank lines and lines starting with # are
 * skipped.  Returns 0, -errno for a file that cannot be read, or -EINVAL
 * with *line set to the first bad line's number and *why to the reason.
 */
int lmd_policy_load(struct lmd_policy_conf *c, const char *path, int *line, const char **why);

/* Why a member's budget is what the policy wants. */
enum lmd_why {
	LMD_WHY_NONE = 0,	/* no change wanted */
	LMD_WHY_LOWER,		/* available memory below the low mark, or PSI above its mark: lowered */
	LMD_WHY_CAP,		/* between the marks: held to its resident memory and a share of what is left */
	LMD_WHY_RELEASE,	/* above the high mark: given back the budget it had before */
	LMD_WHY_PROACTIVE,	/* proactive: cold memory offloaded */
	LMD_WHY_BACKOFF,	/* proactive: stalls above target, raised */
	LMD_WHY_FLOOR,		/* wanted lower, held at its floor */
};

const char *lmd_why_name(int why);

/* A runtime as the policy sees it: all in bytes. */
struct lmd_member {
	uint64_t resident;	/* resident pages of its regions */
	uint64_t budget;	/* its budget now (0: none) */
	uint64_t own;		/* the budget it had apart from the policy (0: none) */
	uint64_t floor;		/* the least budget the policy may give it */
	double stall;		/* percent of the last interval spent filling pages (proactive mode) */
	uint64_t want;		/* out: the budget it should have (0: none) */
	int why;		/* out: enum lmd_why */
};

enum lmd_state {
	LMD_STATE_OK = 0,	/* plenty available: no budget of the policy's */
	LMD_STATE_WATCH,	/* between the marks: growth held to what is left */
	LMD_STATE_PRESSURE,	/* below the low mark: budgets lowered */
	LMD_STATE_EXHAUSTED,	/* below the low mark with every runtime at its floor */
};

const char *lmd_state_name(int state);

/*
 * Decides the budgets of the n runtimes of one scope whose limit is
 * limit bytes with available bytes left (ahead: as lmd_policy_ahead
 * projects it, which sets the state and the shares of growth, while
 * what must be taken back comes from available) and PSI some avg10 psi (percent;
 * negative: unknown), over an interval of dt seconds, calm seconds after
 * its last pressure.  Fills in every member's want and why; returns the
 * scope's enum lmd_state.
 *
 * Below the low mark the memory to find is what brings the scope back
 * between the marks, taken from the runtimes with the most above their
 * floor first, down to a common level (water filling), so that one large
 * process gives more than several small ones and none goes below its
 * floor.  Between the marks each runtime may grow by an equal share of
 * what is left above the low mark: the scope cannot be filled faster
 * than the policy looks.  Above the high mark the policy's budgets go,
 * once the scope has been calm for hold seconds: memory just freed by
 * eviction (the swap file's clean page cache) is not a reason to let
 * everything grow back at once.
 */
int lmd_policy_decide(const struct lmd_policy_conf *c, uint64_t limit, uint64_t available,
		      uint64_t ahead, double psi, double dt, double calm, struct lmd_member *m,
		      size_t n);

/*
 * What the policy takes as available: available less lookahead seconds
 * of the scope's recent fall (bytes a second, as the daemon smooths it).
 * Processes filling a cgroup at 200 MB/s take 20 MB between two looks
 * and more while their runtimes evict; so a scope falling fast is under
 * pressure before it reaches the low mark, not after.
 */
uint64_t lmd_policy_ahead(const struct lmd_policy_conf *c, uint64_t available, double fall);

/* The low and high marks of a scope of limit bytes. */
void lmd_policy_marks(const struct lmd_policy_conf *c, uint64_t limit, uint64_t *low,
		      uint64_t *high);

#endif
