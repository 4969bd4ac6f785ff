/* The exec service of vmhpc-init (service.h): peers on TCP and on the virtio-serial control
 * port, one command per authenticated peer with its pipes, and the poll loop that drives
 * them, reaps every child and ends in power_off(). */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "guest/console.h"
#include "guest/control.h"
#include "guest/frame.h"
#include "guest/jobcg.h"
#include "guest/orphans.h"
#include "guest/service.h"
#include "util/cleanup.h"
#include "util/time.h"

/* Connections come from two pools so that nobody who cannot authenticate can crowd out
 * those who did: authenticated peers (MAX_AUTHED) and peers still to present HELLO, or being
 * refused (MAX_UNAUTH, each with AUTH_TIMEOUT_MS to do so). The control port has a slot of
 * its own on top: the host can always get in. */
#define MAX_AUTHED 64
#define MAX_UNAUTH 8
#define MAX_CONNS  (MAX_AUTHED + MAX_UNAUTH + 1)
/* Slots: one more than the pools for a peer accepted in the turn another was dropped in. */
#define CONN_SLOTS	 (MAX_CONNS + 1)
#define READ_CHUNK	 (64u * 1024u)	 /* per read of a socket or a command's pipe */
#define OUT_HIGH_WATER	 (256u * 1024u)	 /* queued for a peer: stop reading the command */
#define STDIN_HIGH_WATER (1024u * 1024u) /* queued for the command: stop reading the peer */
#define AUTH_TIMEOUT_MS	 5000		 /* a peer must say HELLO within this */
#define DRAIN_MS	 1000		 /* a refused peer gets this long to read our ERROR */
/* After a command exited, background children may hold its pipes: EXIT waits this long. */
#define LINGER_MS	2000
#define CONTROL_POLL_MS 1000 /* a disconnected control port is checked this often at least */
#define SWEEP_MS	1000 /* how often running jobs are checked for stuck proxies */

static const char *const default_env[] = {
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", NULL};

/* Peers can cause messages at will (a stream of refused connections), and the serial console
 * is slow under TCG: at most 10 such lines a second, the rest counted. */
static void say_peer(const char *peer, const char *msg)
{
	static int64_t window_ms;
	static unsigned shown, dropped;
	int64_t now = time_now_ms();

	if (now - window_ms >= 1000) {
		if (dropped)
			console_say("%u more messages about peers suppressed", dropped);
		window_ms = now;
		shown = dropped = 0;
	}
	if (++shown > 10) {
		dropped++;
		return;
	}
	console_say("%s: %s", peer, msg);
}

struct job {
	pid_t pid; /* > 0 from fork until EXIT is sent */
	int in_fd, out_fd, err_fd;
	struct frame_buf in; /* STDIN bytes not yet written to the command */
	bool in_eof;	     /* STDIN_EOF seen: close in_fd once in is empty */
	bool reaped;
	int wstatus;
	int64_t reaped_ms;
};

struct conn {
	int fd;
	bool control; /* the virtio-serial port: fd belongs to the service, not to the conn */
	bool authed;
	bool closing; /* TCP, refused: flush, half-close, discard input until EOF or deadline */
	bool dead;    /* remove at the end of this turn */
	bool wr_shut;
	int64_t deadline_ms; /* HELLO due, or the end of draining */
	int64_t accepted_ms; /* the oldest unauthenticated peer is evicted first */
	char peer[64];
	struct frame_decoder *dec;
	struct frame_buf out;
	struct job job;
};

struct service {
	int sig_fd;
	int listen_fd;
	uint16_t port;
	bool pid1;
	bool have_token;
	uint8_t token[FRAME_TOKEN_BYTES];
	char token_env[sizeof("VMHPC_TOKEN=") + 2 * FRAME_TOKEN_BYTES];
	int auth_timeout_ms;
	struct conn *conns[CONN_SLOTS];
	size_t n_conns;
	/* The control port: opened by the boot sequence, a conn while the host is connected. */
	char control_path[300];
	int control_fd;
	int control_ep; /* epoll, edge-triggered on control_fd: wakes us when the host connects */
	struct conn *control;
	int64_t control_next_check;
	bool power_off;
	struct conn *shutdown_by;
	struct orphans orphans; /* what finished ranks left in the background (orphans.h) */
	int64_t next_sweep_ms;
	bool job_cgroup; /* commands run in jobcg's group */
	const struct shmdev *shm;
};

static void job_reset(struct job *j)
{
	if (j->in_fd >= 0)
		close(j->in_fd);
	if (j->out_fd >= 0)
		close(j->out_fd);
	if (j->err_fd >= 0)
		close(j->err_fd);
	frame_buf_clear(&j->in);
	memset(j, 0, sizeof(*j));
	j->in_fd = j->out_fd = j->err_fd = -1;
}

static struct conn *conn_new(int fd, bool control, const char *peer, int auth_timeout_ms)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	if (frame_decoder_new(&c->dec) < 0) {
		free(c);
		return NULL;
	}
	c->fd = fd;
	c->control = control;
	c->accepted_ms = time_now_ms();
	c->deadline_ms = c->accepted_ms + auth_timeout_ms;
	snprintf(c->peer, sizeof(c->peer), "%s", peer);
	c->job.in_fd = c->job.out_fd = c->job.err_fd = -1;
	return c;
}

