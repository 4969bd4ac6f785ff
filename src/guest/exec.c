/* vmhpc-exec: runs a command in a vmhpc guest through its vmhpc-init exec service. Static,
 * in every image at /usr/bin/vmhpc-exec, so that MPICH's hydra can use it as its ssh:
 *
 *   mpiexec.hydra -launcher ssh -launcher-exec /usr/bin/vmhpc-exec -hosts vm0,vm1 ...
 *
 * runs `vmhpc-exec -x vm1 "/usr/bin/hydra_pmi_proxy" --control-port vm0:PORT ...`: ssh options,
 * the host, then a command line that, as with ssh, a shell on the far side splits (the quotes
 * hydra adds are for that shell). Also for hosts and tests:
 *
 *   vmhpc-exec --token HEX --port N HOST -- PROGRAM ARGS...   (PROGRAM run without a shell)
 *   vmhpc-exec --token HEX --unix SOCKET -- PROGRAM ARGS...   (the virtio-serial control port)
 *   vmhpc-exec --token HEX --unix SOCKET --setup [--share DIR] (--info | -- PROGRAM ...)
 *   vmhpc-exec ... --info HOST | --shutdown HOST
 *
 * Host names are looked up in /etc/hosts by this program itself: static glibc's resolver
 * needs NSS modules an image does not have. Exit status: the command's (128 + signal when it
 * was killed), 255 when vmhpc-exec itself failed, as ssh does. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "guest/client.h"
#include "guest/frame.h"
#include "guest/jobwatch.h"
#include "guest/label.h"
#include "util/cleanup.h"
#include "util/time.h"

#define EXIT_FAILED	   255
#define DEFAULT_PORT	   7000
#define TOKEN_FILE	   "/run/vmhpc/token" /* written by vmhpc-init, 0400 root */
#define DEFAULT_TIMEOUT_MS 10000

static const char *program = "vmhpc-exec";

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", program);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(EXIT_FAILED);
}

static void usage(FILE *out)
{
	fprintf(
	    out,
	    "usage: %s [OPTIONS] [USER@]HOST COMMAND...       run COMMAND with /bin/sh -c (as "
	    "ssh)\n"
	    "       %s [OPTIONS] HOST -- PROGRAM [ARGS...]    run PROGRAM directly\n"
	    "       %s [OPTIONS] --unix SOCKET [-- PROGRAM [ARGS...]]\n"
	    "       %s [OPTIONS] (--info | --shutdown) (HOST | --unix SOCKET)\n"
	    "options:\n"
	    "  --token HEX       the job's token (default: $VMHPC_TOKEN, then %s)\n"
	    "  --port N, -p N    exec service port (default: $VMHPC_EXEC_PORT, vmhpc.exec_port in\n"
	    "                    /proc/cmdline, else %d)\n"
	    "  --unix SOCKET     talk to a guest's control port through QEMU's socket (waits for "
	    "READY)\n"
	    "  --setup           with --unix, first send SETUP (the token, --share): what a "
	    "booting\n"
	    "                    guest waits for; once per boot\n"
	    "  --share DIR       with --setup: the job folder the guest mounts (virtiofs tag job)\n"
	    "  --cwd DIR         run there (default: this directory, or / if the guest lacks it)\n"
	    "  --no-env          send no environment (the guest's default PATH and HOME)\n"
	    "  -n                no stdin (the command reads EOF)\n"
	    "  --user UID[:GID]  run as these numeric ids (default: ours; GID defaults to UID)\n"
	    "  --timeout-ms N    for connecting, the handshake, --info and --shutdown (default "
	    "%d)\n"
	    "  --wait-ms N       retry refused or reset connections this long (a booting guest)\n"
	    "  --info            print the guest's memory and uptime\n"
	    "  --shutdown        power the guest off\n"
	    "also: --job-watch HOSTS -- MPIEXEC ..., --count-ranks (guest/jobwatch.h), "
	    "--label-lines -- PROGRAM ... (guest/label.h)\n"
	    "ssh options (-x -X -q -t -T -4 -6 -A -a -C -v ..., -l USER -o OPT -i FILE ...) are "
	    "accepted and ignored.\n",
	    program, program, program, program, TOKEN_FILE, DEFAULT_PORT, DEFAULT_TIMEOUT_MS);
}

/* The token the guest's vmhpc-init wrote for root (exec'd commands have $VMHPC_TOKEN). */
static bool token_file(char *buf, size_t size)
{
	_cleanup_fclose_ FILE *f = fopen(TOKEN_FILE, "re");

	if (!f || !fgets(buf, (int)size, f))
		return false;
	buf[strcspn(buf, "\n")] = '\0';
	return true;
}

