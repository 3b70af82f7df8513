# SPDX-License-Identifier: MIT
# Included from Makefile.am: the Check test programs, one per area.
LM_CHECKS = \
	tests/check_runtime \
	tests/check_region \
	tests/check_pagetable \
	tests/check_cluster \
	tests/check_pte \
	tests/check_fault \
	tests/check_file \
	tests/check_events \
	tests/check_signal \
	tests/check_swap \
	tests/check_budget \
	tests/check_image \
	tests/check_snapshot \
	tests/check_fork \
	tests/check_hugetlb \
	tests/check_proto \
	tests/check_daemon

check_PROGRAMS += $(LM_CHECKS)
TESTS += $(LM_CHECKS)
EXTRA_DIST += tests/testutil.h tests/procutil.h tests/snaputil.h tests/tests.mk

tests_check_runtime_SOURCES = tests/check_runtime.c tests/testutil.h
tests_check_runtime_CFLAGS = $(TEST_CFLAGS)
tests_check_runtime_LDADD = $(TEST_LIBS)

tests_check_region_SOURCES = tests/check_region.c tests/testutil.h
tests_check_region_CFLAGS = $(TEST_CFLAGS)
tests_check_region_LDADD = $(TEST_LIBS)

# The page table is internal: its unit test compiles it in directly.
tests_check_pagetable_SOURCES = tests/check_pagetable.c lib/pagetable.c
tests_check_pagetable_CFLAGS = $(TEST_CFLAGS)
tests_check_pagetable_LDADD = $(CHECK_LIBS)

# Redis Cluster routing is internal and pure: its unit test compiles it in.
tests_check_cluster_SOURCES = tests/check_cluster.c lib/cluster.c
tests_check_cluster_CFLAGS = $(TEST_CFLAGS)
tests_check_cluster_LDADD = $(CHECK_LIBS)

# The page-state machine is internal: its unit test compiles the library in.
tests_check_pte_SOURCES = tests/check_pte.c tests/testutil.h $(lib_liblazymem_la_SOURCES)
tests_check_pte_CFLAGS = $(TEST_CFLAGS) $(LIB_DEP_CFLAGS)
tests_check_pte_LDADD = $(CHECK_LIBS) $(LIB_DEP_LIBS)

tests_check_fault_SOURCES = tests/check_fault.c tests/testutil.h
tests_check_fault_CFLAGS = $(TEST_CFLAGS)
tests_check_fault_LDADD = $(TEST_LIBS)

tests_check_file_SOURCES = tests/check_file.c tests/testutil.h
tests_check_file_CFLAGS = $(TEST_CFLAGS)
tests_check_file_LDADD = $(TEST_LIBS)

tests_check_events_SOURCES = tests/check_events.c tests/testutil.h
tests_check_events_CFLAGS = $(TEST_CFLAGS)
tests_check_events_LDADD = $(TEST_LIBS)

tests_check_signal_SOURCES = tests/check_signal.c tests/testutil.h
tests_check_signal_CFLAGS = $(TEST_CFLAGS)
tests_check_signal_LDADD = $(TEST_LIBS)

# The swap file is internal: its unit test compiles the library in.
tests_check_swap_SOURCES = tests/check_swap.c $(lib_liblazymem_la_SOURCES)
tests_check_swap_CFLAGS = $(TEST_CFLAGS) $(LIB_DEP_CFLAGS)
tests_check_swap_LDADD = $(CHECK_LIBS) $(LIB_DEP_LIBS)

# Eviction tests inject swap write errors and corrupt the swap file: the library is compiled in.
tests_check_budget_SOURCES = tests/check_budget.c tests/testutil.h $(lib_liblazymem_la_SOURCES)
tests_check_budget_CFLAGS = $(TEST_CFLAGS) $(LIB_DEP_CFLAGS)
tests_check_budget_LDADD = $(CHECK_LIBS) $(LIB_DEP_LIBS)

# The image writer is internal until the snapshot API uses it: the library is compiled in.
tests_check_image_SOURCES = tests/check_image.c tests/testutil.h $(lib_liblazymem_la_SOURCES)
tests_check_image_CFLAGS = $(TEST_CFLAGS) $(LIB_DEP_CFLAGS)
tests_check_image_LDADD = $(CHECK_LIBS) $(LIB_DEP_LIBS)

tests_check_hugetlb_SOURCES = tests/check_hugetlb.c tests/testutil.h tests/snaputil.h
tests_check_hugetlb_CFLAGS = $(TEST_CFLAGS)
tests_check_hugetlb_LDADD = $(TEST_LIBS)

tests_check_snapshot_SOURCES = tests/check_snapshot.c tests/testutil.h tests/snaputil.h
tests_check_snapshot_CFLAGS = $(TEST_CFLAGS)
tests_check_snapshot_LDADD = $(TEST_LIBS)

# fork() amid saves, rollbacks and reads, budgets after fork, destroy during prefetch (issue 13).
tests_check_fork_SOURCES = tests/check_fork.c tests/testutil.h
tests_check_fork_CFLAGS = $(TEST_CFLAGS)
tests_check_fork_LDADD = $(TEST_LIBS)