static void conn_free(struct conn *c)
{
	/* A command whose client is gone has nobody to report to: end its whole group. The
	 * zombie is reaped by the SIGCHLD loop like any orphan. */
	if (c->job.pid > 0 && !c->job.reaped)
		kill(-c->job.pid, SIGKILL);
	job_reset(&c->job);
	if (!c->control && c->fd >= 0)
		close(c->fd);
	frame_decoder_free(c->dec);
	frame_buf_clear(&c->out);
	free(c);
}

static void conn_send(struct conn *c, enum frame_type type, const void *payload, size_t len)
{
	if (frame_buf_put(&c->out, type, payload, len) < 0) {
		console_say("%s: out of memory queueing %s; dropping the peer", c->peer,
			    frame_type_to_string(type));
		c->dead = true;
	}
}

/* Refuses or ends a peer: ERROR with msg, logged on the console, then the connection closes
 * once the peer had DRAIN_MS to read it. */
static void conn_refuse(struct conn *c, const char *msg)
{
	struct frame_decoder *fresh = NULL;

	say_peer(c->peer, msg);
	if (c->closing)
		return;
	conn_send(c, FRAME_ERROR, msg, strlen(msg));
	if (!c->control) {
		c->closing = true;
		c->deadline_ms = time_now_ms() + DRAIN_MS;
		return;
	}
	/* The control port cannot be closed, and the host may reconnect faster than we see it
	 * go: start over, unauthenticated, parsing the next bytes as a new stream. */
	if (frame_decoder_new(&fresh) < 0) {
		c->dead = true;
		return;
	}
	frame_decoder_free(c->dec);
	c->dec = fresh;
	c->authed = false;
}

static void read_info(bool usage, struct frame_info *info)
{
	_cleanup_fclose_ FILE *f = fopen("/proc/meminfo", "re");
	char line[256];
	struct timespec ts;

	memset(info, 0, sizeof(*info));
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long long kb;

		if (sscanf(line, "MemTotal: %llu kB", &kb) == 1)
			info->mem_total_kb = kb;
		else if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
			info->mem_available_kb = kb;
	}
	/* CLOCK_BOOTTIME is what /proc/uptime shows, without parsing a decimal. */
	clock_gettime(CLOCK_BOOTTIME, &ts);
	info->uptime_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	if (usage) {
		info->has_usage = true;
		info->job_mem_peak_kb = jobcg_mem_peak_kb();
		info->oom_kills = jobcg_oom_kills();
	}
}

/* READY keeps its first length (a host finds it by its header: its callers pass usage false);
 * INFO replies carry the job's usage too when the job has its cgroup. */
static void send_info(struct conn *c, enum frame_type type, bool usage)
{
	struct frame_info info;
	uint8_t payload[FRAME_INFO_USAGE_BYTES];
	size_t len;

	read_info(usage, &info);
	len = frame_info_encode(&info, payload);
	conn_send(c, type, payload, len);
}

/* HELLO on the control port starts a host session, answered READY first: a host program may
 * connect before we saw the previous one go, and skips what it receives until READY (the
 * rest of the old session's output may still be in flight). A session that was still
 * authenticated ends as a lost TCP peer's would. */
static void control_hello(struct conn *c)
{
	if (c->authed) {
		console_say("%s: new host session", c->peer);
		if (c->job.pid > 0 && !c->job.reaped)
			kill(-c->job.pid, SIGKILL);
		job_reset(&c->job);
		frame_buf_clear(&c->out);
		c->authed = false;
	}
	send_info(c, FRAME_READY, false);
}

static bool env_has(char *const *env, const char *prefix)
{
	for (char *const *p = env; *p; p++)
		if (strncmp(*p, prefix, strlen(prefix)) == 0)
			return true;
	return false;
}

