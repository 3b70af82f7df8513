/* SPDX-License-Identifier: MIT */
/* lazymemd's pressure policy applied: runtimes' scopes, budgets sent and answered, the pressure request. */
#include "config.h"
#include "lazymemd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/*
 * Every interval the policy reads the scopes its runtimes live in (the
 * machine, or the memory cgroup with a limit around them), asks policy.c
 * what each runtime's budget should be, and sends the budgets that
 * changed enough to matter.  A runtime has at most one request in flight:
 * a lowering is answered once its pages are out, and until then the
 * policy does not pile more on it.
 */

static const char *scope_name(const struct lmd_scope *s)
{
	return s->kind == LMD_SCOPE_SYSTEM ? "the machine" : s->path;
}

static struct scope *scope_of(const struct conn *rt)
{
	return rt->scope >= 0 && rt->scope < D.nscopes ? &D.scopes[rt->scope] : NULL;
}

static void record(const struct conn *rt, uint64_t from, uint64_t to)
{
	const struct scope *sc = scope_of(rt);
	struct action *a = &D.actions[D.nactions++ % MAX_ACTIONS];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	a->wall_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	a->pid = rt->pid;
	a->uid = rt->uid;
	snprintf(a->name, sizeof(a->name), "%s", rt->name);
	a->from = from;
	a->to = to;
	a->why = rt->why;
	a->state = sc ? sc->state : 0;
	a->available = sc ? sc->s.available : 0;
	a->low = sc ? sc->low : 0;
	const char *p = sc ? scope_name(&sc->s) : "?";
	size_t l = strlen(p);
	snprintf(a->scope, sizeof(a->scope), "%s", l >= sizeof(a->scope) ? p + l - sizeof(a->scope) + 1 : p);
}

/* A runtime's answer to the policy's budget. */
void lmd_policy_answer(struct conn *rt, const struct waiter *w, bool ok, const char *line,
		       size_t len)
{
	uint64_t from = rt->applied;
	/* ENOSPC: the budget holds, eviction just could not reach it (the swap file is full). */
	if (!ok && !(len >= 12 && !memcmp(line, "error ENOSPC", 12))) {
		D.policy_errors++;
		rt->refused = true;
		lmd_log(1, "runtime %d (%s) refused the budget %llu: %.*s; the policy leaves it alone",
			(int)rt->pid, rt->name, (unsigned long long)w->bytes, (int)len, line);
		return;
	}
	rt->applied = w->bytes;
	struct scope *sc = scope_of(rt);
	if (w->bytes && (!from || w->bytes < from)) {
		D.lowered++;
		if (sc && sc->onset_ns && !sc->reacted) {
			sc->reacted = true;
			D.last_reaction_ms = (double)(lmd_now_ns() - sc->onset_ns) / 1e6;
			lmd_log(1, "pressure on %s: a budget lowered %.0f ms after it began",
				scope_name(&sc->s), D.last_reaction_ms);
		}
	} else {
		D.raised++;
	}
	record(rt, from, w->bytes);
	lmd_log(2, "runtime %d (%s): budget %llu -> %llu (%s)%s", (int)rt->pid, rt->name,
		(unsigned long long)from, (unsigned long long)w->bytes, lmd_why_name(rt->why),
		ok ? "" : ", over it for now");
}

/* Worth a message: lowerings to the megabyte, the rest when they move an eighth. */
static bool worth_sending(const struct conn *rt, uint64_t want)
{
	uint64_t have = rt->applied;
	if (want == have)
		return false;
	if (!want || !have)
		return true;
	uint64_t diff = want > have ? want - have : have - want;
	/* Lowerings (and the proactive mode's small steps) to the megabyte. */
	if (want < have && (rt->why == LMD_WHY_LOWER || rt->why == LMD_WHY_FLOOR ||
			    rt->why == LMD_WHY_PROACTIVE))
		return diff >= (1u << 20);
	return diff >= (1u << 20) && diff >= have / 8;
}

static void policy_send(struct conn *rt, uint64_t bytes)
{
	/* Whole pages, as the runtime keeps it: what it reports back is then what was sent. */
	uint64_t ps = rt->page_size ? rt->page_size : 4096;
	bytes = bytes && bytes < ps ? ps : bytes & ~(ps - 1);
	char line[64];
	int k = snprintf(line, sizeof(line), "budget %llu\n", (unsigned long long)bytes);
	if (rt->nwait == MAX_WAITERS || !lmd_queue(rt, line, (size_t)k))
		return;
	rt->waiters[rt->nwait++] = (struct waiter){ POLICY_SLOT, 0, 0, bytes };
	lmd_watch(rt);
}

