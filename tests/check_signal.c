/* SPDX-License-Identifier: MIT */
/* Tests of signal mode: SIGBUS ownership, chaining to the application, fork children. */
#include "testutil.h"

#include <pthread.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PS 4096u

/* The application's SIGBUS handler sees SIGBUS for memory that is not lazymem's. */
START_TEST(foreign_sigbus_is_chained)
{
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(LM_MODE_SIGNAL);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_zero(rt, 4 * PS, 0, &r), 0);
	/* A plain file mapping past the end of its file: a kernel SIGBUS. */
	int fd = lmt_pattern_file(PS);
	char *m = mmap(NULL, 4 * PS, PROT_READ, MAP_SHARED, fd, 0);
	ck_assert_ptr_ne(m, MAP_FAILED);
	int before = lmt_sigbus_count;
	ck_assert_int_eq(lmt_touch(m + 2 * PS, 0), 1);
	ck_assert_int_eq(lmt_sigbus_count, before + 1);
	/* lazymem's own faults never reach the application. */
	volatile char *p = lm_region_addr(r);
	p[0] = 1;
	ck_assert_int_eq(lmt_touch(p + 3 * PS, 0), 0);
	ck_assert_int_eq(lmt_sigbus_count, before + 1);
	munmap(m, 4 * PS);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

/* A page that cannot be filled raises SIGBUS in the application's handler, every time. */
START_TEST(poisoned_page_reaches_application)
{
	lmt_install_sigbus();
	struct lm_runtime *rt = lmt_open(LM_MODE_SIGNAL);
	int fd = lmt_pattern_file(PS + 100);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_file(rt, fd, 0, 4 * PS, 0, &r), 0);
	char *p = lm_region_addr(r);
	ck_assert_int_eq(lmt_touch(p + 3 * PS, 0), 1);
	ck_assert_int_eq(lmt_touch(p + 3 * PS, 1), 1);
	ck_assert_int_eq(lmt_touch(p + 2 * PS, 1), 1);
	ck_assert_int_eq(lmt_touch(p + PS, 0), 0);
	ck_assert_uint_eq((unsigned char)p[PS + 99], lmt_pattern(PS + 99));
	ck_assert_int_eq(p[PS + 100], 0);
	ck_assert_uint_ge(lmt_stats(rt).sigbus_raised, 2);
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

/*
 * A child with SIGBUS at the given disposition, in signal mode, touches a
 * page beyond the end of its file: the process must die of SIGBUS, as
 * the kernel would kill it, never replay the access for ever.
 */
static void beyond_eof_kills(void (*disposition)(int))
{
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		signal(SIGBUS, disposition);
		struct lm_options o;
		lm_options_init(&o);
		o.flags = LM_OPT_NO_ENV;
		o.mode = LM_MODE_SIGNAL;
		struct lm_runtime *rt;
		if (lm_runtime_open(&o, &rt) < 0)
			_exit(2);
		int fd = lmt_pattern_file(100);
		struct lm_region *r;
		if (lm_region_create_file(rt, fd, 0, 2 * PS, 0, &r) < 0)
			_exit(3);
		volatile char *p = lm_region_addr(r);
		if (p[50] != (char)lmt_pattern(50))
			_exit(4);
		(void)p[PS];	/* beyond EOF */
		_exit(5);
	}
	int status;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGBUS, "status 0x%x", status);
}

/* With no application handler, the default action kills the process: no hang. */
START_TEST(default_disposition_kills)
{
	beyond_eof_kills(SIG_DFL);
}
END_TEST

/* An ignored SIGBUS does not make a fault replay forever. */
START_TEST(ignored_sigbus_still_kills)
{
	beyond_eof_kills(SIG_IGN);
}
END_TEST

static void app_handler(int sig)
{
	(void)sig;
}

/* Closing the last signal-mode runtime gives the application its handler back. */
START_TEST(handler_restored_on_close)
{
	struct sigaction sa, cur;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = app_handler;
	sigaction(SIGBUS, &sa, NULL);
	struct lm_runtime *a = lmt_open(LM_MODE_SIGNAL), *b = lmt_open(LM_MODE_SIGNAL);
	sigaction(SIGBUS, NULL, &cur);
	ck_assert(cur.sa_flags & SA_SIGINFO);
	lm_runtime_close(a);
	sigaction(SIGBUS, NULL, &cur);
	ck_assert(cur.sa_flags & SA_SIGINFO);	/* b still needs it */
	lm_runtime_close(b);
	sigaction(SIGBUS, NULL, &cur);
	ck_assert(!(cur.sa_flags & SA_SIGINFO));
	ck_assert_ptr_eq(cur.sa_handler, app_handler);
}
END_TEST