/* The child side of a command: never returns. */
static void __attribute__((noreturn))
job_child(const struct frame_exec *e, const char *token_env, bool job_cgroup,
	  const struct shmdev *shm, int in, int out, int err)
{
	extern char **environ;
	char *const *env = e->envc ? e->envp : (char *const *)default_env;
	char **envp;
	size_t n = 0;
	sigset_t none;
	const char *cwd = e->cwd[0] ? e->cwd : "/";

	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* Its own session and process group: SIGNAL and a lost client reach all it started. */
	setsid();
	/* Before the user's rights are taken: cgroup.procs is root's. A command that cannot
	 * join still runs; only the job's peak memory is then short of it. */
	if (job_cgroup)
		jobcg_enter();
	if (dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
		_exit(126);
	/* Still root: the shared-memory BAR becomes the command's user's. */
	shmdev_give(shm, e->uid, e->gid);
	if (e->gid != getgid() || e->uid != getuid()) {
		gid_t gid = e->gid;

		if (setgroups(1, &gid) < 0 || setgid(e->gid) < 0 || setuid(e->uid) < 0) {
			dprintf(2, "vmhpc-init: running as %u:%u: %s\n", e->uid, e->gid,
				strerror(errno));
			_exit(126);
		}
	}
	if (chdir(cwd) < 0) {
		if (!(e->flags & FRAME_EXEC_CWD_OPTIONAL) || chdir("/") < 0) {
			dprintf(2, "vmhpc-init: cd %s: %s\n", cwd, strerror(errno));
			_exit(126);
		}
	}
	/* Every command gets the job's token in VMHPC_TOKEN (the caller's own value, if any,
	 * is replaced): that is how vmhpc-exec in the guest reaches the other VMs, now that
	 * the token is not on the kernel command line. This child is single-threaded: malloc
	 * is safe here. */
	while (env[n])
		n++;
	envp = calloc(n + 3 + SHMDEV_ENV_MAX, sizeof(*envp));
	if (!envp)
		_exit(126);
	n = 0;
	for (char *const *p = env; *p; p++) {
		/* The launcher's UCX_TLS gains the transport over the channel when this image
		 * carries it (docs/bypass.md); hydra passes it on to every rank. */
		char *tls = shmdev_ucx_tls(shm, *p);

		if (tls) {
			envp[n++] = tls;
			/* Large messages as eager fragments through the channel: UCX's rendezvous
			 * would move them over TCP (the only transport with zero-copy RMA here),
			 * measured 4-10x slower (bench/RESULTS.md). The caller's own wins. */
			if (!env_has(env, "UCX_RNDV_THRESH="))
				envp[n++] = (char *)"UCX_RNDV_THRESH=inf";
		} else if (strncmp(*p, "VMHPC_TOKEN=", 12) != 0 &&
			   strncmp(*p, "VMHPC_SHM", 9) != 0) {
			envp[n++] = *p;
		}
	}
	if (token_env[0])
		envp[n++] = (char *)token_env;
	/* And where the job's shared-memory channel is (docs/bypass.md). */
	for (unsigned k = 0; shm && shm->present && k < SHMDEV_ENV_MAX; k++)
		envp[n++] = (char *)shm->env[k];
	environ = envp;
	execvp(e->argv[0], e->argv);
	{
		int err_no = errno;

		dprintf(2, "vmhpc-init: %s: %s\n", e->argv[0], strerror(err_no));
		_exit(err_no == ENOENT ? 127 : 126); /* as a shell reports it */
	}
}

static int set_nonblock(int fd)
{
	int flags = fcntl(fd, F_GETFL);

	if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

static void job_start(struct service *s, struct conn *c, const struct frame_exec *e)
{
	int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
	struct job *j = &c->job;
	char msg[160];
	pid_t pid;

	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
		snprintf(msg, sizeof(msg), "vmhpc-init: cannot run %.64s: pipe: %s\n", e->argv[0],
			 strerror(errno));
		goto fail;
	}
	pid = fork();
	if (pid < 0) {
		snprintf(msg, sizeof(msg), "vmhpc-init: cannot run %.64s: fork: %s\n", e->argv[0],
			 strerror(errno));
		goto fail;
	}
	if (pid == 0)
		job_child(e, s->token_env, s->job_cgroup, s->shm, in[0], out[1], err[1]);
	close(in[0]);
	close(out[1]);
	close(err[1]);
	j->pid = pid;
	j->in_fd = in[1];
	j->out_fd = out[0];
	j->err_fd = err[0];
	set_nonblock(j->in_fd);
	set_nonblock(j->out_fd);
	set_nonblock(j->err_fd);
	return;
fail:
	for (int i = 0; i < 2; i++) {
		if (in[i] >= 0)
			close(in[i]);
		if (out[i] >= 0)
			close(out[i]);
		if (err[i] >= 0)
			close(err[i]);
	}
	/* Reported as a shell reports what it could not run: on stderr, then exit code 126. */
	console_say("%s: %.*s", c->peer, (int)strlen(msg) - 1, msg);
	{
		uint8_t payload[FRAME_EXIT_BYTES];

		conn_send(c, FRAME_STDERR, msg, strlen(msg));
		frame_exit_encode(FRAME_EXIT_CODE, 126, payload);
		conn_send(c, FRAME_EXIT, payload, sizeof(payload));
	}
}

/* Live TCP peers in one pool: authenticated, or still to authenticate (or being refused). */
static size_t count_peers(const struct service *s, bool authed)
{
	size_t n = 0;

	for (size_t i = 0; i < s->n_conns; i++) {
		const struct conn *c = s->conns[i];

		if (!c->control && !c->dead && (c->authed && !c->closing) == authed)
			n++;
	}
	return n;
}

static void begin_power_off(struct service *s, struct conn *by)
{
	s->power_off = true;
	s->shutdown_by = by;
}

/* Handles one frame of an authenticated (or authenticating) peer; a non-NULL result is the
 * reason the peer is refused and dropped. */
static const char *handle_frame(struct service *s, struct conn *c, const struct frame *f)
{
	struct job *j = &c->job;
	struct frame_exec *e = NULL;
	uint8_t version[4];
	uint32_t sig;

	/* The boot sequence took the one SETUP before this service started (control.h). Another
	 * on the control port is ignored, not answered: a host program that sends SETUP on
	 * every connection (vmhpc-exec --setup, retrying while a guest boots) skips to the next
	 * READY, and an ERROR after it would read as the answer to its HELLO. */
	if (f->type == FRAME_SETUP && !c->control)
		return "refused: SETUP is accepted on the control port only";
	if (f->type == FRAME_SETUP) {
		say_peer(c->peer, "SETUP is taken once, at boot; ignored this one");
		return NULL;
	}
	if (c->control && f->type == FRAME_HELLO)
		control_hello(c);
	if (!c->authed) {
		if (f->type != FRAME_HELLO)
			return "refused: the first frame must be HELLO with the token";
		if (!s->have_token)
			return "refused: this guest has no token (no SETUP from the host)";
		if (!frame_token_equal(f->payload, s->token))
			return "refused: wrong token";
		if (!c->control && count_peers(s, true) >= MAX_AUTHED)
			return "refused: too many connections";
		c->authed = true;
		c->deadline_ms = 0;
		frame_put_u32(version, FRAME_PROTO_VERSION);
		conn_send(c, FRAME_WELCOME, version, sizeof(version));
		return NULL;
	}
	switch (f->type) {
	case FRAME_EXEC:
		if (j->pid > 0)
			return "EXEC while a command runs on this connection";
		if (frame_exec_decode(f->payload, f->len, &e) < 0)
			return "malformed EXEC request";
		job_start(s, c, e);
		frame_exec_free(e);
		return NULL;
	case FRAME_STDIN:
		/* Input racing the command's end is dropped, as a pipe to a dead reader would. */
		if (j->pid > 0 && j->in_fd >= 0 && !j->in_eof &&
		    frame_buf_append(&j->in, f->payload, f->len) < 0)
			return "out of memory for stdin";
		return NULL;
	case FRAME_STDIN_EOF:
		if (j->pid > 0)
			j->in_eof = true;
		return NULL;
	case FRAME_SIGNAL:
		sig = frame_get_u32(f->payload);
		if (sig == 0 || sig > 64)
			return "SIGNAL with a signal number outside 1..64";
		if (j->pid > 0 && !j->reaped)
			kill(-j->pid, (int)sig);
		return NULL;
	case FRAME_INFO:
		if (f->len != 0)
			return "INFO request with a payload";
		send_info(c, FRAME_INFO, s->job_cgroup);
		return NULL;
	case FRAME_SHUTDOWN:
		console_say("%s: shutdown requested", c->peer);
		begin_power_off(s, c);
		return NULL;
	default:
		return "unexpected frame type from a client";
	}
}

/* Reads what the peer sent and handles every whole frame. */
static void conn_read(struct service *s, struct conn *c, uint8_t *buf)
{
	ssize_t n = read(c->fd, buf, READ_CHUNK);
	const char *msg;
	size_t pos = 0;

	if (n < 0) {
		if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
			return;
		if (!c->closing)
			console_say("%s: %s", c->peer, strerror(errno));
		c->dead = true;
		return;
	}
	if (n == 0) {
		/* EOF (on the control port: the host disconnected). Inside a frame, that is a
		 * truncated frame: worth a line on the console; between frames, a normal end. */
		if (!c->closing && frame_decoder_partial(c->dec))
			say_peer(c->peer, "connection ended inside a frame");
		c->dead = true;
		return;
	}
	if (c->closing)
		return; /* drained, not read: the stream is past resynchronizing */
	while (pos < (size_t)n && !c->closing && !c->dead && !s->power_off) {
		struct frame f;
		size_t used;
		int r = frame_decoder_feed(c->dec, buf + pos, (size_t)n - pos, &used, &f);

		pos += used;
		if (r < 0) {
			char why[96];

			snprintf(why, sizeof(why), "bad frame stream (%s); closing",
				 r == -EBADMSG	  ? "bad magic or flags"
				 : r == -EMSGSIZE ? "frame too large"
				 : r == -EPROTO	  ? "unknown type or bad length"
						  : strerror(-r));
			conn_refuse(c, why);
			return;
		}
		if (r == 0)
			break;
		msg = handle_frame(s, c, &f);
		if (msg)
			conn_refuse(c, msg);
	}
}

static void conn_write(struct conn *c)
{
	int r = frame_buf_flush(&c->out, c->fd);

	if (r < 0) {
		if (!c->closing && r != -EPIPE && r != -ECONNRESET)
			console_say("%s: %s", c->peer, strerror(-r));
		c->dead = true;
	}
}

static void job_read(struct conn *c, int *fd, enum frame_type type, uint8_t *buf)
{
	ssize_t n = read(*fd, buf, READ_CHUNK);

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		close(*fd);
		*fd = -1;
		return;
	}
	conn_send(c, type, buf, (size_t)n);
}