# lazymemd's parser and formatters, without a socket.
tests_check_proto_SOURCES = tests/check_proto.c tests/testutil.h daemon/proto.c daemon/proto.h
tests_check_proto_CFLAGS = $(TEST_CFLAGS)
tests_check_proto_LDADD = $(TEST_LIBS)

# The daemon and the command, run for real against runtimes.
tests_check_daemon_SOURCES = tests/check_daemon.c tests/testutil.h
tests_check_daemon_CFLAGS = $(TEST_CFLAGS)
tests_check_daemon_LDADD = $(TEST_LIBS)

# lazymemd's pressure policy: its decisions (policy.c and pressure.c
# compiled in), and the OOM test: three processes in a memory cgroup too
# small for them, without the policy and with it.
check_PROGRAMS += tests/check_pressure tests/pressure-worker
TESTS += tests/check_pressure
tests_check_pressure_SOURCES = tests/check_pressure.c tests/testutil.h daemon/policy.c \
	daemon/policy.h daemon/pressure.c daemon/pressure.h daemon/proto.c daemon/proto.h
tests_check_pressure_CFLAGS = $(TEST_CFLAGS)
tests_check_pressure_LDADD = $(TEST_LIBS)
# Alone at the end: its python test holds three programs to a cgroup limit
# through lazymemd's 100 ms polling policy, which a machine starved by
# check_run's real programs beside it outran (one python OOM-killed in 3
# of 5 clean-clone CI runs; lazymemd(8) says a polling policy can be).
# (A prerequisite only, named through a variable: automake would take
# the literal target for an override of its own rule.)
lm_pressure_log = tests/check_pressure.log
$(lm_pressure_log): tests/check_run.log
tests_pressure_worker_SOURCES = tests/pressure-worker.c
tests_pressure_worker_LDADD = lib/liblazymem.la

# The parser under libFuzzer (clang), for a bounded time.
TESTS += tests/fuzz-proto.sh
EXTRA_DIST += tests/fuzz-proto.sh tests/fuzz_proto.c

# lazymemd under load: many clients querying while runtimes report
# (tests/daemon-load.sh; scripts/stress.sh runs it at 1000 clients).
check_PROGRAMS += tests/lmd-load
tests_lmd_load_SOURCES = tests/lmd-load.c
tests_lmd_load_LDADD = lib/liblazymem.la
TESTS += tests/daemon-load.sh

# The layers of lib/ hold: no call runs up, no files call in a circle.
TESTS += tests/check-layers.sh
EXTRA_DIST += tests/check-layers.sh
EXTRA_DIST += tests/daemon-load.sh

# lazymem run and the preload library, with real programs (python3,
# sqlite3, redis-server, sort) and two helpers of our own: a program that
# uses memory every way, and a launcher whose seccomp filter refuses
# userfaultfd.
check_PROGRAMS += tests/check_run tests/run-victim tests/run-nouffd
TESTS += tests/check_run
tests_check_run_SOURCES = tests/check_run.c tests/testutil.h tests/run-jobs.h
tests_check_run_CFLAGS = $(TEST_CFLAGS)
tests_check_run_LDADD = $(TEST_LIBS)
# Not sanitized: they run under the preload library, which cannot follow a sanitizer runtime.
tests_run_victim_SOURCES = tests/run-victim.c tests/lazyat.h
tests_run_victim_CFLAGS = -std=gnu11 $(WARN_CFLAGS) -pthread
tests_run_victim_LDFLAGS = -pthread
tests_run_victim_LDADD = -ldl
# Preloaded beside the preload library: a thread that predates the runtime.
check_LTLIBRARIES = tests/librun-early.la
tests_librun_early_la_SOURCES = tests/run-early.c tests/lazyat.h
tests_librun_early_la_CFLAGS = -std=gnu11 $(WARN_CFLAGS) -pthread
tests_librun_early_la_LDFLAGS = -pthread -module -avoid-version -shared -rpath /nowhere
tests_run_nouffd_SOURCES = tests/run-nouffd.c
tests_run_nouffd_CFLAGS = -std=gnu11 $(WARN_CFLAGS)
tests_run_nouffd_LDFLAGS =

# lib/cluster.c's routing against a real Redis Cluster of six servers in
# network namespaces (scripts/redis-cluster.sh), through cluster-keys.
check_PROGRAMS += tests/cluster-keys
tests_cluster_keys_SOURCES = tests/cluster-keys.c lib/cluster.c
tests_cluster_keys_CFLAGS = $(AM_CFLAGS)
TESTS += tests/cluster-routing.sh
EXTRA_DIST += tests/cluster-routing.sh tests/cluster-env.sh

# The remote page store against the same kind of cluster: check_remote
# runs in the hub namespace under tests/remote.sh, which starts and stops
# the cluster (the program alone skips: it has no cluster to talk to).
check_PROGRAMS += tests/check_remote
tests_check_remote_SOURCES = tests/check_remote.c tests/testutil.h $(lib_liblazymem_la_SOURCES)
tests_check_remote_CFLAGS = $(TEST_CFLAGS) $(LIB_DEP_CFLAGS)
tests_check_remote_LDADD = $(CHECK_LIBS) $(LIB_DEP_LIBS)
TESTS += tests/remote.sh
EXTRA_DIST += tests/remote.sh
# Both make the same namespaces (lmrc-*): never at once.
tests/remote.log: tests/cluster-routing.log
