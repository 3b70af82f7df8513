/* SPDX-License-Identifier: MIT */
/* lazymemd's pressure policy: which budgets to give the runtimes of one scope, from what the kernel says. */
#include "policy.h"
#include "proto.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/*
 * The least budget the policy ever sets, whatever a floor says: below a
 * megabyte a runtime spends its time waiting for its evictor, and a
 * budget of 0 would mean none at all.
 */
#define MIN_BUDGET (1ull << 20)

void lmd_policy_defaults(struct lmd_policy_conf *c)
{
	*c = (struct lmd_policy_conf){
		.enabled = true,
		.interval_ms = 100,
		.low_pct = 10,
		.high_pct = 25,
		.low_min = 32ull << 20,
		.psi_some = 40,
		.hold_s = 5,
		.lookahead_s = 0.5,
		.floor = 16ull << 20,
		.proactive = false,
		.target = 0.1,
		.step = 1,
		.user_runtimes = 1024,
		.user_connections = 4096,
	};
}

static int parse_number(const char *s, double lo, double hi, bool pct, double *out)
{
	char *end;
	if (!isdigit((unsigned char)*s) && *s != '.')
		return -EINVAL;
	errno = 0;
	double v = strtod(s, &end);
	if (pct && *end == '%')
		end++;
	if (errno || *end || !(v >= lo && v <= hi))
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_bool(const char *s, bool *out)
{
	if (!strcasecmp(s, "on") || !strcasecmp(s, "yes") || !strcasecmp(s, "true") || !strcmp(s, "1"))
		*out = true;
	else if (!strcasecmp(s, "off") || !strcasecmp(s, "no") || !strcasecmp(s, "false") ||
		 !strcmp(s, "0"))
		*out = false;
	else
		return -EINVAL;
	return 0;
}

int lmd_policy_set(struct lmd_policy_conf *c, const char *key, const char *value, const char **why)
{
	struct lmd_policy_conf t = *c;
	double d;
	int rc;
	if (!strcmp(key, "policy")) {
		rc = parse_bool(value, &t.enabled);
		*why = "policy: on or off";
	} else if (!strcmp(key, "proactive")) {
		rc = parse_bool(value, &t.proactive);
		*why = "proactive: on or off";
	} else if (!strcmp(key, "interval")) {
		/* Milliseconds, or a number with ms or s. */
		char *end;
		errno = 0;
		double v = isdigit((unsigned char)*value) ? strtod(value, &end) : -1;
		if (v >= 0 && !strcmp(end, "s"))
			v *= 1000;
		else if (v >= 0 && *end && strcmp(end, "ms"))
			v = -1;
		rc = errno || v < 10 || v > 60000 ? -EINVAL : 0;
		t.interval_ms = (uint64_t)v;
		*why = "interval: 10ms to 60s";
	} else if (!strcmp(key, "low")) {
		rc = parse_number(value, 0, 50, true, &t.low_pct);
		*why = "low: a percentage of the limit, 0 to 50";
	} else if (!strcmp(key, "high")) {
		rc = parse_number(value, 0, 90, true, &t.high_pct);
		*why = "high: a percentage of the limit, 0 to 90";
	} else if (!strcmp(key, "psi")) {
		rc = parse_number(value, 0, 100, true, &t.psi_some);
		*why = "psi: a percentage, 0 (not used) to 100";
	} else if (!strcmp(key, "hold")) {
		rc = parse_number(value, 0, 3600, false, &t.hold_s);
		*why = "hold: seconds, 0 to 3600";
	} else if (!strcmp(key, "lookahead")) {
		rc = parse_number(value, 0, 60, false, &t.lookahead_s);
		*why = "lookahead: seconds, 0 to 60";
	} else if (!strcmp(key, "target")) {
		rc = parse_number(value, 0.001, 50, true, &t.target);
		*why = "target: a percentage of time, 0.001 to 50";
	} else if (!strcmp(key, "step")) {
		rc = parse_number(value, 0.01, 50, true, &d);
		t.step = d;
		*why = "step: a percentage per second, 0.01 to 50";
	} else if (!strcmp(key, "low_min")) {
		rc = lmd_parse_size(value, &t.low_min);
		*why = "low_min: a size (K, M, G, T)";
	} else if (!strcmp(key, "user_runtimes") || !strcmp(key, "user_connections")) {
		uint64_t *v = key[5] == 'r' ? &t.user_runtimes : &t.user_connections;
		rc = lmd_parse_size(value, v);
		rc = rc < 0 || *v < 1 || *v > 16384 ? -EINVAL : 0;
		*why = "user_runtimes, user_connections: a count, 1 to 16384";
	} else if (!strcmp(key, "floor")) {
		rc = lmd_parse_size(value, &t.floor);
		*why = "floor: a size (K, M, G, T)";
	} else {
		*why = "unknown setting (policy, interval, low, high, low_min, psi, hold, lookahead, "
		       "floor, proactive, target, step, user_runtimes, user_connections)";
		return -EINVAL;
	}
	if (rc < 0)
		return -EINVAL;
	if (t.high_pct < t.low_pct) {
		*why = "high must not be below low";
		return -EINVAL;
	}
	*c = t;
	return 0;
}

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

int lmd_policy_load(struct lmd_policy_conf *c, const char *path, int *line, const char **why)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return -errno;
	struct lmd_policy_conf t = *c;
	char buf[512];
	int rc = 0;
	*line = 0;
	while (fgets(buf, sizeof(buf), f)) {
		++*line;
		if (!strchr(buf, '\n') && !feof(f)) {
			*why = "line too long";
			rc = -EINVAL;
			break;
		}
		char *s = trim(buf);
		if (!*s || *s == '#')
			continue;
		char *eq = strchr(s, '=');
		if (!eq) {
			*why = "not a key = value line";
			rc = -EINVAL;
			break;
		}
		*eq = '\0';
		if ((rc = lmd_policy_set(&t, trim(s), trim(eq + 1), why)) < 0)
			break;
	}
	if (!rc && ferror(f))
		rc = -EIO;
	fclose(f);
	if (!rc)
		*c = t;
	return rc;
}