static void job_write_stdin(struct job *j)
{
	int r = frame_buf_flush(&j->in, j->in_fd);

	if (r < 0) {
		/* EPIPE: the command closed its stdin; the rest has no reader. */
		close(j->in_fd);
		j->in_fd = -1;
		frame_buf_clear(&j->in);
	}
}

/* Work a conn needs between polls: closing stdin, reporting EXIT, deadlines. */
static void conn_tick(struct conn *c, int64_t now)
{
	struct job *j = &c->job;

	if (j->pid > 0) {
		if (j->in_fd >= 0 && j->in_eof && j->in.len == 0) {
			close(j->in_fd);
			j->in_fd = -1;
		}
		/* Background children may hold the pipes forever: EXIT is not held back by them. */
		if (j->reaped && now - j->reaped_ms >= LINGER_MS) {
			if (j->out_fd >= 0)
				close(j->out_fd);
			if (j->err_fd >= 0)
				close(j->err_fd);
			j->out_fd = j->err_fd = -1;
		}
		if (j->reaped && j->out_fd < 0 && j->err_fd < 0) {
			uint8_t payload[FRAME_EXIT_BYTES];

			if (WIFSIGNALED(j->wstatus))
				frame_exit_encode(FRAME_EXIT_SIGNAL, (uint32_t)WTERMSIG(j->wstatus),
						  payload);
			else
				frame_exit_encode(FRAME_EXIT_CODE,
						  (uint32_t)WEXITSTATUS(j->wstatus), payload);
			job_reset(j);
			conn_send(c, FRAME_EXIT, payload, sizeof(payload));
		}
	}
	if (!c->authed && !c->closing && c->deadline_ms && now >= c->deadline_ms)
		conn_refuse(c, "refused: no HELLO in time");
	if (c->closing) {
		/* FIN right after the ERROR: the peer reads it, then EOF, not a reset. */
		if (c->out.len == 0 && !c->wr_shut) {
			shutdown(c->fd, SHUT_WR);
			c->wr_shut = true;
		}
		if (now >= c->deadline_ms)
			c->dead = true;
	}
}

