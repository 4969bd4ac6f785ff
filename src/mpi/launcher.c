/* The MPI launch command of `vmhpc run` (launcher.h). One table entry per MPI: its name, the
 * package that marks it in an image, and the function that writes its launcher's options. */
#include "mpi/launcher.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guest/jobwatch.h"
#include "util/cleanup.h"

_Static_assert(LAUNCHER_EXIT_STUCK == JOBWATCH_EXIT_STUCK, "the watch's exit status");

#define EXEC_BIN "/usr/bin/vmhpc-exec"

/* A growing NULL-terminated string vector; the first failed allocation sticks in err. */
struct strv {
	char **v;
	size_t n, cap;
	int err;
};

static void strv_add(struct strv *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void strv_add(struct strv *s, const char *fmt, ...)
{
	va_list ap;
	char *str;

	if (s->err)
		return;
	if (s->n + 2 > s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 32;
		char **v = realloc(s->v, cap * sizeof(*v));

		if (!v) {
			s->err = -ENOMEM;
			return;
		}
		s->v = v;
		s->cap = cap;
	}
	va_start(ap, fmt);
	if (vasprintf(&str, fmt, ap) < 0) {
		s->err = -ENOMEM;
		str = NULL;
	}
	va_end(ap);
	if (!str)
		return;
	s->v[s->n++] = str;
	s->v[s->n] = NULL;
}

static char **strv_free(char **v)
{
	for (char **p = v; p && *p; p++)
		free(*p);
	free(v);
	return NULL;
}

/* "vm0:2,vm1:2" (with_slots) or "vm0,vm1". */
static char *host_list(const struct launcher_job *job, bool with_slots)
{
	size_t len = 1;
	char *out, *p;

	for (unsigned i = 0; i < job->n_hosts; i++)
		len += strlen(job->hosts[i]) + 12;
	out = malloc(len);
	if (!out)
		return NULL;
	p = out;
	*p = '\0';
	for (unsigned i = 0; i < job->n_hosts; i++) {
		if (with_slots)
			p += sprintf(p, "%s%s:%u", i ? "," : "", job->hosts[i], job->slots);
		else
			p += sprintf(p, "%s%s", i ? "," : "", job->hosts[i]);
	}
	return out;
}

static void mpich_argv(const struct launcher_job *job, const char *hosts, struct strv *a)
{
	strv_add(a, "/usr/bin/mpiexec.hydra");
	/* hydra reaches the other VMs "by ssh" through vmhpc-exec and their exec services. */
	strv_add(a, "-launcher");
	strv_add(a, "ssh");
	strv_add(a, "-launcher-exec");
	strv_add(a, EXEC_BIN);
	strv_add(a, "-iface");
	strv_add(a, "eth0");
	strv_add(a, "-hosts");
	strv_add(a, "%s", hosts);
	strv_add(a, "-n");
	strv_add(a, "%u", job->ranks);
}

static const char *const mpich_env[] = {
    /* Debian's MPICH is ch4:ucx: TCP between VMs, shared memory inside one (docs/guest.md). */
    "UCX_TLS=tcp,sysv,posix,self",
    "UCX_NET_DEVICES=eth0",
    "UCX_WARN_UNUSED_ENV_VARS=n",
    NULL,
};

static void openmpi_mca(struct strv *a, const char *name, const char *value)
{
	strv_add(a, "--mca");
	strv_add(a, "%s", name);
	strv_add(a, "%s", value);
}

static void openmpi_argv(const struct launcher_job *job, const char *hosts, struct strv *a)
{
	/* orterun is the real file: mpirun and mpiexec are links to it (its comm is what the
	 * job watch looks for among ranks' parents in VM 0). */
	strv_add(a, "/usr/bin/orterun");
	strv_add(a, "--host");
	strv_add(a, "%s", hosts);
	strv_add(a, "-n");
	strv_add(a, "%u", job->ranks);
	/* The orteds in the other VMs are started "by rsh" through vmhpc-exec, all by orterun
	 * itself (no tree spawn: every VM is one hop away anyway). */
	openmpi_mca(a, "plm_rsh_agent", EXEC_BIN);
	openmpi_mca(a, "plm_rsh_no_tree_spawn", "1");
	/* ob1 over TCP between VMs, shared memory (vader) inside one. Not UCX: its TCP
	 * transport's endpoint flush is what made MPICH's finalize hang (docs/mpi.md); not
	 * openib, ofi or psm: a VM has no such hardware, and probing them only prints
	 * warnings. */
	openmpi_mca(a, "pml", "ob1");
	openmpi_mca(a, "btl", "self,vader,tcp");
	openmpi_mca(a, "osc", "^ucx");
	openmpi_mca(a, "btl_tcp_if_include", "eth0");
	openmpi_mca(a, "oob_tcp_if_include", "eth0");
}

static const char *const openmpi_env[] = {
    /* The ranks run as the submitting user, which is root under CI and sudo. */
    "OMPI_ALLOW_RUN_AS_ROOT=1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
    NULL,
};

struct launcher_kind {
	const char *name;    /* as in the spec's [image] mpi and the metadata */
	const char *package; /* the Debian package that marks it in an image */
	const char *program; /* the launcher's name for messages */
	void (*argv)(const struct launcher_job *job, const char *hosts, struct strv *a);
	const char *const *env;
};

static const struct launcher_kind kinds[_LAUNCHER_MPI_MAX] = {
    [LAUNCHER_MPICH] = {"mpich", "mpich", "mpiexec", mpich_argv, mpich_env},
    [LAUNCHER_OPENMPI] = {"openmpi", "openmpi-bin", "mpirun", openmpi_argv, openmpi_env},
};

const char *launcher_mpi_to_string(enum launcher_mpi mpi)
{
	return mpi >= 0 && mpi < _LAUNCHER_MPI_MAX ? kinds[mpi].name : NULL;
}

const char *launcher_program_name(enum launcher_mpi mpi)
{
	return mpi >= 0 && mpi < _LAUNCHER_MPI_MAX ? kinds[mpi].program : "mpiexec";
}

int launcher_mpi_of_image(const json_t *metadata, const char *image, enum launcher_mpi *ret_mpi,
			  char **ret_error)
{
	const json_t *mpi = json_object_get(metadata, "mpi");
	const json_t *packages = json_object_get(metadata, "packages");
	int found = -1, n_found = 0;

	if (mpi) {
		for (int i = 0; i < _LAUNCHER_MPI_MAX; i++)
			if (json_is_string(mpi) &&
			    strcmp(json_string_value(mpi), kinds[i].name) == 0) {
				*ret_mpi = (enum launcher_mpi)i;
				return 0;
			}
		if (asprintf(ret_error,
			     "image %s names an MPI vmhpc cannot launch (\"mpi\" in its metadata); "
			     "rebuild it with mpi = mpich or mpi = openmpi under [image]",
			     image) < 0)
			*ret_error = NULL;
		return -EINVAL;
	}
	for (int i = 0; i < _LAUNCHER_MPI_MAX; i++)
		if (json_object_get(packages, kinds[i].package)) {
			found = i;
			n_found++;
		}
	if (n_found == 1) {
		*ret_mpi = (enum launcher_mpi)found;
		return 0;
	}
	if (asprintf(
		ret_error,
		n_found == 0
		    ? "image %s has no MPI launcher (neither package mpich nor openmpi-bin, and no "
		      "mpi = under [image]); build it from a spec with one (examples/tiny-mpi.ini, "
		      "examples/openmpi.ini), or add mpi = mpich|openmpi under [image] when the "
		      "launcher comes from a tree (docs/mpi.md)"
		    : "image %s has both MPICH (package mpich) and Open MPI (openmpi-bin); say "
		      "which launches jobs with mpi = mpich or mpi = openmpi under [image] and "
		      "rebuild it (docs/mpi.md)",
		image) < 0)
		*ret_error = NULL;
	return n_found == 0 ? -ENOENT : -EINVAL;
}

int launcher_command_new(const struct launcher_job *job, struct launcher_command **ret_command)
{
	const struct launcher_kind *k;
	_cleanup_free_ char *hosts = NULL, *names = NULL;
	struct strv a = {0}, e = {0};
	struct launcher_command *c;

	if (job->mpi < 0 || job->mpi >= _LAUNCHER_MPI_MAX || job->n_hosts == 0 || job->argc < 1)
		return -EINVAL;
	k = &kinds[job->mpi];
	hosts = host_list(job, true);
	names = host_list(job, false);
	if (!hosts || !names)
		return -ENOMEM;

	/* Every launch goes through the watch: it ends and reports a launcher that outlives
	 * its ranks (exit LAUNCHER_EXIT_STUCK). The launcher stays in the process group the
	 * exec service made, so Ctrl-C and a lost host connection reach it as before. */
	strv_add(&a, EXEC_BIN);
	strv_add(&a, "--job-watch");
	strv_add(&a, "--grace-s");
	strv_add(&a, "%d", LAUNCHER_WATCH_GRACE_S);
	strv_add(&a, "%s", names);
	strv_add(&a, "--");
	k->argv(job, hosts, &a);
	/* --label: every rank's output through vmhpc-exec's line labeler, so that a prefix
	 * always starts a line (hydra's -prepend-pattern prefixes each write instead). */
	if (job->label) {
		strv_add(&a, EXEC_BIN);
		strv_add(&a, "--label-lines");
		strv_add(&a, "--");
	}
	for (int i = 0; i < job->argc; i++)
		strv_add(&a, "%s", job->argv[i]);

	strv_add(&e, "PATH=/usr/local/bin:/usr/bin:/usr/sbin");
	strv_add(&e, "HOME=/root");
	for (const char *const *p = k->env; *p; p++)
		strv_add(&e, "%s", *p);

	c = calloc(1, sizeof(*c));
	if (a.err || e.err || !c) {
		strv_free(a.v);
		strv_free(e.v);
		free(c);
		return -ENOMEM;
	}
	c->argv = a.v;
	c->envp = e.v;
	*ret_command = c;
	return 0;
}

struct launcher_command *launcher_command_free(struct launcher_command *c)
{
	if (!c)
		return NULL;
	strv_free(c->argv);
	strv_free(c->envp);
	free(c);
	return NULL;
}
