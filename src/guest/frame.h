/* The exec protocol spoken between vmhpc-init's exec service and its clients (vmhpc-exec,
 * the host runtime): framed messages over a byte stream (TCP or a virtio-serial port).
 *
 *   offset 0  magic 'V' 'H'
 *          2  type (enum frame_type)
 *          3  flags (none defined: must be 0)
 *          4  payload length, 32-bit big-endian, at most FRAME_MAX_PAYLOAD
 *          8  payload
 *
 * Every integer in a payload is big-endian. docs/guest.md has the whole protocol. This
 * module uses libc only: it is linked into the static guest binaries without the rest of
 * libvmhpc. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define FRAME_MAGIC0	   'V'
#define FRAME_MAGIC1	   'H'
#define FRAME_HEADER_BYTES 8
#define FRAME_MAX_PAYLOAD  (256u * 1024u)
#define FRAME_TOKEN_BYTES  32
/* 2: the host hands the token and job folder over in SETUP (not on the kernel command
 * line). Images record the version of the vmhpc-init they hold (metadata guest_protocol):
 * a runtime boots only images that speak its own. */
#define FRAME_PROTO_VERSION 2
#define FRAME_ERROR_MAX	    4096 /* bytes of text in an ERROR frame */

/* Bounds of an EXEC request (the payload limit bounds the total as well). */
#define FRAME_EXEC_MAX_ARGS   4096
#define FRAME_EXEC_MAX_ENV    4096
#define FRAME_EXEC_MAX_STRING (FRAME_MAX_PAYLOAD - 64)
#define FRAME_EXEC_MAX_CWD    4095

/* SETUP: the 32-byte token, then the job folder's path (0..FRAME_SETUP_MAX_PATH bytes;
 * empty: no folder is shared; else absolute, no NUL). */
#define FRAME_SETUP_MAX_PATH 4095

enum frame_type {
	FRAME_HELLO = 1,     /* c->s: 32-byte token; must be the first frame */
	FRAME_WELCOME = 2,   /* s->c: u32 protocol version */
	FRAME_EXEC = 3,	     /* c->s: struct frame_exec, encoded */
	FRAME_STDIN = 4,     /* c->s: bytes for the command's stdin */
	FRAME_STDIN_EOF = 5, /* c->s: empty; closes the command's stdin */
	FRAME_STDOUT = 6,    /* s->c: bytes */
	FRAME_STDERR = 7,    /* s->c: bytes */
	FRAME_EXIT = 8,	     /* s->c: u32 kind (enum frame_exit_kind), u32 code or signal */
	FRAME_SIGNAL = 9,    /* c->s: u32 signal number, sent to the command's process group */
	FRAME_SHUTDOWN = 10, /* c->s: empty; s->c: empty acknowledgement before power-off */
	FRAME_INFO = 11,     /* c->s: empty request; s->c: struct frame_info, encoded */
	FRAME_READY = 12,    /* s->c, control port: struct frame_info; see docs/guest.md */
	FRAME_ERROR = 13,    /* s->c: text (not NUL-terminated), at most FRAME_ERROR_MAX bytes */
	FRAME_SETUP = 14,    /* host->guest, control port only, once: token + job folder path */
	_FRAME_TYPE_MAX,
};

enum frame_exit_kind {
	FRAME_EXIT_CODE = 0,   /* the command exited; value = its exit code */
	FRAME_EXIT_SIGNAL = 1, /* the command was killed; value = the signal */
	_FRAME_EXIT_KIND_MAX,
};

/* Flags of an EXEC request. */
#define FRAME_EXEC_CWD_OPTIONAL 0x1u /* cwd missing in the guest: run in / instead of failing */
#define FRAME_EXEC_KNOWN_FLAGS	FRAME_EXEC_CWD_OPTIONAL

/* "HELLO", "EXEC", ...; "?" for a value outside the enum. */
const char *frame_type_to_string(int type);

/* A decoded frame; payload points into the decoder and is valid until its next feed. */
struct frame {
	uint8_t type;
	uint8_t flags;
	uint32_t len;
	const uint8_t *payload;
};

/* Writes the 8-byte header of a frame of type with len payload bytes into out. */
void frame_header_write(uint8_t out[FRAME_HEADER_BYTES], enum frame_type type, uint32_t len);

/* Checks a header: 0, or -EBADMSG (bad magic or flags), -EPROTO (unknown type, or a
 * payload length that type never has), -EMSGSIZE (longer than FRAME_MAX_PAYLOAD). */
int frame_header_check(const uint8_t hdr[FRAME_HEADER_BYTES], enum frame_type *ret_type,
		       uint32_t *ret_len);

/* Incremental decoder: feed it any split of a byte stream, get whole frames. */
struct frame_decoder;

/* Allocates a decoder (caller frees with frame_decoder_free). */
int frame_decoder_new(struct frame_decoder **ret);

/* Frees d; NULL is fine; returns NULL. */
struct frame_decoder *frame_decoder_free(struct frame_decoder *d);

/* Takes bytes from data (at most len; *ret_used says how many) and returns 1 with
 * *ret_frame set when a frame became whole (call again with the rest), 0 when all input
 * was taken without finishing one, or a frame_header_check error; after an error the
 * decoder stays failed (the peer must be dropped: the stream cannot be resynchronized). */
int frame_decoder_feed(struct frame_decoder *d, const void *data, size_t len, size_t *ret_used,
		       struct frame *ret_frame);

/* True when the decoder holds part of a frame (an EOF now means a truncated frame). */
bool frame_decoder_partial(const struct frame_decoder *d);

