/* Unit tests of vmhpc-exec's guest helpers: the job watch's rank count against a fake /proc
 * (MPICH's proxies, Open MPI's orted and orterun, rsh agents, zombies) and the line
 * labeler's splitter. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "guest/jobwatch.h"
#include "guest/label.h"

static char proc_dir[] = "/tmp/test-jobwatch.XXXXXX";

static void add_proc(int pid, const char *comm, char state, int ppid)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%d", proc_dir, pid);
	assert_int_equal(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/%d/stat", proc_dir, pid);
	f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "%d (%s) %c %d 1 1 0 -1 4194560 0 0\n", pid, comm, state, ppid);
	fclose(f);
}

static int setup(void **state)
{
	return mkdtemp(proc_dir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[300];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", proc_dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_count_ranks(void **state)
{
	add_proc(1, "vmhpc-init", 'S', 0);
	/* MPICH in VM 0: mpiexec, its launches of the other VMs' proxies, its local proxy. */
	add_proc(10, "vmhpc-exec", 'S', 1); /* the job watch */
	add_proc(11, "mpiexec.hydra", 'S', 10);
	add_proc(12, "vmhpc-exec", 'S', 11);
	add_proc(13, "hydra_pmi_proxy", 'S', 11);
	add_proc(14, "ring", 'R', 13);
	add_proc(15, "ring", 'Z', 13); /* exited, not reaped yet: not a rank any more */
	/* A comm with blanks and parentheses does not confuse the parser. */
	add_proc(16, "a) (b", 'S', 13);
	assert_int_equal(jobwatch_count_ranks(proc_dir), 2);

	/* Open MPI: orterun's own ranks in VM 0 count, its rsh agents do not; orted's do. */
	add_proc(20, "orterun", 'S', 10);
	add_proc(21, "vmhpc-exec", 'S', 20);
	add_proc(22, "ring", 'S', 20);
	add_proc(23, "orted", 'S', 1);
	add_proc(24, "ring", 'R', 23);
	add_proc(25, "ring", 'X', 23);
	/* Not launchers: a program named mpiexec (hydra's, started by its link) is the parent
	 * of a proxy, not of ranks. */
	add_proc(30, "mpiexec", 'S', 1);
	add_proc(31, "sleep", 'S', 30);
	assert_int_equal(jobwatch_count_ranks(proc_dir), 4);
	assert_int_equal(jobwatch_count_ranks("/nonexistent/proc"), -ENOENT);
}

struct lines {
	char text[8][LABEL_MAX_LINE + 1];
	size_t n;
};

static void collect(void *ctx, const char *line, size_t len)
{
	struct lines *l = ctx;

	assert_true(l->n < 8);
	memcpy(l->text[l->n], line, len);
	l->text[l->n++][len] = '\0';
}

static void test_label_feed(void **state)
{
	static char buf[LABEL_MAX_LINE], big[LABEL_MAX_LINE + 10];
	static struct lines l;
	size_t used = 0;

	/* A line in three writes is one line; two lines in one write are two. */
	label_feed(buf, &used, "hel", 3, collect, &l);
	label_feed(buf, &used, "lo wor", 6, collect, &l);
	assert_int_equal(l.n, 0);
	label_feed(buf, &used, "ld\nsecond\nthi", 13, collect, &l);
	assert_int_equal(l.n, 2);
	assert_string_equal(l.text[0], "hello world");
	assert_string_equal(l.text[1], "second");
	assert_int_equal(used, 3);
	label_feed(buf, &used, "rd\n\n", 4, collect, &l);
	assert_int_equal(l.n, 4);
	assert_string_equal(l.text[2], "third");
	assert_string_equal(l.text[3], "");
	assert_int_equal(used, 0);
	/* A line longer than the buffer is cut, never overflows. */
	memset(big, 'x', sizeof(big));
	big[sizeof(big) - 1] = '\n';
	l.n = 0;
	label_feed(buf, &used, big, sizeof(big), collect, &l);
	assert_int_equal(l.n, 2);
	assert_int_equal(strlen(l.text[0]), LABEL_MAX_LINE);
	assert_int_equal(strlen(l.text[1]), 9);
	assert_int_equal(used, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_count_ranks, setup, teardown),
	    cmocka_unit_test(test_label_feed),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