const char *lmd_why_name(int why)
{
	static const char *const names[] = { "none", "lower", "cap", "release", "proactive",
					     "backoff", "floor" };
	return why >= 0 && why < (int)(sizeof(names) / sizeof(names[0])) ? names[why] : "?";
}

const char *lmd_state_name(int state)
{
	static const char *const names[] = { "ok", "watch", "pressure", "exhausted" };
	return state >= 0 && state < (int)(sizeof(names) / sizeof(names[0])) ? names[state] : "?";
}

uint64_t lmd_policy_ahead(const struct lmd_policy_conf *c, uint64_t available, double fall)
{
	double ahead = fall > 0 ? fall * c->lookahead_s : 0;
	return ahead >= (double)available ? 0 : available - (uint64_t)ahead;
}

void lmd_policy_marks(const struct lmd_policy_conf *c, uint64_t limit, uint64_t *low,
		      uint64_t *high)
{
	uint64_t l = (uint64_t)((double)limit * c->low_pct / 100);
	if (l < c->low_min)
		l = c->low_min;
	/* A small cgroup keeps three quarters of itself usable, whatever low_min says. */
	if (l > limit / 4)
		l = limit / 4;
	uint64_t h = (uint64_t)((double)limit * c->high_pct / 100);
	if (h < 2 * l)
		h = 2 * l;
	if (h > limit / 2)
		h = limit / 2 > l ? limit / 2 : l;
	*low = l;
	*high = h;
}

static uint64_t floor_of(const struct lmd_policy_conf *c, const struct lmd_member *m)
{
	uint64_t f = m->floor ? m->floor : c->floor;
	return f < MIN_BUDGET ? MIN_BUDGET : f;
}

static int by_size_desc(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? 1 : x > y ? -1 : 0;
}

/*
 * The level L above which every runtime gives all it has over its floor,
 * so that the gifts add up to need: sum(max(0, rec_i - L)) = need.  The
 * largest give first; with need at least the total, L is 0.
 */
static uint64_t water_level(const struct lmd_member *m, size_t n, const uint64_t *fl,
			    uint64_t need)
{
	uint64_t *rec = malloc(n * sizeof(*rec));
	if (!rec)
		return 0;	/* without memory to sort: everyone to the floor */
	for (size_t i = 0; i < n; i++)
		rec[i] = m[i].resident > fl[i] ? m[i].resident - fl[i] : 0;
	qsort(rec, n, sizeof(*rec), by_size_desc);
	uint64_t sum = 0, level = 0;
	for (size_t k = 1; k <= n; k++) {
		sum += rec[k - 1];
		/* With the top k giving down to L: sum - k * L = need. */
		if (sum < need)
			continue;
		uint64_t l = (sum - need) / k;
		if (k == n || l >= rec[k]) {
			level = l;
			break;
		}
	}
	free(rec);
	return level;
}

