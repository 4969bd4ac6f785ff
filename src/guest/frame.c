/* Frames of the exec protocol: header checks, an incremental decoder, an output queue and
 * the payload codecs. Input comes from peers that may be hostile or broken, so every length
 * is checked before it is used and the decoder never holds more than one frame. libc only:
 * linked statically into vmhpc-init and vmhpc-exec. */
#include "guest/frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/cleanup.h"

static const char *const type_names[_FRAME_TYPE_MAX] = {
    [FRAME_HELLO] = "HELLO",	   [FRAME_WELCOME] = "WELCOME",	    [FRAME_EXEC] = "EXEC",
    [FRAME_STDIN] = "STDIN",	   [FRAME_STDIN_EOF] = "STDIN_EOF", [FRAME_STDOUT] = "STDOUT",
    [FRAME_STDERR] = "STDERR",	   [FRAME_EXIT] = "EXIT",	    [FRAME_SIGNAL] = "SIGNAL",
    [FRAME_SHUTDOWN] = "SHUTDOWN", [FRAME_INFO] = "INFO",	    [FRAME_READY] = "READY",
    [FRAME_ERROR] = "ERROR",	   [FRAME_SETUP] = "SETUP",
};

const char *frame_type_to_string(int type)
{
	if (type <= 0 || type >= _FRAME_TYPE_MAX || !type_names[type])
		return "?";
	return type_names[type];
}

void frame_put_u32(uint8_t out[4], uint32_t v)
{
	out[0] = (uint8_t)(v >> 24);
	out[1] = (uint8_t)(v >> 16);
	out[2] = (uint8_t)(v >> 8);
	out[3] = (uint8_t)v;
}

uint32_t frame_get_u32(const uint8_t in[4])
{
	return (uint32_t)in[0] << 24 | (uint32_t)in[1] << 16 | (uint32_t)in[2] << 8 | in[3];
}

static void put_u64(uint8_t out[8], uint64_t v)
{
	frame_put_u32(out, (uint32_t)(v >> 32));
	frame_put_u32(out + 4, (uint32_t)v);
}

static uint64_t get_u64(const uint8_t in[8])
{
	return (uint64_t)frame_get_u32(in) << 32 | frame_get_u32(in + 4);
}

void frame_header_write(uint8_t out[FRAME_HEADER_BYTES], enum frame_type type, uint32_t len)
{
	out[0] = FRAME_MAGIC0;
	out[1] = FRAME_MAGIC1;
	out[2] = (uint8_t)type;
	out[3] = 0;
	frame_put_u32(out + 4, len);
}

/* Lengths a type's payload may have. Checking them at the header lets a server drop a peer
 * that announces a 256 KiB HELLO before buffering any of it. */
static bool length_fits(enum frame_type type, uint32_t len)
{
	switch (type) {
	case FRAME_HELLO:
		return len == FRAME_TOKEN_BYTES;
	case FRAME_WELCOME:
	case FRAME_SIGNAL:
		return len == 4;
	case FRAME_EXEC:
		return len >= 24;
	case FRAME_STDIN_EOF:
	case FRAME_SHUTDOWN:
		return len == 0;
	case FRAME_EXIT:
		return len == FRAME_EXIT_BYTES;
	case FRAME_INFO:
		return len == 0 || len == FRAME_INFO_BYTES || len == FRAME_INFO_USAGE_BYTES;
	case FRAME_READY:
		return len == FRAME_INFO_BYTES;
	case FRAME_ERROR:
		return len <= FRAME_ERROR_MAX;
	case FRAME_SETUP:
		return len >= FRAME_TOKEN_BYTES && len <= FRAME_TOKEN_BYTES + FRAME_SETUP_MAX_PATH;
	case FRAME_STDIN:
	case FRAME_STDOUT:
	case FRAME_STDERR:
		return true;
	default:
		return false;
	}
}

