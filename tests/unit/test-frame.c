/* Tests for the exec protocol's frames: round trips of every type, any split of a stream,
 * rejection of bad headers, the EXEC payload's bounds, and a fuzz loop over random and
 * mutated streams (fixed seed, so a failure reproduces). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "guest/client.h"
#include "guest/frame.h"
#include "util/cleanup.h"

/* A small deterministic generator (xorshift64*): the same streams on every run and libc. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static size_t rnd_below(size_t n)
{
	return n ? (size_t)(rnd() % n) : 0;
}

/* A valid payload for each type (direction-specific INFO takes both forms elsewhere). */
static size_t sample_payload(enum frame_type type, uint8_t *out, size_t cap)
{
	struct frame_info info = {.mem_total_kb = 1000, .mem_available_kb = 500, .uptime_ms = 1234};
	size_t n;

	switch (type) {
	case FRAME_HELLO:
		for (size_t i = 0; i < FRAME_TOKEN_BYTES; i++)
			out[i] = (uint8_t)i;
		return FRAME_TOKEN_BYTES;
	case FRAME_WELCOME:
		frame_put_u32(out, FRAME_PROTO_VERSION);
		return 4;
	case FRAME_SIGNAL:
		frame_put_u32(out, 15);
		return 4;
	case FRAME_EXEC: {
		char *argv[] = {"/bin/echo", "hi", NULL}, *envp[] = {"A=1", NULL};
		struct frame_exec e = {.argv = argv, .envp = envp, .cwd = "/tmp"};
		uint8_t *data;

		assert_int_equal(frame_exec_encode(&e, &data, &n), 0);
		assert_true(n <= cap);
		memcpy(out, data, n);
		free(data);
		return n;
	}
	case FRAME_EXIT:
		frame_exit_encode(FRAME_EXIT_SIGNAL, 9, out);
		return FRAME_EXIT_BYTES;
	case FRAME_INFO:
	case FRAME_READY:
		return frame_info_encode(&info, out);
	case FRAME_STDIN_EOF:
	case FRAME_SHUTDOWN:
		return 0;
	case FRAME_ERROR:
		memcpy(out, "wrong token", 11);
		return 11;
	case FRAME_SETUP: {
		uint8_t token[FRAME_TOKEN_BYTES] = {7};

		assert_true(cap >= FRAME_TOKEN_BYTES + FRAME_SETUP_MAX_PATH);
		assert_int_equal(
		    frame_setup_encode(token, rnd() & 1 ? "/home/u/job" : NULL, out, &n), 0);
		return n;
	}
	default: /* STDIN, STDOUT, STDERR: any bytes */
		n = 1 + rnd_below(cap < 3000 ? cap - 1 : 3000);
		for (size_t i = 0; i < n; i++)
			out[i] = (uint8_t)rnd();
		return n;
	}
}

static void test_type_names(void **state)
{
	assert_string_equal(frame_type_to_string(FRAME_HELLO), "HELLO");
	assert_string_equal(frame_type_to_string(FRAME_STDIN_EOF), "STDIN_EOF");
	assert_string_equal(frame_type_to_string(FRAME_ERROR), "ERROR");
	assert_string_equal(frame_type_to_string(0), "?");
	assert_string_equal(frame_type_to_string(_FRAME_TYPE_MAX), "?");
	assert_string_equal(frame_type_to_string(-1), "?");
}

static void test_round_trip_every_type(void **state)
{
	struct frame_decoder *d = NULL;
	static uint8_t payload[8192];

	assert_int_equal(frame_decoder_new(&d), 0);
	for (int t = 1; t < _FRAME_TYPE_MAX; t++) {
		struct frame_buf b = {0};
		struct frame f;
		size_t len = sample_payload((enum frame_type)t, payload, sizeof(payload)), used;

		assert_int_equal(frame_buf_put(&b, (enum frame_type)t, payload, len), 0);
		assert_int_equal(b.len, FRAME_HEADER_BYTES + len);
		assert_int_equal(b.data[0], 'V');
		assert_int_equal(b.data[1], 'H');
		assert_int_equal(b.data[2], t);
		assert_int_equal(frame_decoder_feed(d, b.data + b.start, b.len, &used, &f), 1);
		assert_int_equal(used, b.len);
		assert_int_equal(f.type, t);
		assert_int_equal(f.flags, 0);
		assert_int_equal(f.len, len);
		if (len)
			assert_memory_equal(f.payload, payload, len);
		assert_false(frame_decoder_partial(d));
		frame_buf_clear(&b);
	}
	/* INFO as a request is empty. */
	{
		struct frame_buf b = {0};
		struct frame f;
		size_t used;

		assert_int_equal(frame_buf_put(&b, FRAME_INFO, NULL, 0), 0);
		assert_int_equal(frame_decoder_feed(d, b.data, b.len, &used, &f), 1);
		assert_int_equal(f.type, FRAME_INFO);
		assert_int_equal(f.len, 0);
		frame_buf_clear(&b);
	}
	frame_decoder_free(d);
}