static void reap(struct service *s)
{
	int wstatus;
	pid_t pid;

	while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
		for (size_t i = 0; i < s->n_conns; i++) {
			struct job *j = &s->conns[i]->job;

			if (j->pid == pid && !j->reaped) {
				j->reaped = true;
				j->wstatus = wstatus;
				j->reaped_ms = time_now_ms();
			}
		}
		/* A rank that died holding the VM's slot: its peers get an error at once. */
		shmdev_reap(s->shm);
	}
}

static void add_conn(struct service *s, struct conn *c)
{
	s->conns[s->n_conns++] = c;
}

/* Tells a peer why it goes, without queueing: for peers that get no slot (the message is
 * small enough for any socket buffer; if not, it is lost). */
static void refuse_now(int fd, const char *peer, const char *msg)
{
	uint8_t frame[FRAME_HEADER_BYTES + 64];
	size_t len = strlen(msg) < 64 ? strlen(msg) : 64;

	say_peer(peer, msg);
	frame_header_write(frame, FRAME_ERROR, (uint32_t)len);
	memcpy(frame + FRAME_HEADER_BYTES, msg, len);
	(void)frame_send(fd, frame, FRAME_HEADER_BYTES + len);
}

static void accept_peer(struct service *s)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char addr[INET6_ADDRSTRLEN] = "?", peer[64];
	int one = 1, fd;
	struct conn *c;

	fd = accept4(s->listen_fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &sin->sin_addr, addr, sizeof(addr));
		snprintf(peer, sizeof(peer), "%s:%u", addr, ntohs(sin->sin_port));
	} else {
		snprintf(peer, sizeof(peer), "peer");
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (count_peers(s, false) >= MAX_UNAUTH) {
		/* The pool of peers yet to authenticate is full: the oldest goes. Refusing the
		 * newcomer instead would let a few idle connections, renewed every
		 * AUTH_TIMEOUT_MS, keep every real client out; a real client sends HELLO at once
		 * and leaves this pool within a turn of the loop. */
		struct conn *oldest = NULL;

		for (size_t i = 0; i < s->n_conns; i++) {
			struct conn *o = s->conns[i];

			if (!o->control && !o->dead && (!o->authed || o->closing) &&
			    (!oldest || o->accepted_ms < oldest->accepted_ms))
				oldest = o;
		}
		if (oldest) {
			if (!oldest->closing)
				refuse_now(oldest->fd, oldest->peer,
					   "refused: too many unauthenticated connections");
			oldest->dead = true; /* freed next turn: the poll set points at it */
		}
	}
	if (s->n_conns >= CONN_SLOTS) { /* the pools keep this from happening; a last bound */
		refuse_now(fd, peer, "refused: too many connections");
		close(fd);
		return;
	}
	c = conn_new(fd, false, peer, s->auth_timeout_ms);
	if (!c) {
		close(fd);
		return;
	}
	add_conn(s, c);
}

