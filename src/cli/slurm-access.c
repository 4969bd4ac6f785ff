/* Whether a job's user may read its image (slurm.h, docs/slurm.md "Who may boot an image").
 * The node daemon pulls with the node's own registry credentials, which may read every
 * user's images; so before it does, the prolog asks the registry for the image's manifest
 * with the user's own credentials (their ~/.docker/config.json, read as the user), in a
 * child that has become the user. The registry's answer is the authority: a user it refuses
 * gets no VMs. What the user was allowed is then pinned by digest: the node fetches
 * REGISTRY/REPO@sha256:..., so a tag moved between the two requests cannot switch the image. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/slurm.h"
#include "registry/auth.h"
#include "registry/oci.h"
#include "registry/reference.h"
#include "util/cleanup.h"
#include "util/error.h"
#include "util/fsutil.h"
#include "util/log.h"
#include "util/time.h"

/* The registry's answers come well within this; a child past it is killed (SIGALRM). */
#define ACCESS_TIMEOUT_S 60

/* In the child, as the user: the manifest digest of ref, or the reason it cannot be had. */
static int resolve_digest(const struct slurm_job *sj, const struct reference *ref,
			  char digest[OCI_DIGEST_LEN + 1], char **ret_error)
{
	struct auth_credentials cred = {0};
	struct oci_client *c = NULL;
	_cleanup_free_ char *data = NULL;
	size_t len = 0;
	int r;

	r = auth_credentials_find(ref->registry, &cred, ret_error);
	if (r < 0 && r != -ENOENT)
		return r;
	r = oci_client_new(ref->registry,
			   &(struct oci_options){.insecure = sj->registry_insecure,
						 .credentials = cred.user ? &cred : NULL},
			   &c);
	auth_credentials_done(&cred);
	if (r < 0)
		return error_set(ret_error, r, "starting an HTTP client: %s", strerror(-r));
	r = oci_manifest_head(c, ref->repository, reference_target(ref), OCI_MEDIA_TYPE_MANIFEST,
			      digest, ret_error);
	if (r == -ENODATA) { /* a registry that does not say the digest: hash the manifest */
		free(*ret_error);
		*ret_error = NULL;
		r = oci_manifest_get(c, ref->repository, reference_target(ref),
				     OCI_MEDIA_TYPE_MANIFEST, &data, &len, ret_error);
		if (r == 0)
			oci_digest(data, len, digest);
	}
	oci_client_free(c);
	return r;
}

static void __attribute__((noreturn))
child_main(const struct slurm_job *sj, const struct reference *ref, const char *home, int out_fd)
{
	char digest[OCI_DIGEST_LEN + 1] = "", *error = NULL;
	int r;

	alarm(ACCESS_TIMEOUT_S);
	/* The user's rights, and theirs alone: the node's credentials (slurmd's environment)
	 * must not answer for them. */
	unsetenv("VMHPC_REGISTRY_AUTH");
	unsetenv("DOCKER_CONFIG");
	if (home)
		setenv("HOME", home, 1);
	else
		unsetenv("HOME");
	if (setgroups(0, NULL) < 0 || setgid(sj->gid) < 0 || setuid(sj->uid) < 0 ||
	    getuid() != sj->uid) {
		dprintf(out_fd, "%d becoming uid %u: %s", -EPERM, (unsigned)sj->uid,
			strerror(errno));
		_exit(1);
	}
	r = resolve_digest(sj, ref, digest, &error);
	if (r < 0)
		dprintf(out_fd, "%d %s", r, error ? error : strerror(-r));
	else
		dprintf(out_fd, "0 %s", digest);
	_exit(0);
}

int slurm_image_authorize(struct slurm_job *sj, char **ret_error)
{
	_cleanup_free_ char *home = NULL, *error = NULL;
	struct reference *ref = NULL;
	struct passwd pw, *found = NULL;
	char pwbuf[4096], answer[4096], *text;
	size_t got = 0;
	ssize_t n;
	int fds[2], status, r;
	double t0 = time_now_s();
	pid_t pid;

	r = reference_parse(sj->image, &ref, &error);
	if (r < 0)
		return error_set(ret_error, r, "--vm-image %s: %s", sj->image, error);
	/* Looked up before the fork: the user's home holds their registry credentials. */
	if (getpwuid_r(sj->uid, &pw, pwbuf, sizeof(pwbuf), &found) == 0 && found)
		home = strdup(found->pw_dir);
	if (pipe2(fds, O_CLOEXEC) < 0) {
		r = -errno;
		goto out;
	}
	pid = fork();
	if (pid < 0) {
		r = -errno;
		close(fds[0]);
		close(fds[1]);
		goto out;
	}
	if (pid == 0) {
		close(fds[0]);
		child_main(sj, ref, home, fds[1]);
	}
	close(fds[1]);
	n = fs_read_full(fds[0], answer, sizeof(answer) - 1);
	got = n > 0 ? (size_t)n : 0;
	close(fds[0]);
	answer[got] = 0;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (got == 0) {
		r = error_set(ret_error, -ETIMEDOUT,
			      "image %s: asking registry %s as uid %u gave no answer within %d s",
			      sj->image, ref->registry, (unsigned)sj->uid, ACCESS_TIMEOUT_S);
		goto out;
	}
	r = (int)strtol(answer, &text, 10);
	text += *text == ' ';
	if (r == -EACCES) {
		r = error_set(ret_error, r,
			      "uid %u may not read image %s: %s (for a Slurm job only the user's "
			      "own login counts: the auths of ~/.docker/config.json, as `docker "
			      "login` writes them)",
			      (unsigned)sj->uid, sj->image, text);
	} else if (r == -ENOENT) {
		r = error_set(ret_error, r, "image %s: no such image in registry %s (%s)",
			      sj->image, ref->registry, text);
	} else if (r < 0) {
		r = error_set(ret_error, r, "image %s: %s", sj->image, text);
	} else if (strncmp(text, "sha256:", 7) != 0 || strlen(text) != OCI_DIGEST_LEN ||
		   strspn(text + 7, "0123456789abcdef") != OCI_DIGEST_LEN - 7) {
		r = error_set(ret_error, -EPROTO, "image %s: registry %s gave no digest (%s)",
			      sj->image, ref->registry, text);
	} else if (asprintf(&sj->image_digest_ref, "%s/%s@%s", ref->registry, ref->repository,
			    text) < 0) {
		sj->image_digest_ref = NULL;
		r = -ENOMEM;
	} else {
		log_info("job %u: uid %u may read %s (%s), the registry said in %.3f s", sj->id,
			 (unsigned)sj->uid, sj->image, text, time_now_s() - t0);
	}
out:
	reference_free(ref);
	return r;
}