/* A growable byte queue: frames waiting to be written to a non-blocking fd. */
struct frame_buf {
	uint8_t *data;
	size_t start; /* bytes before start are already written */
	size_t len;   /* bytes from start on are pending */
	size_t cap;
};

/* Appends raw bytes; 0 or -ENOMEM. */
int frame_buf_append(struct frame_buf *b, const void *data, size_t len);

/* Appends one whole frame (header + payload; len <= FRAME_MAX_PAYLOAD, else -EMSGSIZE). */
int frame_buf_put(struct frame_buf *b, enum frame_type type, const void *payload, size_t len);

/* Drops n pending bytes from the front. */
void frame_buf_consume(struct frame_buf *b, size_t n);

/* Writes pending bytes to fd until done or it would block; 0 (check b->len to know which)
 * or -errno of the write (EPIPE, ECONNRESET, ...). */
int frame_buf_flush(struct frame_buf *b, int fd);

/* Frees the storage; the buffer is empty and reusable afterwards. */
void frame_buf_clear(struct frame_buf *b);

/* Writes up to len bytes to fd once: send(MSG_NOSIGNAL) on a socket, so a peer that went
 * away is -EPIPE and never a SIGPIPE, write() on anything else (ENOTSOCK). Bytes written or
 * -errno (EAGAIN included). */
ssize_t frame_send(int fd, const void *data, size_t len);

/* An EXEC request. Decoded: argv and envp are NULL-terminated, all in one allocation. */
struct frame_exec {
	uint32_t flags; /* FRAME_EXEC_* */
	uint32_t uid, gid;
	char *cwd;   /* absolute path; empty means "/" */
	char **argv; /* at least one element */
	char **envp; /* "NAME=value" each; may be empty */
	size_t argc, envc;
};

/* Encodes e (argv/envp NULL-terminated; argc/envc ignored) into a new buffer the caller
 * frees: 0, -E2BIG (counts or total over the limits), -EINVAL (NUL-free strings only:
 * empty argv, argv[0] empty, env without '=', relative cwd). */
int frame_exec_encode(const struct frame_exec *e, uint8_t **ret_data, size_t *ret_len);

/* Decodes an EXEC payload into *ret (free with frame_exec_free): 0 or -EBADMSG. */
int frame_exec_decode(const uint8_t *data, size_t len, struct frame_exec **ret);

/* Frees a decoded request; NULL is fine; returns NULL. */
struct frame_exec *frame_exec_free(struct frame_exec *e);

/* The guest's state: READY carries the first three fields (FRAME_INFO_BYTES); an INFO reply
 * from this vmhpc-init adds the job's usage (FRAME_INFO_USAGE_BYTES). An older guest answers
 * INFO with FRAME_INFO_BYTES: has_usage is then false. */
struct frame_info {
	uint64_t mem_total_kb;	   /* MemTotal of /proc/meminfo */
	uint64_t mem_available_kb; /* MemAvailable */
	uint64_t uptime_ms;	   /* /proc/uptime */
	bool has_usage;		   /* the two below were sent */
	uint64_t job_mem_peak_kb;  /* the job's processes together at their peak; 0: unknown */
	uint64_t oom_kills;	   /* processes the guest kernel killed for lack of memory */
};
#define FRAME_INFO_BYTES       24
#define FRAME_INFO_USAGE_BYTES 40

/* Encodes i into out, with the usage when i->has_usage; returns the payload's length. */
size_t frame_info_encode(const struct frame_info *i, uint8_t out[FRAME_INFO_USAGE_BYTES]);
/* 0 or -EBADMSG when len is neither FRAME_INFO_BYTES nor FRAME_INFO_USAGE_BYTES. */
int frame_info_decode(const uint8_t *data, size_t len, struct frame_info *ret);

/* The host's SETUP: what the guest must not learn from its kernel command line. */
struct frame_setup {
	uint8_t token[FRAME_TOKEN_BYTES];
	char share[FRAME_SETUP_MAX_PATH + 1]; /* "" when no job folder is shared */
};

/* Encodes a SETUP payload into out (FRAME_TOKEN_BYTES + strlen(share) bytes, returned in
 * *ret_len): 0, or -EINVAL when share (NULL: none) is relative or longer than
 * FRAME_SETUP_MAX_PATH. */
int frame_setup_encode(const uint8_t token[FRAME_TOKEN_BYTES], const char *share,
		       uint8_t out[FRAME_TOKEN_BYTES + FRAME_SETUP_MAX_PATH], size_t *ret_len);

/* Decodes a SETUP payload: 0, or -EBADMSG (length, a NUL, a relative path). */
int frame_setup_decode(const uint8_t *data, size_t len, struct frame_setup *ret);

#define FRAME_EXIT_BYTES 8
void frame_exit_encode(enum frame_exit_kind kind, uint32_t value, uint8_t out[FRAME_EXIT_BYTES]);
/* 0 or -EBADMSG (length, unknown kind, code > 255, signal 0 or > 127). */
int frame_exit_decode(const uint8_t *data, size_t len, enum frame_exit_kind *ret_kind,
		      uint32_t *ret_value);

/* Big-endian u32 helpers (SIGNAL, WELCOME payloads). */
void frame_put_u32(uint8_t out[4], uint32_t v);
uint32_t frame_get_u32(const uint8_t in[4]);

/* Parses exactly 2*FRAME_TOKEN_BYTES hex digits: 0 or -EINVAL. */
int frame_token_from_hex(const char *hex, uint8_t ret[FRAME_TOKEN_BYTES]);

/* Compares two tokens in time independent of where they differ. */
bool frame_token_equal(const uint8_t a[FRAME_TOKEN_BYTES], const uint8_t b[FRAME_TOKEN_BYTES]);