/* The port reports POLLHUP while no host program holds its other end; a host connecting
 * gets READY first, then is served like a TCP peer. */
static void control_check(struct service *s, int64_t now)
{
	struct pollfd p;
	char peer[80];

	if (s->control_fd < 0 || s->control || now < s->control_next_check)
		return;
	s->control_next_check = now + CONTROL_POLL_MS;
	p = (struct pollfd){.fd = s->control_fd, .events = POLLIN | POLLOUT};
	if (poll(&p, 1, 0) < 0 || (p.revents & (POLLHUP | POLLERR | POLLNVAL)))
		return;
	snprintf(peer, sizeof(peer), "control port %.40s", s->control_path);
	s->control = conn_new(s->control_fd, true, peer, s->auth_timeout_ms);
	if (!s->control)
		return;
	/* The host waits for READY, so a connection is never lost in boot's races; the
	 * handshake that follows is the same as on TCP. */
	s->control->deadline_ms = 0;
	send_info(s->control, FRAME_READY, false);
	add_conn(s, s->control);
}

static int listen_tcp(uint16_t port, bool loopback_only, uint16_t *ret_port)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
	int one = 1, fd;

	sin.sin_addr.s_addr = htonl(loopback_only ? INADDR_LOOPBACK : INADDR_ANY);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0 || listen(fd, 64) < 0) {
		int r = -errno;

		close(fd);
		return r;
	}
	*ret_port = port;
	if (getsockname(fd, (struct sockaddr *)&sin, &(socklen_t){sizeof(sin)}) == 0)
		*ret_port = ntohs(sin.sin_port);
	return fd;
}

/* Kills every command, syncs, acknowledges to whoever asked, powers off. A PID 1 kills every
 * process; the development mode (not PID 1) only the groups it started. */
static void __attribute__((noreturn)) power_off(struct service *s)
{
	int64_t end;

	console_say("powering off");
	for (int round = 0; round < 2; round++) {
		int sig = round == 0 ? SIGTERM : SIGKILL;

		for (size_t i = 0; i < s->n_conns; i++)
			if (s->conns[i]->job.pid > 0 && !s->conns[i]->job.reaped)
				kill(-s->conns[i]->job.pid, sig);
		if (s->pid1)
			kill(-1, sig);
		/* Give SIGTERM a moment; stop early once every child is gone. */
		end = time_now_ms() + (round == 0 ? 500 : 1000);
		while (time_now_ms() < end) {
			pid_t pid = waitpid(-1, NULL, WNOHANG);

			if (pid < 0 && errno == ECHILD)
				break;
			if (pid <= 0)
				console_sleep_ms(5);
		}
	}
	sync();
	if (s->shutdown_by) {
		struct conn *c = s->shutdown_by;

		conn_send(c, FRAME_SHUTDOWN, NULL, 0);
		end = time_now_ms() + 1000;
		while (c->out.len && time_now_ms() < end) {
			struct pollfd p = {.fd = c->fd, .events = POLLOUT};

			if (frame_buf_flush(&c->out, c->fd) < 0)
				break;
			if (c->out.len)
				poll(&p, 1, 50);
		}
	}
	if (!s->pid1)
		exit(0);
	reboot(RB_POWER_OFF);
	for (;;)
		pause();
}

enum role {
	ROLE_SIGNAL,
	ROLE_LISTEN,
	ROLE_CONTROL_WAKE,
	ROLE_PEER,
	ROLE_STDIN,
	ROLE_STDOUT,
	ROLE_STDERR
};

/* One entry of the poll set: what the fd is to us. */
struct watch {
	enum role role;
	struct conn *c;
};

#define POLL_SET_MAX (3 + CONN_SLOTS * 4)

/* Frees the connections that ended (the control port's slot reopens for the host). */
static void drop_dead_conns(struct service *s, int64_t now)
{
	for (size_t i = 0; i < s->n_conns;) {
		struct conn *c = s->conns[i];

		if (!c->dead) {
			i++;
			continue;
		}
		if (c == s->control) {
			s->control = NULL;
			s->control_next_check = now + CONTROL_POLL_MS;
		}
		if (c == s->shutdown_by)
			s->shutdown_by = NULL;
		conn_free(c);
		s->conns[i] = s->conns[--s->n_conns];
	}
}

