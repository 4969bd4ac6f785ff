/* The node daemon's wire format, on its TCP port (peers, `vmhpc node fetch`) and on its unix
 * socket (the prolog): frames of a 12-byte header (magic "VMHN", type, flags = 0, payload
 * length, all little-endian) and a payload of at most NODE_PROTO_MAX_PAYLOAD bytes.
 * docs/node.md describes each message. The header parser is pure and treats its input as
 * untrusted; the send/receive helpers block with a timeout. */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define NODE_PROTO_MAGIC	0x4e484d56u /* "VMHN" */
#define NODE_PROTO_HEADER_BYTES 12
/* A chunk is at most 16 MiB plain; its zstd frame a little more. Manifests are smaller. */
#define NODE_PROTO_MAX_PAYLOAD (17u * 1024 * 1024)

enum node_msg_type {
	NODE_MSG_REQUEST = 1,	/* JSON {"op": ...} on the unix socket (peer credentials) */
	NODE_MSG_REQUEST_MUNGE, /* a MUNGE credential whose payload is the JSON request (TCP) */
	NODE_MSG_REPLY,		/* JSON answer {"ok": true|false, "error": "...", ...} */
	NODE_MSG_META_JSON,	/* feed: the whole manifest as JSON, from a vmhpc before META */
	NODE_MSG_WANT,		/* feed: JSON [indices of distinct chunks the child lacks] */
	NODE_MSG_CHUNK,		/* feed: u32 index + the chunk's zstd frame as stored */
	NODE_MSG_END,		/* feed: every wanted chunk was sent */
	NODE_MSG_ERROR,		/* feed: the sender gives up; payload is the reason */
	NODE_MSG_META,		/* feed: manifest and sizes, zstd, maybe against a base (meta.h) */
	_NODE_MSG_TYPE_MAX,
};

/* "request", "request-munge", ...; NULL for an unknown type. */
const char *node_msg_type_to_string(enum node_msg_type type);

/* Writes the header of a frame of type with len payload bytes into out. */
void node_proto_header_encode(enum node_msg_type type, uint32_t len,
			      uint8_t out[NODE_PROTO_HEADER_BYTES]);
/* Parses a header: -EBADMSG for a wrong magic, flags or type, -EMSGSIZE when the payload
 * would exceed max_payload (itself capped at NODE_PROTO_MAX_PAYLOAD). */
int node_proto_header_decode(const uint8_t in[NODE_PROTO_HEADER_BYTES], uint32_t max_payload,
			     enum node_msg_type *ret_type, uint32_t *ret_len);

/* Sends one frame (header and payload) on fd, giving up after timeout_ms without progress
 * (-ETIMEDOUT); -EPIPE/-ECONNRESET when the peer is gone. */
int node_proto_send(int fd, enum node_msg_type type, const void *payload, size_t len,
		    int timeout_ms);
/* node_proto_send with the payload in n parts (n <= 4), sent with the header in one
 * sendmsg: a chunk frame is its index and the stored bytes, with no copy to join them. */
int node_proto_sendv(int fd, enum node_msg_type type, const struct iovec *parts, int n,
		     int timeout_ms);
/* A payload may take timeout_ms plus 1 ms per this many bytes to arrive: slower than
 * ~1 MB/s, a peer counts as stalled even though bytes still trickle in. */
#define NODE_PROTO_SLOW_BYTES_PER_MS 1024
/* Receives one frame into a NUL-terminated buffer the caller frees. -ETIMEDOUT when the
 * header has not arrived whole within timeout_ms, or the payload within timeout_ms plus
 * len / NODE_PROTO_SLOW_BYTES_PER_MS ms after it; -ECONNRESET at EOF, -EBADMSG/-EMSGSIZE
 * on a bad header. */
int node_proto_recv(int fd, uint32_t max_payload, int timeout_ms, enum node_msg_type *ret_type,
		    char **ret_payload, size_t *ret_len);

/* A receiver that reads what the socket holds in one call and cuts frames from it: a relay
 * takes a stream of chunk frames, and one recv per header and per part of a payload was
 * most of its system calls (docs/node.md). Not thread-safe; one per connection. */
struct node_proto_reader;
/* A reader of fd (which stays the caller's); NULL without memory. */
struct node_proto_reader *node_proto_reader_new(int fd);
/* Frees r; NULL is fine. */
void node_proto_reader_free(struct node_proto_reader *r);
/* node_proto_recv through r: the same frames, deadlines and errors. */
int node_proto_reader_recv(struct node_proto_reader *r, uint32_t max_payload, int timeout_ms,
			   enum node_msg_type *ret_type, char **ret_payload, size_t *ret_len);