/* A stream of many frames fed in pieces of the given maximum size (1 = byte by byte). */
static void feed_split(size_t max_piece)
{
	static uint8_t payload[8192];
	struct frame_buf b = {0};
	struct frame_decoder *d = NULL;
	size_t starts[200], lens[200], n = 0, pos = 0, got = 0;
	uint8_t types[200];

	for (size_t i = 0; i < ARRAY_SIZE(types); i++) {
		enum frame_type t = (enum frame_type)(1 + rnd_below(_FRAME_TYPE_MAX - 1));
		size_t len = sample_payload(t, payload, sizeof(payload));

		types[n] = (uint8_t)t;
		starts[n] = b.len;
		lens[n] = len;
		n++;
		assert_int_equal(frame_buf_put(&b, t, payload, len), 0);
	}
	assert_int_equal(frame_decoder_new(&d), 0);
	while (pos < b.len) {
		size_t piece = max_piece == 1 ? 1 : 1 + rnd_below(max_piece), off = 0;

		if (piece > b.len - pos)
			piece = b.len - pos;
		while (off < piece) {
			struct frame f;
			size_t used;
			int r = frame_decoder_feed(d, b.data + pos + off, piece - off, &used, &f);

			assert_true(r >= 0);
			off += used;
			if (r == 1) {
				assert_true(got < n);
				assert_int_equal(f.type, types[got]);
				assert_int_equal(f.len, lens[got]);
				if (f.len)
					assert_memory_equal(
					    f.payload, b.data + starts[got] + FRAME_HEADER_BYTES,
					    f.len);
				got++;
			} else {
				assert_int_equal(off, piece);
			}
		}
		pos += piece;
	}
	assert_int_equal(got, n);
	assert_false(frame_decoder_partial(d));
	frame_decoder_free(d);
	frame_buf_clear(&b);
}

static void test_split_byte_by_byte(void **state)
{
	feed_split(1);
}

static void test_split_random_pieces(void **state)
{
	feed_split(7);
	feed_split(100);
	feed_split(70000);
}

static int feed_all(const uint8_t *data, size_t len, size_t *ret_used)
{
	struct frame_decoder *d = NULL;
	struct frame f;
	int r;

	assert_int_equal(frame_decoder_new(&d), 0);
	r = frame_decoder_feed(d, data, len, ret_used, &f);
	/* Errors are sticky: the stream cannot be trusted after one. */
	if (r < 0) {
		size_t used2;

		assert_int_equal(frame_decoder_feed(d, data, len, &used2, &f), r);
		assert_int_equal(used2, 0);
	}
	frame_decoder_free(d);
	return r;
}

static void test_bad_headers(void **state)
{
	uint8_t h[FRAME_HEADER_BYTES + 32];
	size_t used;

	memset(h, 0, sizeof(h));
	frame_header_write(h, FRAME_HELLO, FRAME_TOKEN_BYTES);
	assert_int_equal(feed_all(h, sizeof(h), &used), 1);

	/* Bad magic is rejected at its first byte, before a whole header arrived. */
	h[0] = 'X';
	assert_int_equal(feed_all(h, 1, &used), -EBADMSG);
	assert_int_equal(used, 1);
	h[0] = 'V';
	h[1] = 'h';
	assert_int_equal(feed_all(h, 2, &used), -EBADMSG);
	h[1] = 'H';
	h[3] = 1; /* flags: none defined */
	assert_int_equal(feed_all(h, sizeof(h), &used), -EBADMSG);
	h[3] = 0;

	/* Unknown types. */
	for (unsigned t = 0; t < 256; t++) {
		if (t >= 1 && t < _FRAME_TYPE_MAX)
			continue;
		h[2] = (uint8_t)t;
		assert_int_equal(feed_all(h, sizeof(h), &used), -EPROTO);
		assert_int_equal(frame_header_check(h, NULL, NULL), -EPROTO);
	}

	/* Oversize, announced before any of it is buffered. */
	frame_header_write(h, FRAME_STDOUT, FRAME_MAX_PAYLOAD + 1);
	assert_int_equal(feed_all(h, FRAME_HEADER_BYTES, &used), -EMSGSIZE);
	assert_int_equal(used, FRAME_HEADER_BYTES);
	frame_header_write(h, FRAME_STDOUT, UINT32_MAX);
	assert_int_equal(feed_all(h, FRAME_HEADER_BYTES, &used), -EMSGSIZE);
	frame_header_write(h, FRAME_STDOUT, FRAME_MAX_PAYLOAD);
	assert_int_equal(frame_header_check(h, NULL, NULL), 0);

	/* Lengths a type never has. */
	frame_header_write(h, FRAME_HELLO, 31);
	assert_int_equal(frame_header_check(h, NULL, NULL), -EPROTO);
	frame_header_write(h, FRAME_HELLO, 200000);
	assert_int_equal(frame_header_check(h, NULL, NULL), -EPROTO);
	frame_header_write(h, FRAME_SHUTDOWN, 1);
	assert_int_equal(frame_header_check(h, NULL, NULL), -EPROTO);
	frame_header_write(h, FRAME_INFO, 5);
	assert_int_equal(frame_header_check(h, NULL, NULL), -EPROTO);
	frame_header_write(h, FRAME_ERROR, FRAME_ERROR_MAX + 1);
	assert_int_equal(frame_header_check(h, NULL, NULL), -EPROTO);
	frame_header_write(h, FRAME_EXEC, 10);
	assert_int_equal(frame_header_check(h, NULL, NULL), -EPROTO);

	/* A payload of more than the limit cannot even be queued. */
	{
		struct frame_buf b = {0};
		uint8_t *big = calloc(1, FRAME_MAX_PAYLOAD + 1);

		assert_non_null(big);
		assert_int_equal(frame_buf_put(&b, FRAME_STDOUT, big, FRAME_MAX_PAYLOAD + 1),
				 -EMSGSIZE);
		assert_int_equal(b.len, 0);
		assert_int_equal(frame_buf_put(&b, FRAME_STDOUT, big, FRAME_MAX_PAYLOAD), 0);
		free(big);
		frame_buf_clear(&b);
	}
}