int frame_header_check(const uint8_t hdr[FRAME_HEADER_BYTES], enum frame_type *ret_type,
		       uint32_t *ret_len)
{
	uint32_t len;

	if (hdr[0] != FRAME_MAGIC0 || hdr[1] != FRAME_MAGIC1 || hdr[3] != 0)
		return -EBADMSG;
	if (hdr[2] == 0 || hdr[2] >= _FRAME_TYPE_MAX)
		return -EPROTO;
	len = frame_get_u32(hdr + 4);
	if (len > FRAME_MAX_PAYLOAD)
		return -EMSGSIZE;
	if (!length_fits((enum frame_type)hdr[2], len))
		return -EPROTO;
	if (ret_type)
		*ret_type = (enum frame_type)hdr[2];
	if (ret_len)
		*ret_len = len;
	return 0;
}

struct frame_decoder {
	uint8_t hdr[FRAME_HEADER_BYTES];
	size_t hdr_have;
	uint8_t *payload; /* grows to the largest frame seen, never past FRAME_MAX_PAYLOAD */
	size_t payload_cap;
	size_t payload_have;
	uint32_t want; /* payload length of the current frame, valid once the header is whole */
	bool done;     /* a frame was returned: the next feed starts a new one */
	int error;     /* sticky */
};

int frame_decoder_new(struct frame_decoder **ret)
{
	struct frame_decoder *d = calloc(1, sizeof(*d));

	if (!d)
		return -ENOMEM;
	*ret = d;
	return 0;
}

struct frame_decoder *frame_decoder_free(struct frame_decoder *d)
{
	if (d) {
		free(d->payload);
		free(d);
	}
	return NULL;
}

bool frame_decoder_partial(const struct frame_decoder *d)
{
	return !d->done && d->hdr_have > 0;
}

int frame_decoder_feed(struct frame_decoder *d, const void *data, size_t len, size_t *ret_used,
		       struct frame *ret_frame)
{
	const uint8_t *p = data;
	size_t used = 0;

	*ret_used = 0;
	if (d->error < 0)
		return d->error;
	if (d->done) {
		d->done = false;
		d->hdr_have = 0;
		d->payload_have = 0;
	}
	if (d->hdr_have < FRAME_HEADER_BYTES) {
		size_t n = FRAME_HEADER_BYTES - d->hdr_have;
		enum frame_type type;
		int r;

		if (n > len)
			n = len;
		memcpy(d->hdr + d->hdr_have, p, n);
		d->hdr_have += n;
		used += n;
		/* Reject bad magic as soon as its bytes arrive, not after eight. */
		if ((d->hdr_have >= 1 && d->hdr[0] != FRAME_MAGIC0) ||
		    (d->hdr_have >= 2 && d->hdr[1] != FRAME_MAGIC1)) {
			*ret_used = used;
			return d->error = -EBADMSG;
		}
		if (d->hdr_have < FRAME_HEADER_BYTES) {
			*ret_used = used;
			return 0;
		}
		r = frame_header_check(d->hdr, &type, &d->want);
		if (r < 0) {
			*ret_used = used;
			return d->error = r;
		}
		if (d->want > d->payload_cap) {
			uint8_t *grown = realloc(d->payload, d->want);

			if (!grown) {
				*ret_used = used;
				return d->error = -ENOMEM;
			}
			d->payload = grown;
			d->payload_cap = d->want;
		}
	}
	if (d->payload_have < d->want) {
		size_t n = d->want - d->payload_have;

		if (n > len - used)
			n = len - used;
		memcpy(d->payload + d->payload_have, p + used, n);
		d->payload_have += n;
		used += n;
	}
	*ret_used = used;
	if (d->payload_have < d->want)
		return 0;
	d->done = true;
	ret_frame->type = d->hdr[2];
	ret_frame->flags = d->hdr[3];
	ret_frame->len = d->want;
	ret_frame->payload = d->payload;
	return 1;
}

int frame_buf_append(struct frame_buf *b, const void *data, size_t len)
{
	if (len == 0)
		return 0;
	/* Move pending bytes to the front before growing: the queue is drained from the start. */
	if (b->start > 0 && b->start + b->len + len > b->cap) {
		memmove(b->data, b->data + b->start, b->len);
		b->start = 0;
	}
	if (b->start + b->len + len > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		uint8_t *grown;

		while (cap < b->start + b->len + len)
			cap *= 2;
		grown = realloc(b->data, cap);
		if (!grown)
			return -ENOMEM;
		b->data = grown;
		b->cap = cap;
	}
	memcpy(b->data + b->start + b->len, data, len);
	b->len += len;
	return 0;
}

