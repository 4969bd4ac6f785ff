/* orphans_sweep: what a finished rank leaves in the background is killed after the grace
 * period; a proxy with a running rank, the session's leader and other sessions are left
 * alone. This process stands in for PID 1 (a child subreaper) and forks the process tree
 * hydra makes: leader (mpiexec) -> proxy -> rank -> background child. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "guest/orphans.h"

static void pause_forever(void)
{
	for (;;)
		pause();
}

/* A session led by a "mpiexec" whose child is a "hydra_pmi_proxy" with one rank. The rank
 * starts a background process (into *ret_bg, through the pipe) and exits after rank_s
 * seconds, or never when rank_s < 0. Returns the leader's pid. */
static bool rank_setsid; /* as hydra's ranks do: each leads a session of its own */

static pid_t start_tree(int rank_s, pid_t *ret_bg, pid_t *ret_proxy)
{
	int p[2];
	pid_t leader, got[2];

	assert_int_equal(pipe(p), 0);
	leader = fork();
	assert_true(leader >= 0);
	if (leader == 0) {
		pid_t proxy;

		setsid();
		prctl(PR_SET_NAME, "mpiexec");
		proxy = fork();
		if (proxy == 0) {
			pid_t rank;

			prctl(PR_SET_NAME, "hydra_pmi_proxy");
			rank = fork();
			if (rank == 0) {
				pid_t bg;

				if (rank_setsid)
					setsid();
				bg = fork();

				if (bg == 0) {
					prctl(PR_SET_NAME, "background");
					pause_forever();
				}
				(void)!write(p[1], &bg, sizeof(bg));
				if (rank_s < 0)
					pause_forever();
				sleep((unsigned)rank_s);
				_exit(0);
			}
			/* Like hydra's proxy stuck on leaked pipes: it never reaps the rank. */
			pause_forever();
		}
		(void)!write(p[1], &proxy, sizeof(proxy));
		pause_forever();
	}
	/* Two pids arrive, in either order: the background child and the proxy. */
	assert_int_equal(read(p[0], &got[0], sizeof(got[0])), sizeof(got[0]));
	assert_int_equal(read(p[0], &got[1], sizeof(got[1])), sizeof(got[1]));
	close(p[0]);
	close(p[1]);
	{
		char path[64], buf[256];
		FILE *f;

		snprintf(path, sizeof(path), "/proc/%d/comm", (int)got[0]);
		f = fopen(path, "r");
		assert_non_null(f);
		assert_non_null(fgets(buf, sizeof(buf), f));
		fclose(f);
		if (strncmp(buf, "hydra_pmi_proxy", 15) == 0) {
			*ret_proxy = got[0];
			*ret_bg = got[1];
		} else {
			*ret_proxy = got[1];
			*ret_bg = got[0];
		}
	}
	return leader;
}

static bool alive(pid_t pid)
{
	char path[64], buf[512], state = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return false;
	if (fgets(buf, sizeof(buf), f)) {
		char *p = strrchr(buf, ')');

		if (p)
			state = p[2];
	}
	fclose(f);
	return state && state != 'Z';
}

/* Reaps whatever was re-parented to us. */
static void reap_all(void)
{
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
}

static void wait_reparented(pid_t pid)
{
	for (int i = 0; i < 500; i++) {
		char path[64], buf[512];
		FILE *f;
		int ppid = 0;

		snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
		f = fopen(path, "r");
		if (f && fgets(buf, sizeof(buf), f)) {
			char *p = strrchr(buf, ')');

			if (p)
				sscanf(p + 2, "%*c %d", &ppid);
		}
		if (f)
			fclose(f);
		if (ppid == getpid())
			return;
		usleep(10000);
	}
	fail_msg("pid %d was not re-parented to us", (int)pid);
}

static void test_background_killed_after_grace(void **state)
{
	struct orphans o = {0};
	pid_t bg, proxy, leader = start_tree(0, &bg, &proxy);

	wait_reparented(bg); /* the rank exited: its child is ours now */
	assert_int_equal(orphans_sweep(&o, getpid(), 1000), 0);
	assert_true(alive(bg));
	/* Within the grace period: still alive. */
	assert_int_equal(orphans_sweep(&o, getpid(), 1000 + ORPHANS_GRACE_MS - 1), 0);
	assert_true(alive(bg));
	assert_int_equal(orphans_sweep(&o, getpid(), 1000 + ORPHANS_GRACE_MS), 1);
	for (int i = 0; i < 200 && alive(bg); i++) {
		reap_all();
		usleep(10000);
	}
	assert_false(alive(bg));
	/* The session's leader and the proxy are not the sweep's to kill. */
	assert_true(alive(leader));
	assert_true(alive(proxy));
	kill(-leader, SIGKILL);
	waitpid(leader, NULL, 0);
	reap_all();
}

/* The same when the rank led a session of its own (hydra's do): the background process
 * is in the exited rank's session, not the proxy's. */
static void test_background_of_session_leader_rank(void **state)
{
	rank_setsid = true;
	test_background_killed_after_grace(state);
	rank_setsid = false;
}

static void test_running_rank_left_alone(void **state)
{
	struct orphans o = {0};
	pid_t bg, proxy, leader = start_tree(-1, &bg, &proxy);

	for (int t = 0; t <= 3; t++)
		assert_int_equal(orphans_sweep(&o, getpid(), 1000 + t * ORPHANS_GRACE_MS), 0);
	assert_true(alive(bg));
	kill(-leader, SIGKILL);
	kill(bg, SIGKILL);
	waitpid(leader, NULL, 0);
	usleep(50000);
	reap_all();
}

static void test_other_session_left_alone(void **state)
{
	struct orphans o = {0};
	pid_t bg, proxy, leader = start_tree(0, &bg, &proxy);
	pid_t stranger = fork();

	if (stranger == 0) {
		/* Ours (re-parented would be the same), but in our own session: not the job's. */
		pause_forever();
	}
	wait_reparented(bg);
	orphans_sweep(&o, getpid(), 1000);
	assert_int_equal(orphans_sweep(&o, getpid(), 1000 + ORPHANS_GRACE_MS), 1);
	assert_true(alive(stranger));
	kill(stranger, SIGKILL);
	kill(-leader, SIGKILL);
	waitpid(stranger, NULL, 0);
	waitpid(leader, NULL, 0);
	usleep(50000);
	reap_all();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_background_killed_after_grace),
	    cmocka_unit_test(test_background_of_session_leader_rank),
	    cmocka_unit_test(test_running_rank_left_alone),
	    cmocka_unit_test(test_other_session_left_alone),
	};

	/* Orphans of the trees the tests make come to us, as they come to PID 1 in a guest. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