static void test_truncated(void **state)
{
	struct frame_decoder *d = NULL;
	uint8_t h[FRAME_HEADER_BYTES + 10];
	struct frame f;
	size_t used;

	frame_header_write(h, FRAME_STDOUT, 10);
	memset(h + FRAME_HEADER_BYTES, 'x', 10);
	assert_int_equal(frame_decoder_new(&d), 0);
	assert_false(frame_decoder_partial(d));
	assert_int_equal(frame_decoder_feed(d, h, 3, &used, &f), 0);
	assert_true(frame_decoder_partial(d));
	assert_int_equal(frame_decoder_feed(d, h + 3, 10, &used, &f), 0);
	assert_int_equal(used, 10);
	assert_true(frame_decoder_partial(d));
	assert_int_equal(frame_decoder_feed(d, h + 13, 5, &used, &f), 1);
	assert_false(frame_decoder_partial(d));
	assert_int_equal(frame_decoder_feed(d, h, 0, &used, &f), 0);
	frame_decoder_free(d);
}

static void test_exec_round_trip(void **state)
{
	char *argv[] = {"/bin/sh", "-c", "echo \"$A\"; exit 3", "", NULL};
	char *envp[] = {"A=b c", "EMPTY=", "PATH=/usr/bin:/bin", NULL};
	struct frame_exec e = {.flags = FRAME_EXEC_CWD_OPTIONAL,
			       .uid = 1000,
			       .gid = 100,
			       .cwd = "/home/u",
			       .argv = argv,
			       .envp = envp};
	struct frame_exec *back = NULL;
	uint8_t *data = NULL;
	size_t len;

	assert_int_equal(frame_exec_encode(&e, &data, &len), 0);
	assert_int_equal(frame_exec_decode(data, len, &back), 0);
	assert_int_equal(back->flags, FRAME_EXEC_CWD_OPTIONAL);
	assert_int_equal(back->uid, 1000);
	assert_int_equal(back->gid, 100);
	assert_string_equal(back->cwd, "/home/u");
	assert_int_equal(back->argc, 4);
	assert_int_equal(back->envc, 3);
	for (size_t i = 0; i < 4; i++)
		assert_string_equal(back->argv[i], argv[i]);
	assert_null(back->argv[4]);
	for (size_t i = 0; i < 3; i++)
		assert_string_equal(back->envp[i], envp[i]);
	assert_null(back->envp[3]);
	frame_exec_free(back);

	/* Every proper prefix and one extra byte are malformed. */
	for (size_t cut = 0; cut < len; cut++)
		assert_int_equal(frame_exec_decode(data, cut, &back), -EBADMSG);
	{
		uint8_t *longer = malloc(len + 1);

		memcpy(longer, data, len);
		longer[len] = 0;
		assert_int_equal(frame_exec_decode(longer, len + 1, &back), -EBADMSG);
		free(longer);
	}
	free(data);

	/* No env, no cwd. */
	e.envp = NULL;
	e.cwd = NULL;
	assert_int_equal(frame_exec_encode(&e, &data, &len), 0);
	assert_int_equal(frame_exec_decode(data, len, &back), 0);
	assert_int_equal(back->envc, 0);
	assert_null(back->envp[0]);
	assert_string_equal(back->cwd, "");
	frame_exec_free(back);
	free(data);
}