int frame_buf_put(struct frame_buf *b, enum frame_type type, const void *payload, size_t len)
{
	uint8_t hdr[FRAME_HEADER_BYTES];
	size_t old = b->len;
	int r;

	if (len > FRAME_MAX_PAYLOAD)
		return -EMSGSIZE;
	frame_header_write(hdr, type, (uint32_t)len);
	r = frame_buf_append(b, hdr, sizeof(hdr));
	if (r == 0)
		r = frame_buf_append(b, payload, len);
	if (r < 0)
		b->len = old; /* never leave half a frame queued */
	return r;
}

void frame_buf_consume(struct frame_buf *b, size_t n)
{
	if (n >= b->len) {
		b->start = 0;
		b->len = 0;
		return;
	}
	b->start += n;
	b->len -= n;
}

ssize_t frame_send(int fd, const void *data, size_t len)
{
	/* MSG_NOSIGNAL rather than ignoring SIGPIPE: a library must not change its caller's
	 * signal dispositions, and a dead peer must not kill the caller before its teardown. */
	ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

	if (n < 0 && errno == ENOTSOCK)
		n = write(fd, data, len);
	return n < 0 ? -errno : n;
}

int frame_buf_flush(struct frame_buf *b, int fd)
{
	while (b->len > 0) {
		ssize_t n = frame_send(fd, b->data + b->start, b->len);

		if (n < 0) {
			if (n == -EINTR)
				continue;
			if (n == -EAGAIN || n == -EWOULDBLOCK)
				return 0;
			return (int)n;
		}
		frame_buf_consume(b, (size_t)n);
	}
	return 0;
}

