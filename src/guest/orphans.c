#include "guest/orphans.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROXY_COMM "hydra_pmi_proxy" /* 15 characters: comm is not truncated */

struct proc {
	pid_t pid, ppid, session;
	char state;
	bool proxy;
};

/* Fields 2 (comm), 3 (state), 4 (ppid) and 6 (session) of /proc/PID/stat. */
static bool read_proc(pid_t pid, struct proc *ret)
{
	char path[64], buf[512], comm[32];
	const char *open_paren, *close_paren;
	int fd, pgrp;
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return false;
	buf[n] = '\0';
	open_paren = strchr(buf, '(');
	close_paren = strrchr(buf, ')'); /* a comm may hold ')' itself */
	if (!open_paren || !close_paren || close_paren < open_paren ||
	    (size_t)(close_paren - open_paren - 1) >= sizeof(comm))
		return false;
	memcpy(comm, open_paren + 1, (size_t)(close_paren - open_paren - 1));
	comm[close_paren - open_paren - 1] = '\0';
	ret->pid = pid;
	if (sscanf(close_paren + 1, " %c %d %d %d", &ret->state, &ret->ppid, &pgrp,
		   &ret->session) != 4)
		return false;
	ret->proxy = strcmp(comm, PROXY_COMM) == 0;
	return true;
}

/* Every process now; *ret_n of them, caller frees. */
static struct proc *list_procs(size_t *ret_n)
{
	DIR *d = opendir("/proc");
	struct dirent *de;
	struct proc *procs = NULL;
	size_t n = 0, cap = 0;

	*ret_n = 0;
	if (!d)
		return NULL;
	while ((de = readdir(d))) {
		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		if (n == cap) {
			size_t ncap = cap ? cap * 2 : 256;
			struct proc *grown = realloc(procs, ncap * sizeof(*grown));

			if (!grown)
				break;
			procs = grown;
			cap = ncap;
		}
		if (read_proc((pid_t)atoi(de->d_name), &procs[n]))
			n++;
	}
	closedir(d);
	*ret_n = n;
	return procs;
}

/* True when the leader of session sid is an exited child of proxy, or gone. */
static bool session_ended(const struct proc *procs, size_t n, pid_t sid, pid_t proxy)
{
	for (size_t k = 0; k < n; k++)
		if (procs[k].pid == sid)
			return procs[k].state == 'Z' && procs[k].ppid == proxy;
	return true;
}

/* The proxy's slot in o (made when absent; NULL when full). */
static int64_t *idle_since(struct orphans *o, pid_t pid, bool create)
{
	for (unsigned i = 0; i < o->n_proxies; i++)
		if (o->proxies[i].pid == pid)
			return &o->proxies[i].idle_since_ms;
	if (!create || o->n_proxies == ORPHANS_MAX_PROXIES)
		return NULL;
	o->proxies[o->n_proxies].pid = pid;
	o->proxies[o->n_proxies].idle_since_ms = -1;
	return &o->proxies[o->n_proxies++].idle_since_ms;
}

int orphans_sweep(struct orphans *o, pid_t reaper, int64_t now_ms)
{
	size_t n;
	struct proc *procs = list_procs(&n);
	struct orphans next = {0};
	int killed = 0;

	if (!procs)
		return 0;

	for (size_t i = 0; i < n; i++) {
		const struct proc *p = &procs[i];
		unsigned live = 0;
		int64_t *since, *was;

		if (!p->proxy || p->state == 'Z')
			continue;
		for (size_t k = 0; k < n; k++)
			if (procs[k].ppid == p->pid) {
				if (procs[k].state != 'Z')
					live++;
			}
		/* Still running ranks: nothing is stuck. (None at all, for the grace period:
		 * they exited and were reaped, and something else holds the proxy.) */
		if (live > 0)
			continue;
		since = idle_since(&next, p->pid, true);
		if (!since)
			continue;
		was = idle_since(o, p->pid, false);
		*since = was && *was >= 0 ? *was : now_ms;
		if (now_ms - *since < ORPHANS_GRACE_MS)
			continue;
		for (size_t k = 0; k < n; k++) {
			const struct proc *q = &procs[k];

			/* Not a session leader (the commands the exec service starts lead their
			 * sessions), left to us, and of the job: in the proxy's session, or in
			 * the session a rank made for itself (hydra's ranks call setsid) whose
			 * leader has exited. */
			if (q->ppid != reaper || q->pid == q->session || q->state == 'Z' ||
			    q->pid == p->pid || q->pid == reaper)
				continue;
			if (q->session != p->session &&
			    !session_ended(procs, n, q->session, p->pid))
				continue;
			if (kill(q->pid, SIGKILL) == 0)
				killed++;
		}
	}
	*o = next; /* proxies that ended or got live ranks again are forgotten */
	free(procs);
	return killed;
}