/* Puts each runtime in its scope: looked up again every SCOPE_NS, as processes move between cgroups. */
static void assign_scopes(uint64_t now)
{
	/* Scopes nobody lived in for ten intervals of lookups go. */
	int keep = 0;
	for (int i = 0; i < D.nscopes; i++)
		if (now - D.scopes[i].seen_ns < 5 * SCOPE_NS)
			D.scopes[keep++] = D.scopes[i];
	D.nscopes = keep;
	for (int i = 0; i < D.nscopes; i++)
		D.scopes[i].members = 0;
	for (uint32_t i = 0; i < D.nruntimes; i++) {
		struct conn *c = D.rts[i];
		c->scope = -1;
		if (!c->scope_ns || now - c->scope_ns > SCOPE_NS) {
			struct lmd_scope s;
			if (lmd_scope_find(c->pid, D.v1root, D.v2root, D.mem_total, &s) < 0)
				continue;	/* gone: its connection closes soon */
			c->scope_kind = s.kind;
			memcpy(c->scope_path, s.path, sizeof(c->scope_path));
			c->scope_ns = now;
		}
		int k = 0;
		while (k < D.nscopes &&
		       (D.scopes[k].s.kind != c->scope_kind || strcmp(D.scopes[k].s.path, c->scope_path)))
			k++;
		if (k == MAX_SCOPES)
			continue;
		if (k == D.nscopes) {
			memset(&D.scopes[k], 0, sizeof(D.scopes[k]));
			D.scopes[k].s.kind = c->scope_kind;
			memcpy(D.scopes[k].s.path, c->scope_path, sizeof(c->scope_path));
			D.nscopes++;
		}
		c->scope = k;
		D.scopes[k].members++;
		D.scopes[k].seen_ns = now;
	}
}

/* The policy's view of one runtime, from its stats page; notices budgets set behind its back. */
static void member_of(struct conn *c, uint64_t now, struct lmd_member *m)
{
	struct lm_stats st;
	lmd_stats_load(c->page, c->pagelen, &st);
	uint64_t ps = st.page_size ? st.page_size : 4096;
	/*
	 * Nothing in flight and a budget that is not the last one known: the
	 * application set it.  Pages, not bytes, are compared: the runtime
	 * keeps its budget in whole pages.
	 */
	c->page_size = ps;
	if (!c->nwait && st.budget_bytes / ps != c->applied / ps)
		c->own = c->applied = st.budget_bytes;
	uint64_t x = st.fill_ns_total + st.throttle_ns;
	c->stall = c->stall_ns && now > c->stall_ns && x >= c->stall_last ?
			   100.0 * (double)(x - c->stall_last) / (double)(now - c->stall_ns) :
			   0;
	c->stall_last = x;
	c->stall_ns = now;
	*m = (struct lmd_member){
		.resident = st.resident_pages * ps,
		.budget = c->applied,
		.own = c->own,
		.floor = st.budget_min_bytes,
		.stall = c->stall,
	};
}