/* The poll set, rebuilt from the state every turn: backpressure is then one condition per
 * fd (do not read a command's output while its peer is behind, do not read a peer while its
 * command is behind on stdin or while it does not read what it asked for). At CONN_SLOTS
 * peers the rebuild costs nothing. Returns how many; *wake (-1: none) is lowered to the
 * next deadline. */
static nfds_t build_poll_set(struct service *s, struct pollfd *pfds, struct watch *what,
			     int64_t *wake)
{
	nfds_t n = 0;

#define WATCH(fd_, ev_, role_, c_)                                                                 \
	do {                                                                                       \
		pfds[n] = (struct pollfd){.fd = (fd_), .events = (short)(ev_)};                    \
		what[n] = (struct watch){.role = (role_), .c = (c_)};                              \
		n++;                                                                               \
	} while (0)
	WATCH(s->sig_fd, POLLIN, ROLE_SIGNAL, NULL);
	if (s->listen_fd >= 0)
		WATCH(s->listen_fd, POLLIN, ROLE_LISTEN, NULL);
	if (s->control_ep >= 0 && !s->control)
		WATCH(s->control_ep, POLLIN, ROLE_CONTROL_WAKE, NULL);
	for (size_t i = 0; i < s->n_conns; i++) {
		struct conn *c = s->conns[i];
		struct job *j = &c->job;
		short ev = c->out.len ? POLLOUT : 0;

		/* A peer that does not read what it asked for (INFO after INFO) is not read
		 * either: what we queue for it stays bounded. */
		if (!(j->pid > 0 && j->in.len >= STDIN_HIGH_WATER) && c->out.len < OUT_HIGH_WATER)
			ev |= POLLIN;
		WATCH(c->fd, ev, ROLE_PEER, c);
		if (j->in_fd >= 0 && j->in.len > 0)
			WATCH(j->in_fd, POLLOUT, ROLE_STDIN, c);
		if (c->out.len < OUT_HIGH_WATER) {
			if (j->out_fd >= 0)
				WATCH(j->out_fd, POLLIN, ROLE_STDOUT, c);
			if (j->err_fd >= 0)
				WATCH(j->err_fd, POLLIN, ROLE_STDERR, c);
		}
		if (c->deadline_ms && (*wake < 0 || c->deadline_ms < *wake))
			*wake = c->deadline_ms;
		if (j->reaped && (*wake < 0 || j->reaped_ms + LINGER_MS < *wake))
			*wake = j->reaped_ms + LINGER_MS;
	}
#undef WATCH
	if (!s->control && s->control_fd >= 0 && (*wake < 0 || s->control_next_check < *wake))
		*wake = s->control_next_check;
	return n;
}

static void handle_signals(struct service *s)
{
	struct signalfd_siginfo si;

	while (read(s->sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
		if (si.ssi_signo == SIGCHLD)
			reap(s);
		else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT ||
			 si.ssi_signo == SIGPWR || si.ssi_signo == SIGUSR2)
			begin_power_off(s, NULL);
	}
}

/* Acts on what poll() found ready. */
static void dispatch(struct service *s, const struct pollfd *pfds, const struct watch *what,
		     nfds_t n, int64_t now)
{
	static uint8_t buf[READ_CHUNK];

	for (nfds_t i = 0; i < n; i++) {
		struct conn *c = what[i].c;
		short rev = pfds[i].revents;

		if (!rev || (c && c->dead))
			continue;
		switch (what[i].role) {
		case ROLE_SIGNAL:
			handle_signals(s);
			break;
		case ROLE_LISTEN:
			accept_peer(s);
			break;
		case ROLE_CONTROL_WAKE: {
			struct epoll_event ev[4];

			/* Consume the edge; control_check looks at the port next turn. */
			while (epoll_wait(s->control_ep, ev, 4, 0) > 0)
				;
			s->control_next_check = now;
			break;
		}
		case ROLE_PEER:
			if (rev & POLLOUT)
				conn_write(c);
			if ((rev & (POLLIN | POLLHUP | POLLERR)) && !c->dead)
				conn_read(s, c, buf);
			break;
		case ROLE_STDIN:
			job_write_stdin(&c->job);
			break;
		case ROLE_STDOUT:
			job_read(c, &c->job.out_fd, FRAME_STDOUT, buf);
			break;
		case ROLE_STDERR:
			job_read(c, &c->job.err_fd, FRAME_STDERR, buf);
			break;
		}
	}
}

/* True while a command the service started runs. */
static bool jobs_running(const struct service *s)
{
	for (size_t i = 0; i < s->n_conns; i++)
		if (s->conns[i]->job.pid > 0)
			return true;
	return false;
}