static void test_exec_bounds(void **state)
{
	char *empty_argv[] = {NULL}, *blank0[] = {"", NULL}, *ok_argv[] = {"true", NULL};
	char *bad_env[] = {"NOEQUALS", NULL}, *bad_env2[] = {"=x", NULL};
	struct frame_exec e = {.argv = ok_argv};
	struct frame_exec *back = NULL;
	uint8_t *data = NULL;
	size_t len;
	char **many;
	char *huge;

	e.argv = empty_argv;
	assert_int_equal(frame_exec_encode(&e, &data, &len), -EINVAL);
	e.argv = NULL;
	assert_int_equal(frame_exec_encode(&e, &data, &len), -EINVAL);
	e.argv = blank0;
	assert_int_equal(frame_exec_encode(&e, &data, &len), -EINVAL);
	e.argv = ok_argv;
	e.envp = bad_env;
	assert_int_equal(frame_exec_encode(&e, &data, &len), -EINVAL);
	e.envp = bad_env2;
	assert_int_equal(frame_exec_encode(&e, &data, &len), -EINVAL);
	e.envp = NULL;
	e.cwd = "relative";
	assert_int_equal(frame_exec_encode(&e, &data, &len), -EINVAL);
	e.cwd = NULL;

	/* Count limits: FRAME_EXEC_MAX_ARGS arguments fit, one more does not. */
	many = calloc(FRAME_EXEC_MAX_ARGS + 2, sizeof(*many));
	for (size_t i = 0; i < FRAME_EXEC_MAX_ARGS + 1; i++)
		many[i] = "a";
	e.argv = many;
	assert_int_equal(frame_exec_encode(&e, &data, &len), -E2BIG);
	many[FRAME_EXEC_MAX_ARGS] = NULL;
	assert_int_equal(frame_exec_encode(&e, &data, &len), 0);
	assert_int_equal(frame_exec_decode(data, len, &back), 0);
	assert_int_equal(back->argc, FRAME_EXEC_MAX_ARGS);
	frame_exec_free(back);
	/* A decoder sees the count field itself: one over the limit is refused. */
	frame_put_u32(data + 12, FRAME_EXEC_MAX_ARGS + 1);
	assert_int_equal(frame_exec_decode(data, len, &back), -EBADMSG);
	frame_put_u32(data + 12, UINT32_MAX);
	assert_int_equal(frame_exec_decode(data, len, &back), -EBADMSG);
	frame_put_u32(data + 12, 0);
	assert_int_equal(frame_exec_decode(data, len, &back), -EBADMSG);
	free(data);
	e.argv = ok_argv;
	e.envp = many; /* "a" has no '=' */
	assert_int_equal(frame_exec_encode(&e, &data, &len), -EINVAL);
	free(many);

	/* Size limit: one string as large as the payload allows, then one byte too large. */
	huge = malloc(FRAME_MAX_PAYLOAD + 1);
	memset(huge, 'x', FRAME_MAX_PAYLOAD);
	{
		size_t fixed = 20 + 4 + 4 + strlen("true") + 4; /* header fields, cwd, argv[0] */
		char *argv2[] = {"true", huge, NULL};

		huge[FRAME_MAX_PAYLOAD - fixed] = '\0';
		e.argv = argv2;
		e.envp = NULL;
		assert_int_equal(frame_exec_encode(&e, &data, &len), -E2BIG); /* over STRING max */
		huge[FRAME_EXEC_MAX_STRING] = '\0';
		assert_int_equal(frame_exec_encode(&e, &data, &len), 0);
		assert_true(len <= FRAME_MAX_PAYLOAD);
		free(data);
		{
			char *argv3[] = {"true", huge, huge, NULL};

			e.argv = argv3;
			assert_int_equal(frame_exec_encode(&e, &data, &len), -E2BIG);
		}
	}
	free(huge);

	/* Decoder-side rules on hand-made payloads. */
	{
		uint8_t p[64];
		size_t n = 0;

#define U32(v) (frame_put_u32(p + n, (v)), n += 4)
#define STR(s) (U32((uint32_t)strlen(s)), memcpy(p + n, (s), strlen(s)), n += strlen(s))
		n = 0;
		U32(0), U32(0), U32(0), U32(1), U32(0), STR(""), STR("ls");
		assert_int_equal(frame_exec_decode(p, n, &back), 0);
		frame_exec_free(back);
		p[3] = 0x80; /* unknown flag */
		assert_int_equal(frame_exec_decode(p, n, &back), -EBADMSG);
		n = 0;
		U32(0), U32(0), U32(0), U32(1), U32(0), STR("rel"), STR("ls");
		assert_int_equal(frame_exec_decode(p, n, &back), -EBADMSG);
		n = 0;
		U32(0), U32(0), U32(0), U32(1), U32(1), STR("/"), STR("ls"), STR("NOEQ");
		assert_int_equal(frame_exec_decode(p, n, &back), -EBADMSG);
		n = 0;
		U32(0), U32(0), U32(0), U32(1), U32(0), STR("/"), STR("l\0s");
		assert_int_equal(frame_exec_decode(p, n, &back), 0); /* strlen: "l" */
		frame_exec_free(back);
		n = 0;
		U32(0), U32(0), U32(0), U32(1), U32(0), STR("/"), U32(3), memcpy(p + n, "l\0s", 3),
		    n += 3;
		assert_int_equal(frame_exec_decode(p, n, &back), -EBADMSG); /* NUL inside */
		n = 0;
		U32(0), U32(0), U32(0), U32(1), U32(0), STR("/"), U32(0xffffffffu);
		assert_int_equal(frame_exec_decode(p, n, &back), -EBADMSG); /* length past end */
		n = 0;
		U32(0), U32(0), U32(0), U32(1), U32(0), STR("/"), STR("");
		assert_int_equal(frame_exec_decode(p, n, &back), -EBADMSG); /* empty argv[0] */
#undef U32
#undef STR
	}
}