static void policy_scope(struct scope *sc, uint64_t now, double dt)
{
	int n = sc->members, k = 0;
	struct lmd_member *m = calloc((size_t)n, sizeof(*m));
	struct conn **who = calloc((size_t)n, sizeof(*who));
	if (!m || !who)
		goto out;
	int idx = (int)(sc - D.scopes);
	for (uint32_t i = 0; i < D.nruntimes && k < n; i++)
		if (D.rts[i]->scope == idx) {
			who[k] = D.rts[i];
			member_of(who[k], now, &m[k]);
			k++;
		}
	lmd_policy_marks(&D.conf, sc->s.limit, &sc->low, &sc->high);
	/* cgroup v1 has no pressure of its own: the machine's stalls say nothing about it. */
	double psi = sc->s.kind != LMD_SCOPE_V1 && sc->s.psi.valid ? sc->s.psi.some10 : -1;
	int prev = sc->state;
	double calm = prev >= LMD_STATE_PRESSURE ? 0 :
		      sc->calm_ns ? (double)(now - sc->calm_ns) / 1e9 : 1e9;
	/* The fall, halved each look: one jump counts, a steady climb counts fully. */
	if (sc->last_available && dt > 0) {
		double f = ((double)sc->last_available - (double)sc->s.available) / dt;
		sc->fall = sc->fall / 2 + (f > 0 ? f : 0) / 2;
	}
	sc->last_available = sc->s.available;
	uint64_t ahead = lmd_policy_ahead(&D.conf, sc->s.available, sc->fall);
	sc->state = lmd_policy_decide(&D.conf, sc->s.limit, sc->s.available, ahead, psi, dt, calm, m,
				      (size_t)k);
	if (sc->state >= LMD_STATE_PRESSURE && !sc->onset_ns) {
		sc->onset_ns = now;
		sc->reacted = false;
	} else if (sc->state < LMD_STATE_PRESSURE && sc->onset_ns) {
		sc->onset_ns = 0;
		sc->calm_ns = now;
	}
	if (sc->state != prev)
		lmd_log(sc->state >= LMD_STATE_PRESSURE ? 1 : 2,
			"%s: %s (limit %llu, available %llu, low mark %llu, high %llu)",
			scope_name(&sc->s), lmd_state_name(sc->state),
			(unsigned long long)sc->s.limit, (unsigned long long)sc->s.available,
			(unsigned long long)sc->low, (unsigned long long)sc->high);
	for (int i = 0; i < k; i++) {
		struct conn *c = who[i];
		c->want = m[i].want;
		c->why = m[i].why;
		if (D.conf.enabled && !c->refused && !c->nwait && worth_sending(c, c->want))
			policy_send(c, c->want);
	}
out:
	free(m);
	free(who);
}

void lmd_policy_tick(void)
{
	uint64_t exp;
	if (read(D.ptimerfd, &exp, sizeof(exp)) < 0) {
		/* Nothing to do: the next expiry comes anyway. */
	}
	uint64_t now = lmd_now_ns();
	double dt = D.policy_ns ? (double)(now - D.policy_ns) / 1e9 : (double)D.conf.interval_ms / 1e3;
	D.policy_ns = now;
	assign_scopes(now);
	for (int i = 0; i < D.nscopes; i++) {
		struct scope *sc = &D.scopes[i];
		if (!sc->members)
			continue;
		if (lmd_scope_read(&sc->s) < 0) {
			/* The cgroup went: its runtimes are looked up again next time. */
			for (uint32_t j = 0; j < D.nruntimes; j++)
				if (D.rts[j]->scope == i)
					D.rts[j]->scope_ns = 0;
			continue;
		}
		policy_scope(sc, now, dt);
	}
}