/* The value of vmhpc.KEY in the guest's /proc/cmdline, into buf; false when absent. */
static bool cmdline_value(const char *key, char *buf, size_t size)
{
	_cleanup_fclose_ FILE *f = fopen("/proc/cmdline", "re");
	char line[16384], *save = NULL;
	size_t klen = strlen(key);

	if (!f || !fgets(line, sizeof(line), f))
		return false;
	for (char *w = strtok_r(line, " \t\n", &save); w; w = strtok_r(NULL, " \t\n", &save)) {
		if (strncmp(w, "vmhpc.", 6) == 0 && strncmp(w + 6, key, klen) == 0 &&
		    w[6 + klen] == '=') {
			snprintf(buf, size, "%s", w + 7 + klen);
			return true;
		}
	}
	return false;
}

static long parse_number(const char *s, long max, const char *what)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 0 || v > max)
		fail("%s \"%s\" is not a number in 0..%ld", what, s, max);
	return v;
}

/* HOST as an address: a literal, else the first /etc/hosts line naming it. */
static int resolve(const char *host, uint16_t port, struct sockaddr_storage *ss, socklen_t *ret_len)
{
	_cleanup_fclose_ FILE *f = NULL;
	char line[1024];

	memset(ss, 0, sizeof(*ss));
	for (int pass = 0; pass < 2; pass++) {
		const char *addr = host;

		f = pass == 0 ? NULL : fopen("/etc/hosts", "re");
		if (pass == 1 && !f)
			return -errno;
		for (;;) {
			struct sockaddr_in *sin = (struct sockaddr_in *)ss;
			struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

			if (pass == 1) {
				char *save = NULL, *a, *name;
				bool match = false;

				if (!fgets(line, sizeof(line), f))
					break;
				line[strcspn(line, "#\n")] = '\0';
				a = strtok_r(line, " \t", &save);
				if (!a)
					continue;
				while ((name = strtok_r(NULL, " \t", &save)))
					if (strcasecmp(name, host) == 0)
						match = true;
				if (!match)
					continue;
				addr = a;
			}
			if (inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
				sin->sin_family = AF_INET;
				sin->sin_port = htons(port);
				*ret_len = sizeof(*sin);
				return 0;
			}
			if (inet_pton(AF_INET6, addr, &sin6->sin6_addr) == 1) {
				sin6->sin6_family = AF_INET6;
				sin6->sin6_port = htons(port);
				*ret_len = sizeof(*sin6);
				return 0;
			}
			if (pass == 0)
				break;
		}
	}
	return -ENOENT;
}

/* Variables that describe this shell or this machine, not the job: not sent. */
static bool env_forwarded(const char *kv)
{
	static const char *const names[] = {
	    "HOSTNAME",	       "PWD",	  "OLDPWD",	"SHLVL", "_", "VMHPC_TOKEN",
	    "VMHPC_EXEC_PORT", "DISPLAY", "XAUTHORITY", "TMUX"};
	size_t len = strcspn(kv, "=");

	if (strncmp(kv, "SSH_", 4) == 0)
		return false;
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strlen(names[i]) == len && strncmp(kv, names[i], len) == 0)
			return false;
	return true;
}

static char **forwarded_env(void)
{
	extern char **environ;
	size_t n = 0, k = 0;
	char **out;

	while (environ[n])
		n++;
	out = calloc(n + 1, sizeof(*out));
	if (!out)
		fail("out of memory");
	for (size_t i = 0; i < n; i++)
		if (strchr(environ[i], '=') && environ[i][0] != '=' && env_forwarded(environ[i]))
			out[k++] = environ[i];
	return out;
}

/* ssh's command line: the words joined by blanks for the far side's shell to split. */
static char *join_words(char **words, int n)
{
	size_t len = 1;
	char *out, *p;

	for (int i = 0; i < n; i++)
		len += strlen(words[i]) + 1;
	out = malloc(len);
	if (!out)
		fail("out of memory");
	p = out;
	for (int i = 0; i < n; i++) {
		size_t l = strlen(words[i]);

		if (i)
			*p++ = ' ';
		memcpy(p, words[i], l);
		p += l;
	}
	*p = '\0';
	return out;
}

struct target {
	const char *host; /* NULL with unix_path */
	const char *unix_path;
	uint16_t port;
	uint8_t token[FRAME_TOKEN_BYTES];
	bool setup;	   /* send SETUP first (unix_path only) */
	const char *share; /* its job folder, or NULL */
	int timeout_ms;
	int wait_ms;
};