int service_step(struct service *s, int timeout_ms)
{
	struct pollfd pfds[POLL_SET_MAX];
	struct watch what[POLL_SET_MAX];
	int64_t now = time_now_ms(), wake = timeout_ms < 0 ? -1 : now + timeout_ms;
	nfds_t n;
	int timeout;

	control_check(s, now);
	for (size_t i = 0; i < s->n_conns; i++)
		conn_tick(s->conns[i], now);
	drop_dead_conns(s, now);
	if (s->pid1 && jobs_running(s)) {
		if (now >= s->next_sweep_ms) {
			int killed = orphans_sweep(&s->orphans, getpid(), now);

			if (killed > 0)
				console_say(
				    "killed %d process%s the job's finished ranks left running",
				    killed, killed == 1 ? "" : "es");
			s->next_sweep_ms = now + SWEEP_MS;
		}
		if (wake < 0 || s->next_sweep_ms < wake)
			wake = s->next_sweep_ms;
	}
	if (s->power_off)
		return 1;
	n = build_poll_set(s, pfds, what, &wake);
	timeout = wake < 0 ? -1 : wake <= now ? 0 : (int)(wake - now);
	if (poll(pfds, n, timeout) < 0) {
		if (errno != EINTR)
			console_say("poll: %s", strerror(errno));
		return 0;
	}
	dispatch(s, pfds, what, n, now);
	return s->power_off ? 1 : 0;
}

void service_run(struct service *s)
{
	while (service_step(s, -1) == 0)
		;
	power_off(s);
}

int service_new(const struct service_config *cfg, struct service **ret_service)
{
	struct service *s = calloc(1, sizeof(*s));
	sigset_t mask;

	if (!s)
		return -ENOMEM;
	s->pid1 = cfg->pid1;
	s->job_cgroup = cfg->job_cgroup;
	s->shm = cfg->shm;
	s->listen_fd = -1;
	s->control_fd = -1;
	s->control_ep = -1;
	s->auth_timeout_ms = cfg->auth_timeout_ms > 0 ? cfg->auth_timeout_ms : AUTH_TIMEOUT_MS;
	s->have_token = cfg->have_token;
	if (s->have_token) {
		memcpy(s->token, cfg->token, sizeof(s->token));
		memcpy(s->token_env, "VMHPC_TOKEN=", 12);
		for (size_t i = 0; i < FRAME_TOKEN_BYTES; i++)
			snprintf(s->token_env + 12 + 2 * i, 3, "%02x", s->token[i]);
	}
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGPWR);
	sigaddset(&mask, SIGUSR2);
	s->sig_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (s->sig_fd < 0) {
		int r = -errno;

		console_say("signalfd: %s", strerror(-r));
		free(s);
		return r;
	}
	s->listen_fd = listen_tcp(cfg->port, cfg->loopback_only, &s->port);
	if (s->listen_fd < 0)
		console_say("listening on TCP port %u: %s", cfg->port, strerror(-s->listen_fd));
	if (cfg->control_fd >= 0) {
		/* The port reports POLLHUP without pause while no host program holds its other
		 * end, so it cannot sit in the poll set then. The driver wakes its wait queue when
		 * the host connects: an edge-triggered epoll (itself in the poll set) turns that
		 * wake-up into an event. */
		struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET};

		s->control_fd = cfg->control_fd;
		snprintf(s->control_path, sizeof(s->control_path), "%s",
			 cfg->control_name ? cfg->control_name : "control");
		s->control_ep = epoll_create1(EPOLL_CLOEXEC);
		if (s->control_ep >= 0 &&
		    epoll_ctl(s->control_ep, EPOLL_CTL_ADD, s->control_fd, &ev) < 0) {
			close(s->control_ep);
			s->control_ep = -1;
		}
	}
	*ret_service = s;
	return 0;
}

struct service *service_free(struct service *s)
{
	if (!s)
		return NULL;
	for (size_t i = 0; i < s->n_conns; i++)
		conn_free(s->conns[i]);
	if (s->control_ep >= 0)
		close(s->control_ep);
	if (s->control_fd >= 0)
		close(s->control_fd);
	if (s->listen_fd >= 0)
		close(s->listen_fd);
	if (s->sig_fd >= 0)
		close(s->sig_fd);
	explicit_bzero(s->token, sizeof(s->token));
	explicit_bzero(s->token_env, sizeof(s->token_env));
	free(s);
	return NULL;
}

bool service_listening(const struct service *s)
{
	return s->listen_fd >= 0;
}

uint16_t service_port(const struct service *s)
{
	return s->listen_fd >= 0 ? s->port : 0;
}

size_t service_queued_bytes(const struct service *s)
{
	size_t n = 0;

	for (size_t i = 0; i < s->n_conns; i++)
		n += s->conns[i]->out.len;
	return n;
}