int lmd_policy_decide(const struct lmd_policy_conf *c, uint64_t limit, uint64_t available,
		      uint64_t ahead, double psi, double dt, double calm, struct lmd_member *m,
		      size_t n)
{
	uint64_t low, high;
	lmd_policy_marks(c, limit, &low, &high);
	if (ahead > available)
		ahead = available;
	/*
	 * Stalls count only while memory is short too: with plenty available
	 * they come from elsewhere (a cgroup's own limit, I/O), and lowering
	 * budgets would not help.
	 */
	bool psi_hot = psi >= 0 && c->psi_some > 0 && psi >= c->psi_some && ahead < high;
	int state = ahead < low || psi_hot ? LMD_STATE_PRESSURE :
		    ahead < high	? LMD_STATE_WATCH :
					  LMD_STATE_OK;
	if (!n)
		return state;
	uint64_t fl_small[64], *fl = n <= 64 ? fl_small : malloc(n * sizeof(*fl));
	if (!fl)
		return state;
	for (size_t i = 0; i < n; i++) {
		fl[i] = floor_of(c, &m[i]);
		m[i].want = m[i].budget;
		m[i].why = LMD_WHY_NONE;
	}
	if (state == LMD_STATE_PRESSURE) {
		/*
		 * Back to the middle of the marks, not just over the low one: no
		 * pumping at the mark.  Measured from what is available now: a
		 * scope that is only falling fast has nothing to give back yet,
		 * and its runtimes are held where they are.
		 */
		uint64_t mid = low + (high - low) / 2;
		uint64_t need = mid > available ? mid - available : 0;
		if (psi_hot && need < limit / 50)
			need = limit / 50;
		uint64_t total = 0;
		for (size_t i = 0; i < n; i++)
			total += m[i].resident > fl[i] ? m[i].resident - fl[i] : 0;
		if (need && total <= need)
			state = LMD_STATE_EXHAUSTED;
		uint64_t level = !need ? UINT64_MAX : total <= need ? 0 : water_level(m, n, fl, need);
		for (size_t i = 0; i < n; i++) {
			uint64_t rec = m[i].resident > fl[i] ? m[i].resident - fl[i] : 0;
			/* Those above the level come down to it; the rest may not grow. */
			if (rec > level) {
				m[i].want = fl[i] + level;
				m[i].why = level ? LMD_WHY_LOWER : LMD_WHY_FLOOR;
			} else {
				m[i].want = m[i].resident > fl[i] ? m[i].resident : fl[i];
				m[i].why = m[i].resident > fl[i] ? LMD_WHY_CAP : LMD_WHY_FLOOR;
			}
		}
	} else if (state == LMD_STATE_WATCH || calm < c->hold_s) {
		uint64_t share = ahead > low ? (ahead - low) / n : 0;
		for (size_t i = 0; i < n; i++) {
			uint64_t w = m[i].resident + share;
			m[i].want = w > fl[i] ? w : fl[i];
			m[i].why = LMD_WHY_CAP;
		}
	} else {
		for (size_t i = 0; i < n; i++) {
			m[i].want = m[i].own;
			m[i].why = m[i].budget != m[i].own ? LMD_WHY_RELEASE : LMD_WHY_NONE;
		}
	}
	if (c->proactive && state <= LMD_STATE_WATCH) {
		for (size_t i = 0; i < n; i++) {
			uint64_t cur = m[i].budget && m[i].budget < m[i].resident ? m[i].budget :
										    m[i].resident;
			uint64_t w;
			int why;
			if (m[i].stall < c->target) {
				w = cur - (uint64_t)((double)cur * c->step / 100 * dt);
				why = LMD_WHY_PROACTIVE;
			} else if (m[i].stall > 2 * c->target) {
				/* Back off four times faster than it offloads: a slowdown costs more than memory. */
				w = cur + (uint64_t)((double)cur * 4 * c->step / 100 * dt) + MIN_BUDGET;
				why = LMD_WHY_BACKOFF;
			} else {
				w = m[i].budget ? m[i].budget : cur;
				why = LMD_WHY_NONE;
			}
			if (w < fl[i])
				w = fl[i];
			if (!m[i].want || w < m[i].want) {
				m[i].want = w;
				m[i].why = w == fl[i] && why == LMD_WHY_PROACTIVE ? LMD_WHY_FLOOR : why;
			}
		}
	}
	for (size_t i = 0; i < n; i++) {
		/* A budget the application or an operator set is never raised by the policy. */
		if (m[i].own && (!m[i].want || m[i].want > m[i].own))
			m[i].want = m[i].own;
		if (m[i].want && m[i].want < MIN_BUDGET)
			m[i].want = MIN_BUDGET;
		if (m[i].want == m[i].budget && m[i].why != LMD_WHY_FLOOR)
			m[i].why = LMD_WHY_NONE;
	}
	if (fl != fl_small)
		free(fl);
	return state;
}