static void test_small_codecs(void **state)
{
	struct frame_info in = {.mem_total_kb = 262144,
				.mem_available_kb = 230000,
				.uptime_ms = 2500},
			  out;
	uint8_t b[FRAME_INFO_USAGE_BYTES];
	enum frame_exit_kind kind;
	uint32_t value;
	uint8_t tok[FRAME_TOKEN_BYTES], tok2[FRAME_TOKEN_BYTES];
	char hex[2 * FRAME_TOKEN_BYTES + 2];

	/* READY's length, and an older guest's INFO: no usage. */
	assert_int_equal(frame_info_encode(&in, b), FRAME_INFO_BYTES);
	assert_int_equal(frame_info_decode(b, FRAME_INFO_BYTES, &out), 0);
	assert_int_equal(out.mem_total_kb, 262144);
	assert_int_equal(out.mem_available_kb, 230000);
	assert_int_equal(out.uptime_ms, 2500);
	assert_false(out.has_usage);
	assert_int_equal(frame_info_decode(b, FRAME_INFO_BYTES - 1, &out), -EBADMSG);
	/* INFO with the job's usage. */
	in.has_usage = true;
	in.job_mem_peak_kb = 123456;
	in.oom_kills = 2;
	assert_int_equal(frame_info_encode(&in, b), FRAME_INFO_USAGE_BYTES);
	assert_int_equal(frame_info_decode(b, FRAME_INFO_USAGE_BYTES, &out), 0);
	assert_true(out.has_usage);
	assert_int_equal(out.job_mem_peak_kb, 123456);
	assert_int_equal(out.oom_kills, 2);
	assert_int_equal(out.uptime_ms, 2500);
	assert_int_equal(frame_info_decode(b, FRAME_INFO_USAGE_BYTES - 1, &out), -EBADMSG);
	assert_int_equal(frame_info_decode(b, FRAME_INFO_USAGE_BYTES + 1, &out), -EBADMSG);

	frame_exit_encode(FRAME_EXIT_CODE, 7, b);
	assert_int_equal(frame_exit_decode(b, FRAME_EXIT_BYTES, &kind, &value), 0);
	assert_int_equal(kind, FRAME_EXIT_CODE);
	assert_int_equal(value, 7);
	frame_exit_encode(FRAME_EXIT_SIGNAL, 9, b);
	assert_int_equal(frame_exit_decode(b, FRAME_EXIT_BYTES, &kind, &value), 0);
	assert_int_equal(kind, FRAME_EXIT_SIGNAL);
	assert_int_equal(value, 9);
	frame_exit_encode(FRAME_EXIT_CODE, 256, b);
	assert_int_equal(frame_exit_decode(b, FRAME_EXIT_BYTES, &kind, &value), -EBADMSG);
	frame_exit_encode(FRAME_EXIT_SIGNAL, 0, b);
	assert_int_equal(frame_exit_decode(b, FRAME_EXIT_BYTES, &kind, &value), -EBADMSG);
	frame_exit_encode((enum frame_exit_kind)2, 0, b);
	assert_int_equal(frame_exit_decode(b, FRAME_EXIT_BYTES, &kind, &value), -EBADMSG);

	for (size_t i = 0; i < FRAME_TOKEN_BYTES; i++)
		sprintf(hex + 2 * i, "%02x", (unsigned)(i * 7 + 1) & 0xff);
	assert_int_equal(frame_token_from_hex(hex, tok), 0);
	assert_int_equal(tok[1], 8);
	hex[5] = 'A';
	assert_int_equal(frame_token_from_hex(hex, tok2), 0);
	assert_false(frame_token_equal(tok, tok2));
	memcpy(tok2, tok, sizeof(tok));
	assert_true(frame_token_equal(tok, tok2));
	tok2[FRAME_TOKEN_BYTES - 1] ^= 1;
	assert_false(frame_token_equal(tok, tok2));
	hex[5] = 'g';
	assert_int_equal(frame_token_from_hex(hex, tok2), -EINVAL);
	hex[5] = '0';
	hex[2 * FRAME_TOKEN_BYTES - 1] = '\0';
	assert_int_equal(frame_token_from_hex(hex, tok2), -EINVAL);
	assert_int_equal(frame_token_from_hex("", tok2), -EINVAL);
	assert_int_equal(frame_token_from_hex(NULL, tok2), -EINVAL);
}