/* Connects and authenticates, retrying refused or reset connections for wait_ms. */
static struct exec_client *open_client(const struct target *t)
{
	int64_t give_up = time_now_ms() + t->wait_ms;
	struct sockaddr_storage ss;
	socklen_t len = 0;
	int r;

	if (t->unix_path) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&ss;

		memset(&ss, 0, sizeof(ss));
		if (strlen(t->unix_path) >= sizeof(sun->sun_path))
			fail("socket path %s is too long", t->unix_path);
		sun->sun_family = AF_UNIX;
		strcpy(sun->sun_path, t->unix_path);
		len = sizeof(*sun);
	} else {
		r = resolve(t->host, t->port, &ss, &len);
		if (r < 0)
			fail("unknown host %s: not an address and not in /etc/hosts", t->host);
	}
	for (;;) {
		struct exec_client *c = NULL;
		int fd = -1;
		/* While a guest boots, QEMU's user network accepts a connection and then waits for
		 * the guest, possibly past its start: short attempts, retried, find it sooner. */
		int attempt_ms = t->wait_ms > 0 && t->timeout_ms > 1000 ? 1000 : t->timeout_ms;
		bool retry;

		if (t->unix_path) {
			/* QEMU's control socket accepts once QEMU runs, and the guest answers on
			 * that very connection when it opens its port. One connection waits: a
			 * second would send SETUP again and could read the rest of frames the
			 * guest began for the first. Only a refused connect (no QEMU yet) is
			 * retried. */
			int64_t left_ms = give_up - time_now_ms();

			attempt_ms = left_ms > t->timeout_ms ? (int)left_ms : t->timeout_ms;
		}

		r = exec_client_connect((struct sockaddr *)&ss, len, attempt_ms, &fd);
		if (r == 0)
			r = exec_client_new(fd, &c);
		if (r < 0 && fd >= 0)
			close(fd);
		if (r == 0 && t->setup)
			r = exec_client_setup(c, t->token, t->share, attempt_ms);
		/* On the control port, skip to the READY that starts our session. */
		if (r == 0 && t->unix_path)
			r = exec_client_resync(c);
		if (r == 0)
			r = exec_client_hello(c, t->token, attempt_ms);
		if (r == 0 && t->unix_path && !exec_client_ready(c))
			r = -EPROTO;
		if (r == 0)
			return c;
		if (r == -EACCES)
			fail("%s refused the token: %s", t->unix_path ? t->unix_path : t->host,
			     c && exec_client_error(c) ? exec_client_error(c) : "no reason given");
		exec_client_free(c);
		retry = r == -ECONNREFUSED || r == -ECONNRESET || r == -ENOENT || r == -EPIPE ||
			(r == -ETIMEDOUT && t->wait_ms > 0);
		if (!retry || time_now_ms() >= give_up) {
			if (t->unix_path)
				fail("connecting to %s: %s", t->unix_path, strerror(-r));
			fail("connecting to %s port %u: %s", t->host, t->port, strerror(-r));
		}
		{
			struct timespec ts = {.tv_nsec = 200 * 1000000L};

			nanosleep(&ts, NULL);
		}
	}
}

/* What the command line asked for, beyond the target. */
struct request {
	const char *token_hex, *port_s, *cwd, *user;
	bool no_env, no_stdin, info, shutdown, direct;
	char **cmd;
	int n_cmd;
};