/* The reply to "pressure": what the policy sees, what it did and why. */
static int format_pressure(const struct conn *client, char *buf, size_t len)
{
	struct lmd_out o = { buf, len, 0 };
#define OUT(...) lmd_put(&o, __VA_ARGS__)
	char a[5][24];
	lmd_size_str(D.conf.low_min, a[0], sizeof(a[0]));
	lmd_size_str(D.conf.floor, a[1], sizeof(a[1]));
	OUT("policy %s: every %llu ms; low %.3g%% (at least %s), high %.3g%%, psi %.3g%%, hold %.3gs, "
	    "floor %s, proactive %s (target %.3g%%, step %.3g%%/s)\n",
	    D.conf.enabled ? "on" : "off (watching only)", (unsigned long long)D.conf.interval_ms,
	    D.conf.low_pct, a[0], D.conf.high_pct, D.conf.psi_some, D.conf.hold_s, a[1],
	    D.conf.proactive ? "on" : "off", D.conf.target, D.conf.step);
	OUT("budgets lowered %llu, raised %llu, refused %llu; last reaction %.0f ms\n",
	    (unsigned long long)D.lowered, (unsigned long long)D.raised,
	    (unsigned long long)D.policy_errors, D.last_reaction_ms);
	for (int i = 0; i < D.nscopes; i++) {
		const struct scope *sc = &D.scopes[i];
		if (!sc->members)
			continue;
		lmd_size_str(sc->s.limit, a[0], sizeof(a[0]));
		lmd_size_str(sc->s.usage, a[1], sizeof(a[1]));
		lmd_size_str(sc->s.available, a[2], sizeof(a[2]));
		lmd_size_str(sc->low, a[3], sizeof(a[3]));
		lmd_size_str(sc->high, a[4], sizeof(a[4]));
		static const char *const kinds[] = { "", " (cgroup v1)", " (cgroup v2)" };
		OUT("\nscope %s%s: %s\n", scope_name(&sc->s), kinds[sc->s.kind % 3],
		    lmd_state_name(sc->state));
		char psi[24] = "-";
		if (sc->s.psi.valid)
			snprintf(psi, sizeof(psi), "%.2f%%", sc->s.psi.some10);
		OUT("  limit %s  usage %s  available %s  low %s  high %s  psi %s  oom kills %llu\n",
		    a[0], a[1], a[2], a[3], a[4], psi, (unsigned long long)sc->s.oom_kills);
		lmd_size_str((uint64_t)sc->fall, a[0], sizeof(a[0]));
		OUT("  falling %s/s, %.3gs ahead: taken as available %s\n", a[0], D.conf.lookahead_s,
		    (lmd_size_str(lmd_policy_ahead(&D.conf, sc->s.available, sc->fall), a[1],
				  sizeof(a[1])),
		     a[1]));
		OUT("  %8s %6s %-16s %9s %9s %9s %9s %9s %7s %s\n", "PID", "UID", "NAME", "RESIDENT",
		    "BUDGET", "OWN", "FLOOR", "WANT", "STALL%", "WHY");
		for (uint32_t j = 0; j < D.nruntimes; j++) {
			const struct conn *c = D.rts[j];
			if (c->scope != i || !lmd_may_see(client, c))
				continue;
			struct lm_stats st;
			lmd_stats_load(c->page, c->pagelen, &st);
			uint64_t ps = st.page_size ? st.page_size : 4096;
			uint64_t fl = st.budget_min_bytes ? st.budget_min_bytes : D.conf.floor;
			char r[24], b[24], w[24], f[24], ow[24];
			lmd_size_str(st.resident_pages * ps, r, sizeof(r));
			if (st.budget_bytes)
				lmd_size_str(st.budget_bytes, b, sizeof(b));
			else
				snprintf(b, sizeof(b), "-");
			if (c->own)
				lmd_size_str(c->own, ow, sizeof(ow));
			else
				snprintf(ow, sizeof(ow), "-");
			lmd_size_str(fl, f, sizeof(f));
			if (c->want)
				lmd_size_str(c->want, w, sizeof(w));
			else
				snprintf(w, sizeof(w), "-");
			OUT("  %8d %6u %-16s %9s %9s %9s %9s %9s %7.2f %s%s\n", (int)c->pid,
			    (unsigned)c->uid, c->name, r, b, ow, f, w, c->stall, lmd_why_name(c->why),
			    c->refused ? " (refused: left alone)" : "");
		}
	}
	uint64_t first = D.nactions > MAX_ACTIONS ? D.nactions - MAX_ACTIONS : 0;
	OUT("\nrecent actions (%llu in all):\n", (unsigned long long)D.nactions);
	for (uint64_t i = first; i < D.nactions; i++) {
		const struct action *x = &D.actions[i % MAX_ACTIONS];
		if (client->uid != 0 && client->uid != x->uid)
			continue;
		time_t t = (time_t)(x->wall_ms / 1000);
		struct tm tm;
		char when[32], f[24], to[24], av[24], lo[24];
		strftime(when, sizeof(when), "%F %T", localtime_r(&t, &tm));
		if (x->from)
			lmd_size_str(x->from, f, sizeof(f));
		else
			snprintf(f, sizeof(f), "none");
		if (x->to)
			lmd_size_str(x->to, to, sizeof(to));
		else
			snprintf(to, sizeof(to), "none");
		lmd_size_str(x->available, av, sizeof(av));
		lmd_size_str(x->low, lo, sizeof(lo));
		OUT("  %s.%03u pid %d (%s) budget %s -> %s: %s; %s %s, available %s, low mark %s\n",
		    when, (unsigned)(x->wall_ms % 1000), (int)x->pid, x->name, f, to,
		    lmd_why_name(x->why), x->scope, lmd_state_name(x->state), av, lo);
	}
#undef OUT
	return (int)o.need;
}

void lmd_pressure(struct conn *c)
{
	int need = format_pressure(c, NULL, 0);
	char *buf = malloc((size_t)need + 1);
	if (!buf) {
		lmd_reply_error(c, "ENOMEM", "out of memory");
		return;
	}
	format_pressure(c, buf, (size_t)need + 1);
	lmd_reply_body(c, buf, (size_t)need);
	free(buf);
}