void frame_buf_clear(struct frame_buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

/* EXEC payload:
 *   u32 flags, u32 uid, u32 gid, u32 argc, u32 envc,
 *   then cwd, argv[0..argc), envp[0..envc), each as u32 length + bytes (no NUL). */
#define EXEC_FIXED_BYTES 20

static bool has_nul(const uint8_t *s, size_t len)
{
	return memchr(s, '\0', len) != NULL;
}

int frame_exec_encode(const struct frame_exec *e, uint8_t **ret_data, size_t *ret_len)
{
	const char *cwd = e->cwd ? e->cwd : "";
	size_t argc = 0, envc = 0, total = EXEC_FIXED_BYTES, pos;
	_cleanup_free_ uint8_t *out = NULL;

	if (cwd[0] && cwd[0] != '/')
		return -EINVAL;
	if (strlen(cwd) > FRAME_EXEC_MAX_CWD)
		return -E2BIG;
	total += 4 + strlen(cwd);
	for (; e->argv && e->argv[argc]; argc++) {
		size_t n = strlen(e->argv[argc]);

		if (n > FRAME_EXEC_MAX_STRING)
			return -E2BIG;
		total += 4 + n;
		if (total > FRAME_MAX_PAYLOAD)
			return -E2BIG;
	}
	if (argc == 0 || e->argv[0][0] == '\0')
		return -EINVAL;
	for (; e->envp && e->envp[envc]; envc++) {
		size_t n = strlen(e->envp[envc]);

		if (!strchr(e->envp[envc], '=') || e->envp[envc][0] == '=')
			return -EINVAL;
		if (n > FRAME_EXEC_MAX_STRING)
			return -E2BIG;
		total += 4 + n;
		if (total > FRAME_MAX_PAYLOAD)
			return -E2BIG;
	}
	if (argc > FRAME_EXEC_MAX_ARGS || envc > FRAME_EXEC_MAX_ENV || total > FRAME_MAX_PAYLOAD)
		return -E2BIG;

	out = malloc(total);
	if (!out)
		return -ENOMEM;
	frame_put_u32(out, e->flags);
	frame_put_u32(out + 4, e->uid);
	frame_put_u32(out + 8, e->gid);
	frame_put_u32(out + 12, (uint32_t)argc);
	frame_put_u32(out + 16, (uint32_t)envc);
	pos = EXEC_FIXED_BYTES;
	for (size_t i = 0; i < 1 + argc + envc; i++) {
		const char *s = i == 0 ? cwd : i <= argc ? e->argv[i - 1] : e->envp[i - 1 - argc];
		size_t n = strlen(s);

		frame_put_u32(out + pos, (uint32_t)n);
		memcpy(out + pos + 4, s, n);
		pos += 4 + n;
	}
	*ret_len = total;
	*ret_data = TAKE_PTR(out);
	return 0;
}

int frame_exec_decode(const uint8_t *data, size_t len, struct frame_exec **ret)
{
	uint32_t flags, argc, envc;
	size_t pos = EXEC_FIXED_BYTES, strings = 0, n_strings, need;
	struct frame_exec *e;
	char *text, **slots;

	if (len < EXEC_FIXED_BYTES || len > FRAME_MAX_PAYLOAD)
		return -EBADMSG;
	flags = frame_get_u32(data);
	argc = frame_get_u32(data + 12);
	envc = frame_get_u32(data + 16);
	if ((flags & ~FRAME_EXEC_KNOWN_FLAGS) || argc == 0 || argc > FRAME_EXEC_MAX_ARGS ||
	    envc > FRAME_EXEC_MAX_ENV)
		return -EBADMSG;
	n_strings = 1 + (size_t)argc + envc;
	/* First pass: every length inside the payload, no NUL, rules per kind of string. */
	for (size_t i = 0; i < n_strings; i++) {
		uint32_t n;
		const uint8_t *s;

		if (len - pos < 4)
			return -EBADMSG;
		n = frame_get_u32(data + pos);
		if (n > len - pos - 4)
			return -EBADMSG;
		s = data + pos + 4;
		if (has_nul(s, n))
			return -EBADMSG;
		if (i == 0 && (n > FRAME_EXEC_MAX_CWD || (n > 0 && s[0] != '/')))
			return -EBADMSG;
		if (i == 1 && n == 0)
			return -EBADMSG;
		if (i > argc && (n == 0 || s[0] == '=' || !memchr(s, '=', n)))
			return -EBADMSG;
		strings += n + 1;
		pos += 4 + n;
	}
	if (pos != len)
		return -EBADMSG;

	/* One allocation: the struct, argv and envp arrays, then the strings. */
	need = sizeof(*e) + (argc + 1 + envc + 1) * sizeof(char *) + strings;
	e = calloc(1, need);
	if (!e)
		return -ENOMEM;
	slots = (char **)(e + 1);
	e->argv = slots;
	e->envp = slots + argc + 1;
	text = (char *)(slots + argc + 1 + envc + 1);
	e->flags = flags;
	e->uid = frame_get_u32(data + 4);
	e->gid = frame_get_u32(data + 8);
	e->argc = argc;
	e->envc = envc;
	pos = EXEC_FIXED_BYTES;
	for (size_t i = 0; i < n_strings; i++) {
		uint32_t n = frame_get_u32(data + pos);

		memcpy(text, data + pos + 4, n);
		text[n] = '\0';
		if (i == 0)
			e->cwd = text;
		else if (i <= argc)
			e->argv[i - 1] = text;
		else
			e->envp[i - 1 - argc] = text;
		text += n + 1;
		pos += 4 + n;
	}
	e->argv[argc] = NULL;
	e->envp[envc] = NULL;
	*ret = e;
	return 0;
}

struct frame_exec *frame_exec_free(struct frame_exec *e)
{
	free(e);
	return NULL;
}

int frame_setup_encode(const uint8_t token[FRAME_TOKEN_BYTES], const char *share,
		       uint8_t out[FRAME_TOKEN_BYTES + FRAME_SETUP_MAX_PATH], size_t *ret_len)
{
	size_t n = share ? strlen(share) : 0;

	if (n > FRAME_SETUP_MAX_PATH || (n > 0 && share[0] != '/'))
		return -EINVAL;
	memcpy(out, token, FRAME_TOKEN_BYTES);
	if (n)
		memcpy(out + FRAME_TOKEN_BYTES, share, n);
	*ret_len = FRAME_TOKEN_BYTES + n;
	return 0;
}

int frame_setup_decode(const uint8_t *data, size_t len, struct frame_setup *ret)
{
	size_t n;

	if (len < FRAME_TOKEN_BYTES || len > FRAME_TOKEN_BYTES + FRAME_SETUP_MAX_PATH)
		return -EBADMSG;
	n = len - FRAME_TOKEN_BYTES;
	if (n > 0 && (data[FRAME_TOKEN_BYTES] != '/' || has_nul(data + FRAME_TOKEN_BYTES, n)))
		return -EBADMSG;
	memcpy(ret->token, data, FRAME_TOKEN_BYTES);
	memcpy(ret->share, data + FRAME_TOKEN_BYTES, n);
	ret->share[n] = '\0';
	return 0;
}

size_t frame_info_encode(const struct frame_info *i, uint8_t out[FRAME_INFO_USAGE_BYTES])
{
	put_u64(out, i->mem_total_kb);
	put_u64(out + 8, i->mem_available_kb);
	put_u64(out + 16, i->uptime_ms);
	if (!i->has_usage)
		return FRAME_INFO_BYTES;
	put_u64(out + 24, i->job_mem_peak_kb);
	put_u64(out + 32, i->oom_kills);
	return FRAME_INFO_USAGE_BYTES;
}

int frame_info_decode(const uint8_t *data, size_t len, struct frame_info *ret)
{
	if (len != FRAME_INFO_BYTES && len != FRAME_INFO_USAGE_BYTES)
		return -EBADMSG;
	memset(ret, 0, sizeof(*ret));
	ret->mem_total_kb = get_u64(data);
	ret->mem_available_kb = get_u64(data + 8);
	ret->uptime_ms = get_u64(data + 16);
	if (len == FRAME_INFO_USAGE_BYTES) {
		ret->has_usage = true;
		ret->job_mem_peak_kb = get_u64(data + 24);
		ret->oom_kills = get_u64(data + 32);
	}
	return 0;
}

void frame_exit_encode(enum frame_exit_kind kind, uint32_t value, uint8_t out[FRAME_EXIT_BYTES])
{
	frame_put_u32(out, (uint32_t)kind);
	frame_put_u32(out + 4, value);
}

int frame_exit_decode(const uint8_t *data, size_t len, enum frame_exit_kind *ret_kind,
		      uint32_t *ret_value)
{
	uint32_t kind, value;

	if (len != FRAME_EXIT_BYTES)
		return -EBADMSG;
	kind = frame_get_u32(data);
	value = frame_get_u32(data + 4);
	if (kind == FRAME_EXIT_CODE && value > 255)
		return -EBADMSG;
	if (kind == FRAME_EXIT_SIGNAL && (value == 0 || value > 127))
		return -EBADMSG;
	if (kind >= _FRAME_EXIT_KIND_MAX)
		return -EBADMSG;
	*ret_kind = (enum frame_exit_kind)kind;
	*ret_value = value;
	return 0;
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int frame_token_from_hex(const char *hex, uint8_t ret[FRAME_TOKEN_BYTES])
{
	uint8_t out[FRAME_TOKEN_BYTES];

	if (!hex || strlen(hex) != 2 * FRAME_TOKEN_BYTES)
		return -EINVAL;
	for (size_t i = 0; i < FRAME_TOKEN_BYTES; i++) {
		int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	memcpy(ret, out, sizeof(out));
	return 0;
}

bool frame_token_equal(const uint8_t a[FRAME_TOKEN_BYTES], const uint8_t b[FRAME_TOKEN_BYTES])
{
	/* OR of all differences, no early exit: the time does not tell a guesser how many leading
	 * bytes were right. volatile keeps the compiler from turning it back into memcmp. */
	volatile uint8_t diff = 0;

	for (size_t i = 0; i < FRAME_TOKEN_BYTES; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}