static void test_buf_flush(void **state)
{
	_cleanup_close_ int rd = -1, wr = -1;
	struct frame_buf b = {0};
	uint8_t chunk[1000], back[4096];
	int p[2];
	size_t total = 0, drained = 0;

	signal(SIGPIPE, SIG_IGN); /* a write to a pipe without reader must return EPIPE */
	assert_int_equal(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
	rd = p[0];
	wr = p[1];
	memset(chunk, 'z', sizeof(chunk));
	/* More than a pipe holds: flush stops at EAGAIN and resumes after the reader drained. */
	for (int i = 0; i < 200; i++) {
		assert_int_equal(frame_buf_put(&b, FRAME_STDOUT, chunk, sizeof(chunk)), 0);
		total += FRAME_HEADER_BYTES + sizeof(chunk);
	}
	while (b.len > 0 || drained < total) {
		ssize_t n;

		assert_int_equal(frame_buf_flush(&b, wr), 0);
		n = read(rd, back, sizeof(back));
		if (n > 0)
			drained += (size_t)n;
	}
	assert_int_equal(drained, total);
	frame_buf_consume(&b, 5);
	assert_int_equal(b.len, 0);
	close(TAKE_FD(rd));
	assert_int_equal(frame_buf_put(&b, FRAME_SHUTDOWN, NULL, 0), 0);
	assert_int_equal(frame_buf_flush(&b, wr), -EPIPE);
	frame_buf_clear(&b);
}

static void test_setup_codec(void **state)
{
	static uint8_t out[FRAME_TOKEN_BYTES + FRAME_SETUP_MAX_PATH + 1];
	static char path[FRAME_SETUP_MAX_PATH + 2];
	uint8_t token[FRAME_TOKEN_BYTES];
	struct frame_setup got;
	uint8_t hdr[FRAME_HEADER_BYTES];
	size_t len;

	for (size_t i = 0; i < sizeof(token); i++)
		token[i] = (uint8_t)(0xa0 + i);
	assert_int_equal(frame_setup_encode(token, "/home/user/my job", out, &len), 0);
	assert_int_equal(len, FRAME_TOKEN_BYTES + 17);
	assert_int_equal(frame_setup_decode(out, len, &got), 0);
	assert_memory_equal(got.token, token, sizeof(token));
	assert_string_equal(got.share, "/home/user/my job");
	/* No folder: the token alone. */
	assert_int_equal(frame_setup_encode(token, NULL, out, &len), 0);
	assert_int_equal(len, FRAME_TOKEN_BYTES);
	assert_int_equal(frame_setup_decode(out, len, &got), 0);
	assert_string_equal(got.share, "");
	/* The longest path fits, one more byte does not (encoder, decoder and header). */
	memset(path, 'a', sizeof(path) - 1);
	path[0] = '/';
	path[FRAME_SETUP_MAX_PATH] = '\0';
	assert_int_equal(frame_setup_encode(token, path, out, &len), 0);
	assert_int_equal(frame_setup_decode(out, len, &got), 0);
	assert_int_equal(strlen(got.share), FRAME_SETUP_MAX_PATH);
	frame_header_write(hdr, FRAME_SETUP, (uint32_t)len);
	assert_int_equal(frame_header_check(hdr, NULL, NULL), 0);
	frame_header_write(hdr, FRAME_SETUP, (uint32_t)len + 1);
	assert_int_equal(frame_header_check(hdr, NULL, NULL), -EPROTO);
	frame_header_write(hdr, FRAME_SETUP, FRAME_TOKEN_BYTES - 1);
	assert_int_equal(frame_header_check(hdr, NULL, NULL), -EPROTO);
	assert_int_equal(frame_setup_decode(out, len + 1, &got), -EBADMSG);
	assert_int_equal(frame_setup_decode(out, FRAME_TOKEN_BYTES - 1, &got), -EBADMSG);
	path[FRAME_SETUP_MAX_PATH] = 'a';
	path[FRAME_SETUP_MAX_PATH + 1] = '\0';
	assert_int_equal(frame_setup_encode(token, path, out, &len), -EINVAL);
	/* Relative, or a NUL inside. */
	assert_int_equal(frame_setup_encode(token, "home/u", out, &len), -EINVAL);
	assert_int_equal(frame_setup_encode(token, "/home/u", out, &len), 0);
	out[FRAME_TOKEN_BYTES] = 'h';
	assert_int_equal(frame_setup_decode(out, len, &got), -EBADMSG);
	out[FRAME_TOKEN_BYTES] = '/';
	out[FRAME_TOKEN_BYTES + 3] = '\0';
	assert_int_equal(frame_setup_decode(out, len, &got), -EBADMSG);
	assert_string_equal(frame_type_to_string(FRAME_SETUP), "SETUP");
}

/* On the control port a connect that was retried can leave the answer to its earlier HELLO
 * in flight: the client takes the first WELCOME as its own and skips the later one, so the
 * next request (INFO) gets its own answer, not -EPROTO. */
static void test_stale_welcome(void **state)
{
	uint8_t token[FRAME_TOKEN_BYTES] = {1}, welcome[4], info[FRAME_INFO_USAGE_BYTES];
	struct frame_info fi = {.mem_total_kb = 1000,
				.mem_available_kb = 400,
				.has_usage = true,
				.job_mem_peak_kb = 77};
	struct frame_buf b = {0};
	struct exec_client *c = NULL;
	size_t info_len;
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	frame_put_u32(welcome, FRAME_PROTO_VERSION);
	info_len = frame_info_encode(&fi, info);
	/* The old session's READY and WELCOME, then the new session's, then the INFO answer. */
	assert_int_equal(frame_buf_put(&b, FRAME_READY, info, FRAME_INFO_BYTES), 0);
	assert_int_equal(frame_buf_put(&b, FRAME_WELCOME, welcome, 4), 0);
	assert_int_equal(frame_buf_put(&b, FRAME_READY, info, FRAME_INFO_BYTES), 0);
	assert_int_equal(frame_buf_put(&b, FRAME_WELCOME, welcome, 4), 0);
	assert_int_equal(frame_buf_put(&b, FRAME_INFO, info, info_len), 0);
	assert_int_equal(frame_buf_flush(&b, sv[1]), 0);
	frame_buf_clear(&b);
	assert_int_equal(exec_client_new(sv[0], &c), 0);
	assert_int_equal(exec_client_hello(c, token, 1000), 0);
	memset(&fi, 0, sizeof(fi));
	assert_int_equal(exec_client_info(c, 1000, &fi), 0);
	assert_true(fi.has_usage);
	assert_int_equal(fi.job_mem_peak_kb, 77);
	exec_client_free(c);
	close(sv[1]);
}

/* A peer that closed: writing to it is -EPIPE, not SIGPIPE, with SIGPIPE at its default
 * disposition (which would kill this process). Before frame_send, write() did. */
static void test_dead_peer_epipe(void **state)
{
	struct sigaction dfl = {.sa_handler = SIG_DFL}, old;
	uint8_t token[FRAME_TOKEN_BYTES] = {1};
	struct frame_buf b = {0};
	struct exec_client *c = NULL;
	int sv[2];

	assert_int_equal(sigaction(SIGPIPE, &dfl, &old), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	close(sv[1]);
	assert_int_equal(frame_buf_put(&b, FRAME_SHUTDOWN, NULL, 0), 0);
	assert_int_equal(frame_buf_flush(&b, sv[0]), -EPIPE);
	frame_buf_clear(&b);
	assert_int_equal(frame_send(sv[0], "x", 1), -EPIPE);
	/* The client library, as `vmhpc run` uses it. */
	assert_int_equal(exec_client_new(sv[0], &c), 0);
	assert_int_equal(exec_client_setup(c, token, "/job", 1000), -EPIPE);
	assert_int_equal(exec_client_hello(c, token, 1000), -EPIPE);
	exec_client_free(c);
	/* A non-socket still works through write(). */
	{
		int p[2];
		char back[4];

		assert_int_equal(pipe2(p, O_CLOEXEC), 0);
		assert_int_equal(frame_send(p[1], "abc", 3), 3);
		assert_int_equal(read(p[0], back, sizeof(back)), 3);
		close(p[0]);
		close(p[1]);
	}
	assert_int_equal(sigaction(SIGPIPE, &old, NULL), 0);
}

/* Feeds a stream in random pieces; checks that nothing breaks the decoder's contract. */
static void fuzz_one(struct frame_decoder *d, const uint8_t *s, size_t len)
{
	size_t pos = 0;

	while (pos < len) {
		size_t piece = 1 + rnd_below(len - pos < 512 ? len - pos : 512), off = 0;

		while (off < piece) {
			struct frame f;
			size_t used;
			int r = frame_decoder_feed(d, s + pos + off, piece - off, &used, &f);

			assert_true(used <= piece - off);
			if (r < 0) {
				assert_true(r == -EBADMSG || r == -EPROTO || r == -EMSGSIZE);
				return;
			}
			off += used;
			if (r == 0) {
				assert_int_equal(off, piece);
				break;
			}
			assert_true(f.type >= 1 && f.type < _FRAME_TYPE_MAX);
			assert_true(f.len <= FRAME_MAX_PAYLOAD);
			/* Payload decoders take whatever a peer sends, too. */
			if (f.type == FRAME_EXEC) {
				struct frame_exec *e = NULL;

				if (frame_exec_decode(f.payload, f.len, &e) == 0) {
					assert_true(e->argc >= 1 && e->argv[0][0]);
					assert_null(e->argv[e->argc]);
					assert_null(e->envp[e->envc]);
				}
				frame_exec_free(e);
			} else if (f.type == FRAME_EXIT) {
				enum frame_exit_kind k;
				uint32_t v;

				(void)frame_exit_decode(f.payload, f.len, &k, &v);
			} else if (f.type == FRAME_READY) {
				struct frame_info i;

				assert_int_equal(frame_info_decode(f.payload, f.len, &i), 0);
			} else if (f.type == FRAME_SETUP) {
				static struct frame_setup st;

				if (frame_setup_decode(f.payload, f.len, &st) == 0)
					assert_true(st.share[0] == '\0' || st.share[0] == '/');
			}
			if (f.len)
				(void)
				    f.payload[f.len - 1]; /* ASan checks the payload is in bounds */
		}
		pos += piece;
	}
}

static void test_fuzz(void **state)
{
	static uint8_t payload[8192];
	const int rounds = 20000;
	uint8_t *s = malloc(1 << 16);

	assert_non_null(s);
	rng_state = 42;
	for (int round = 0; round < rounds; round++) {
		struct frame_decoder *d = NULL;
		struct frame_buf b = {0};
		size_t len;
		int kind = round % 4;

		assert_int_equal(frame_decoder_new(&d), 0);
		/* A valid stream of a few frames to start from. */
		for (int i = 0, n = 1 + (int)rnd_below(6); i < n; i++) {
			enum frame_type t = (enum frame_type)(1 + rnd_below(_FRAME_TYPE_MAX - 1));
			size_t plen = sample_payload(t, payload, sizeof(payload));

			assert_int_equal(frame_buf_put(&b, t, payload, plen), 0);
		}
		len = b.len < (1 << 16) ? b.len : (1 << 16);
		memcpy(s, b.data + b.start, len);
		frame_buf_clear(&b);
		if (kind == 0) {
			/* Pure noise. */
			len = rnd_below(1 << 16);
			for (size_t i = 0; i < len; i++)
				s[i] = (uint8_t)rnd();
		} else if (kind == 1) {
			/* Flipped bits and bytes. */
			for (size_t i = 0, n = 1 + rnd_below(8); i < n && len; i++) {
				size_t at = rnd_below(len);

				s[at] ^= (uint8_t)(1u << rnd_below(8));
				if (rnd() & 1)
					s[rnd_below(len)] = (uint8_t)rnd();
			}
		} else if (kind == 2) {
			/* Truncated anywhere. */
			len = rnd_below(len + 1);
		} else {
			/* A valid header with a random type and length, then noise. */
			size_t n = rnd_below(2048);

			frame_header_write(s, (enum frame_type)(rnd() & 0xff), (uint32_t)rnd());
			if (rnd() & 1)
				frame_header_write(
				    s, (enum frame_type)(1 + rnd_below(_FRAME_TYPE_MAX)),
				    (uint32_t)rnd_below(FRAME_MAX_PAYLOAD + 100));
			for (size_t i = 0; i < n; i++)
				s[FRAME_HEADER_BYTES + i] = (uint8_t)rnd();
			len = FRAME_HEADER_BYTES + n;
		}
		fuzz_one(d, s, len);
		frame_decoder_free(d);

		/* The EXEC decoder alone, on mutated valid payloads. */
		{
			struct frame_exec *e = NULL;
			size_t plen = sample_payload(FRAME_EXEC, payload, sizeof(payload));

			for (size_t i = 0, n = 1 + rnd_below(4); i < n; i++)
				payload[rnd_below(plen)] = (uint8_t)rnd();
			plen = rnd_below(plen + 1);
			if (frame_exec_decode(payload, plen, &e) == 0)
				assert_non_null(e->argv[0]);
			frame_exec_free(e);
		}
	}
	free(s);
}

/* Issue 16's fuzz target: 10^6 mutated inputs, one frame each (a random type's valid frame,
 * then bit flips, random bytes, a random length, truncation or extension), through the
 * decoder and every payload decoder. Under ASan and LSan in the sanitizer build: no crash,
 * no read out of bounds, no leak. Seeded: the same inputs every run. */
static void test_fuzz_million(void **state)
{
	static uint8_t payload[FRAME_TOKEN_BYTES + FRAME_SETUP_MAX_PATH + 64];
	static uint8_t input[sizeof(payload) + FRAME_HEADER_BYTES + 64];
	size_t frames = 0;

	rng_state = 1000003;
	for (long i = 0; i < 1000000; i++) {
		enum frame_type t = (enum frame_type)(1 + rnd_below(_FRAME_TYPE_MAX - 1));
		size_t plen = sample_payload(t, payload, sizeof(payload));
		size_t len = FRAME_HEADER_BYTES + plen;
		struct frame_decoder *d = NULL;
		struct frame_exec *e = NULL;
		struct frame_info info;
		static struct frame_setup st;
		size_t pos = 0;

		frame_header_write(input, t, (uint32_t)plen);
		memcpy(input + FRAME_HEADER_BYTES, payload, plen);
		switch (rnd_below(5)) {
		case 0: /* bit flips */
			for (size_t k = 0, n = 1 + rnd_below(4); k < n; k++)
				input[rnd_below(len)] ^= (uint8_t)(1u << rnd_below(8));
			break;
		case 1: /* random bytes, mostly in the payload */
			for (size_t k = 0, n = 1 + rnd_below(4); k < n; k++)
				input[rnd_below(len)] = (uint8_t)rnd();
			break;
		case 2: /* a random length in the header */
			frame_put_u32(input + 4, (uint32_t)rnd_below(plen + 64));
			break;
		case 3: /* truncated */
			len = rnd_below(len + 1);
			break;
		default: /* extended with noise */
			for (size_t k = 0, n = rnd_below(64); k < n; k++)
				input[len++] = (uint8_t)rnd();
			break;
		}
		assert_int_equal(frame_decoder_new(&d), 0);
		while (pos < len) {
			struct frame f;
			size_t used;
			int r = frame_decoder_feed(d, input + pos, len - pos, &used, &f);

			assert_true(used <= len - pos);
			pos += used;
			if (r <= 0)
				break;
			frames++;
			/* Every payload decoder on every payload: they must refuse, not trip. */
			if (frame_exec_decode(f.payload, f.len, &e) == 0)
				assert_non_null(e->argv[0]);
			e = frame_exec_free(e);
			(void)frame_info_decode(f.payload, f.len, &info);
			if (frame_setup_decode(f.payload, f.len, &st) == 0)
				assert_true(strlen(st.share) == f.len - FRAME_TOKEN_BYTES);
		}
		frame_decoder_free(d);
	}
	/* The mutations leave many inputs whole: the payload decoders did get work. */
	assert_true(frames > 100000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_type_names),
	    cmocka_unit_test(test_round_trip_every_type),
	    cmocka_unit_test(test_split_byte_by_byte),
	    cmocka_unit_test(test_split_random_pieces),
	    cmocka_unit_test(test_bad_headers),
	    cmocka_unit_test(test_truncated),
	    cmocka_unit_test(test_exec_round_trip),
	    cmocka_unit_test(test_exec_bounds),
	    cmocka_unit_test(test_small_codecs),
	    cmocka_unit_test(test_buf_flush),
	    cmocka_unit_test(test_fuzz),
	    cmocka_unit_test(test_setup_codec),
	    cmocka_unit_test(test_dead_peer_epipe),
	    cmocka_unit_test(test_stale_welcome),
	    cmocka_unit_test(test_fuzz_million),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