/*
 * fork() in signal mode: the child registers the regions again and fills
 * what it did not inherit from the source; the parent is unaffected.
 */
START_TEST(fork_child_fills_from_source)
{
	struct lm_runtime *rt = lmt_open(LM_MODE_SIGNAL);
	int fd = lmt_pattern_file(64 * PS);
	struct lm_region *r;
	ck_assert_int_eq(lm_region_create_file(rt, fd, 0, 64 * PS, 0, &r), 0);
	ck_assert_int_eq(lm_region_advise(r, 0, 64 * PS, LM_ADV_RANDOM), 0);
	unsigned char *p = lm_region_addr(r);
	for (int pg = 0; pg < 64; pg += 4)
		p[pg * PS] = 0xab;
	pid_t pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		for (size_t i = 0; i < 64 * PS; i++) {
			unsigned char want = (i % (4 * PS)) == 0 ? 0xab : lmt_pattern(i);
			if (p[i] != want)
				_exit(1);
		}
		memset(p, 0x11, 64 * PS);	/* private to the child */
		_exit(0);
	}
	int status;
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status 0x%x", status);
	for (size_t i = 0; i < 64 * PS; i++) {
		unsigned char want = (i % (4 * PS)) == 0 ? 0xab : lmt_pattern(i);
		ck_assert_msg(p[i] == want, "parent byte %zu", i);
	}
	close(fd);
	lm_runtime_close(rt);
}
END_TEST

/*
 * Regression: a fork() while another thread was inside the SIGBUS handler
 * (or held a runtime lock) left the child's copies of those counters and
 * locks held, and the child's lm_runtime_close spun or deadlocked.
 */
static struct lm_region *churn_r;
static volatile int churn_stop;

static void *churn(void *arg)
{
	(void)arg;
	char *z = lm_region_addr(churn_r);
	while (!churn_stop) {
		for (int i = 0; i < 64; i++)
			z[i * PS] = 1;
		lm_region_advise(churn_r, 0, 64 * PS, LM_ADV_DONTNEED);
	}
	return NULL;
}

START_TEST(fork_during_faults_child_can_close)
{
	struct lm_runtime *rt = lmt_open(_i ? LM_MODE_SIGNAL : LM_MODE_THREAD);
	ck_assert_int_eq(lm_region_create_zero(rt, 64 * PS, 0, &churn_r), 0);
	churn_stop = 0;
	pthread_t t;
	pthread_create(&t, NULL, churn, NULL);
	int stuck = 0;
	for (int i = 0; i < 100; i++) {
		pid_t pid = fork();
		ck_assert_int_ge(pid, 0);
		if (pid == 0) {
			alarm(5);
			volatile char *z = lm_region_addr(churn_r);
			(void)z[PS * 5];
			lm_runtime_close(rt);
			_exit(0);
		}
		int st;
		ck_assert_int_eq(waitpid(pid, &st, 0), pid);
		stuck += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	churn_stop = 1;
	pthread_join(t, NULL);
	ck_assert_msg(stuck == 0, "%d of 100 children did not close cleanly", stuck);
	lm_runtime_close(rt);
}
END_TEST

int main(void)
{
	lmt_require_uffd();
	Suite *s = suite_create("signal");
	TCase *tc = tcase_create("sigbus");
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, foreign_sigbus_is_chained);
	tcase_add_test(tc, poisoned_page_reaches_application);
	tcase_add_test(tc, default_disposition_kills);
	tcase_add_test(tc, ignored_sigbus_still_kills);
	tcase_add_test(tc, handler_restored_on_close);
	tcase_add_test(tc, fork_child_fills_from_source);
	tcase_add_loop_test(tc, fork_during_faults_child_can_close, 0, 2);
	suite_add_tcase(s, tc);
	return lmt_run(s);
}