/* Parses the command line into t and req; exits with usage on bad input. */
static void parse_args(int argc, char **argv, struct target *t, struct request *req)
{
	enum {
		OPT_TOKEN = 256,
		OPT_UNIX,
		OPT_CWD,
		OPT_NO_ENV,
		OPT_TIMEOUT,
		OPT_WAIT,
		OPT_INFO,
		OPT_SHUTDOWN,
		OPT_USER,
		OPT_SETUP,
		OPT_SHARE,
		OPT_HELP
	};
	static const struct option longopts[] = {
	    {"token", required_argument, NULL, OPT_TOKEN},
	    {"port", required_argument, NULL, 'p'},
	    {"unix", required_argument, NULL, OPT_UNIX},
	    {"cwd", required_argument, NULL, OPT_CWD},
	    {"no-env", no_argument, NULL, OPT_NO_ENV},
	    {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
	    {"wait-ms", required_argument, NULL, OPT_WAIT},
	    {"info", no_argument, NULL, OPT_INFO},
	    {"shutdown", no_argument, NULL, OPT_SHUTDOWN},
	    {"user", required_argument, NULL, OPT_USER},
	    {"setup", no_argument, NULL, OPT_SETUP},
	    {"share", required_argument, NULL, OPT_SHARE},
	    {"help", no_argument, NULL, OPT_HELP},
	    {NULL, 0, NULL, 0},
	};
	int opt;

	/* '+': stop at the host, the command's own options are not ours. The short options are
	 * ssh's, so that any ssh command line hydra (or a user) builds is understood. */
	while ((opt = getopt_long(
		    argc, argv,
		    "+46AaCfGgKkMNnqsTtVvXxYyB:b:c:D:E:e:F:I:i:J:L:l:m:O:o:p:Q:R:S:W:w:", longopts,
		    NULL)) != -1) {
		switch (opt) {
		case OPT_TOKEN:
			req->token_hex = optarg;
			break;
		case 'p':
			req->port_s = optarg;
			break;
		case OPT_UNIX:
			t->unix_path = optarg;
			break;
		case OPT_CWD:
			req->cwd = optarg;
			break;
		case OPT_NO_ENV:
			req->no_env = true;
			break;
		case OPT_TIMEOUT:
			t->timeout_ms = (int)parse_number(optarg, INT32_MAX, "--timeout-ms");
			break;
		case OPT_WAIT:
			t->wait_ms = (int)parse_number(optarg, INT32_MAX, "--wait-ms");
			break;
		case OPT_INFO:
			req->info = true;
			break;
		case OPT_SHUTDOWN:
			req->shutdown = true;
			break;
		case OPT_USER:
			req->user = optarg;
			break;
		case OPT_SETUP:
			t->setup = true;
			break;
		case OPT_SHARE:
			t->share = optarg;
			break;
		case 'n':
			req->no_stdin = true;
			break;
		case OPT_HELP:
			usage(stdout);
			exit(0);
		case '?':
			usage(stderr);
			exit(EXIT_FAILED);
		default:
			break; /* an ssh option that means nothing here */
		}
	}

	if (!t->unix_path) {
		const char *host;

		if (optind >= argc)
			fail("no host given (try --help)");
		host = argv[optind++];
		/* ssh's USER@HOST: the user is the request's uid, not part of the name. */
		if (strchr(host, '@'))
			host = strrchr(host, '@') + 1;
		t->host = host;
	}
	if (optind < argc && strcmp(argv[optind], "--") == 0) {
		req->direct = true;
		optind++;
	} else if (t->unix_path && optind > 1 && strcmp(argv[optind - 1], "--") == 0) {
		req->direct = true; /* without a HOST, getopt took the "--" itself */
	}
	req->cmd = argv + optind;
	req->n_cmd = argc - optind;
	if (req->info + req->shutdown + (req->n_cmd > 0) != 1)
		fail("give exactly one of a command, --info or --shutdown (try --help)");
	if (t->setup && !t->unix_path)
		fail("--setup goes with --unix: SETUP is taken on the control port only");
	if (t->share && !t->setup)
		fail("--share goes with --setup");
	if (t->share && (t->share[0] != '/' || strlen(t->share) > FRAME_SETUP_MAX_PATH))
		fail("--share %s is not an absolute path of at most %d bytes", t->share,
		     FRAME_SETUP_MAX_PATH);
}

/* The token and the port: from the options, the environment, then the guest itself. */
static void resolve_credentials(struct target *t, const struct request *req)
{
	char token_buf[256], port_buf[32];
	const char *token_hex = req->token_hex, *port_s = req->port_s;

	if (!token_hex)
		token_hex = getenv("VMHPC_TOKEN");
	if (!token_hex && token_file(token_buf, sizeof(token_buf)))
		token_hex = token_buf;
	if (!token_hex)
		fail("no token: use --token HEX, $VMHPC_TOKEN, or run inside a vmhpc guest (as "
		     "root, or under its exec service)");
	if (frame_token_from_hex(token_hex, t->token) < 0)
		fail("the token is not %d hex digits", 2 * FRAME_TOKEN_BYTES);
	if (!port_s)
		port_s = getenv("VMHPC_EXEC_PORT");
	if (!port_s && cmdline_value("exec_port", port_buf, sizeof(port_buf)))
		port_s = port_buf;
	t->port = port_s ? (uint16_t)parse_number(port_s, 65535, "port") : DEFAULT_PORT;
}

static void print_info(struct exec_client *c, const struct target *t)
{
	struct frame_info fi;
	int r = exec_client_info(c, t->timeout_ms, &fi);

	if (r < 0)
		fail("INFO: %s", strerror(-r));
	printf("mem_total_kb=%llu\nmem_available_kb=%llu\nmem_used_kb=%llu\nuptime_ms=%llu\n",
	       (unsigned long long)fi.mem_total_kb, (unsigned long long)fi.mem_available_kb,
	       (unsigned long long)(fi.mem_total_kb - fi.mem_available_kb),
	       (unsigned long long)fi.uptime_ms);
}

/* Runs the command remotely with our stdio and signals; returns its exit status. */
static int run_command(struct exec_client *c, const struct target *t, const struct request *rq)
{
	static const char *no_env_list[] = {NULL};
	_cleanup_free_ char *line = NULL;
	_cleanup_free_ char **env = NULL;
	_cleanup_close_ int sig_fd = -1;
	/* "--": a line starting with '-' is a command, not an option of the shell. */
	char *shell_argv[] = {"/bin/sh", "-c", "--", NULL, NULL};
	char cwd_buf[PATH_MAX];
	struct frame_exec req = {.uid = getuid(), .gid = getgid()};
	struct exec_client_io io = {.stdin_fd = rq->no_stdin ? -1 : STDIN_FILENO,
				    .stdout_fd = STDOUT_FILENO,
				    .stderr_fd = STDERR_FILENO};
	sigset_t mask;
	int r, status = 0;

	if (rq->user) {
		/* Numeric only: the guest's /etc/passwd need not know the user. */
		char uid_s[16], *colon = strchr(rq->user, ':');
		size_t n = colon ? (size_t)(colon - rq->user) : strlen(rq->user);

		if (n == 0 || n >= sizeof(uid_s))
			fail("--user \"%s\" is not UID[:GID]", rq->user);
		memcpy(uid_s, rq->user, n);
		uid_s[n] = '\0';
		req.uid = (uint32_t)parse_number(uid_s, INT32_MAX, "--user UID");
		req.gid =
		    colon ? (uint32_t)parse_number(colon + 1, INT32_MAX, "--user GID") : req.uid;
	}
	if (rq->direct) {
		req.argv = rq->cmd;
	} else {
		line = join_words(rq->cmd, rq->n_cmd);
		shell_argv[3] = line;
		req.argv = shell_argv;
	}
	if (!rq->no_env)
		env = forwarded_env();
	req.envp = env ? env : (char **)no_env_list;
	if (rq->cwd) {
		req.cwd = (char *)rq->cwd;
	} else if (getcwd(cwd_buf, sizeof(cwd_buf))) {
		req.cwd = cwd_buf;
		req.flags |= FRAME_EXEC_CWD_OPTIONAL;
	}
	/* The signals a terminal or a launcher sends us go to the remote command. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGHUP);
	sigaddset(&mask, SIGQUIT);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGUSR2);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	sig_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	io.signal_fd = sig_fd;
	r = exec_client_run(c, &req, &io, -1, &status);
	if (r == -EPIPE)
		return 128 + SIGPIPE;
	if (r == -E2BIG)
		fail("the command line and environment are over the %u KiB a request holds; try "
		     "--no-env",
		     FRAME_MAX_PAYLOAD / 1024);
	if (r < 0)
		fail("running the command on %s: %s%s%s", t->unix_path ? t->unix_path : t->host,
		     strerror(-r), exec_client_error(c) ? ": " : "",
		     exec_client_error(c) ? exec_client_error(c) : "");
	return status;
}

int main(int argc, char **argv)
{
	struct target t = {.timeout_ms = DEFAULT_TIMEOUT_MS};
	struct request req = {0};
	struct exec_client *c;
	int status = 0, r;

	/* The job watch's two modes are whole programs of their own (guest/jobwatch.h). */
	if (argc > 1 && strcmp(argv[1], "--job-watch") == 0)
		return jobwatch_main(argc - 1, argv + 1);
	if (argc == 2 && strcmp(argv[1], "--count-ranks") == 0)
		return jobwatch_count_ranks_main();
	if (argc > 1 && strcmp(argv[1], "--label-lines") == 0)
		return label_main(argc - 1, argv + 1);
	parse_args(argc, argv, &t, &req);
	resolve_credentials(&t, &req);
	/* Writes to a closed stdout must fail with EPIPE (then the command is ended), not kill
	 * us before the remote side hears of it. */
	signal(SIGPIPE, SIG_IGN);
	c = open_client(&t);
	if (req.info) {
		print_info(c, &t);
	} else if (req.shutdown) {
		r = exec_client_shutdown(c, t.timeout_ms);
		if (r < 0)
			fail("SHUTDOWN: %s", strerror(-r));
	} else {
		status = run_command(c, &t, &req);
	}
	exec_client_free(c);
	return status;
}
