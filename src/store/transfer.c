#include "store/transfer.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "store/catalog.h"
#include "store/manifest.h"
#include "util/cleanup.h"
#include "util/error.h"

#define MANIFEST_ENTRY "manifest.json"

static int write_entry(struct archive *a, const char *path, const void *data, size_t len)
{
	struct archive_entry *e = archive_entry_new();
	int ok;

	if (!e)
		return -ENOMEM;
	archive_entry_set_pathname(e, path);
	archive_entry_set_size(e, (la_int64_t)len);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	ok = archive_write_header(a, e) == ARCHIVE_OK &&
	     archive_write_data(a, data, len) == (la_ssize_t)len;
	archive_entry_free(e);
	return ok ? 0 : -EIO;
}

int transfer_export(struct store *s, const char *name, uint32_t version, int out_fd,
		    char **ret_error)
{
	struct manifest *m = NULL;
	struct store_chunk_ref *refs = NULL;
	_cleanup_free_ char *text = NULL;
	struct archive *a = NULL;
	size_t n = 0;
	int r;

	r = catalog_load(s, name, version, &m, ret_error);
	if (r < 0)
		return r;
	r = manifest_to_json(m, &text);
	if (r == 0)
		r = manifest_distinct_chunks(m, &refs, &n);
	if (r < 0)
		goto out;
	a = archive_write_new();
	if (!a || archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
	    archive_write_open_fd(a, out_fd) != ARCHIVE_OK) {
		r = error_set(ret_error, -EIO, "export %s:%u: cannot start the tar stream: %s",
			      name, m->version, a ? archive_error_string(a) : "out of memory");
		goto out;
	}
	r = write_entry(a, MANIFEST_ENTRY, text, strlen(text));
	for (size_t i = 0; r == 0 && i < n; i++) {
		char hex[STORE_ID_HEX_LEN + 1], path[STORE_ID_HEX_LEN + 16];
		void *data = NULL;
		size_t len = 0;

		store_id_to_hex(refs[i].id, hex);
		r = store_get_compressed_chunk(s, refs[i].id, &data, &len);
		if (r < 0) {
			r = error_set(ret_error, r,
				      "export %s:%u: chunk %s: %s; run `vmhpc image verify`", name,
				      m->version, hex, strerror(-r));
			break;
		}
		snprintf(path, sizeof(path), "chunks/%s.zst", hex);
		r = write_entry(a, path, data, len);
		free(data);
	}
	if (r == 0 && archive_write_close(a) != ARCHIVE_OK)
		r = -EIO;
	if (r == -EIO && ret_error && !*ret_error)
		error_set(ret_error, r, "export %s:%u: writing the tar stream failed: %s", name,
			  m->version, archive_error_string(a));
out:
	if (a)
		archive_write_free(a);
	free(refs);
	manifest_free(m);
	return r;
}

/* Reads the current entry's data (at most max_bytes) into a buffer the caller frees. */
static int read_entry(struct archive *a, struct archive_entry *e, size_t max_bytes, void **ret_data,
		      size_t *ret_len)
{
	la_int64_t size = archive_entry_size(e);
	char *buf;
	la_ssize_t got;

	if (size < 0 || (uint64_t)size > max_bytes)
		return -EFBIG;
	buf = malloc((size_t)size + 1);
	if (!buf)
		return -ENOMEM;
	got = archive_read_data(a, buf, (size_t)size);
	if (got != size) {
		free(buf);
		return -EBADMSG;
	}
	buf[size] = '\0';
	*ret_data = buf;
	*ret_len = (size_t)size;
	return 0;
}

int transfer_commit_received(struct store *s, struct manifest *m, bool *ret_added)
{
	struct manifest *existing = NULL;
	uint32_t last;
	int r;

	if (ret_added)
		*ret_added = false;
	r = catalog_load(s, m->name, m->version, &existing, NULL);
	if (r == 0) {
		bool same = manifest_same_parts(existing, m);

		manifest_free(existing);
		if (same)
			return 0;
	}
	if (ret_added)
		*ret_added = true;
	r = catalog_last_version(s, m->name, &last);
	if (r < 0)
		return r;
	/* An import keeps its number only a little above what this store has used: a
	 * manifest saying "version": 100000 would otherwise use up every number of its name
	 * (numbers are never handed out twice), and no later build could commit. */
	if (m->version > last && m->version - last <= TRANSFER_VERSION_MAX_GAP &&
	    m->version <= CATALOG_MAX_VERSIONS) {
		r = catalog_commit_as(s, m);
		if (r != -EEXIST)
			return r;
	}
	return catalog_commit(s, m);
}

/* Says what an import that failed at a chunk (hex) or at the commit (hex NULL) left:
 * whatever it stored stays, complete and verified, for the next import to reuse. */
static int import_chunk_error(struct store *s, const struct manifest *m, const char *hex, int r,
			      const struct store_put_stats *stats, char **ret_error)
{
	char kept[160] = "";

	if (stats->new_chunks > 0)
		snprintf(kept, sizeof(kept),
			 "; the %" PRIu64 " chunks it stored are complete and the next import "
			 "reuses them (`vmhpc image gc` removes them)",
			 stats->new_chunks);
	if (r == -ENOSPC || r == -EDQUOT)
		return error_set(ret_error, r,
				 "import: no space left on the device holding the store %s%s%s; "
				 "%s:%u was not added%s; free some space, then import again",
				 store_path(s), hex ? " at chunk " : " saving the manifest",
				 hex ? hex : "", m->name, m->version, kept);
	if (r == -EBADMSG)
		return error_set(ret_error, r,
				 "import: chunk %s is damaged; %s:%u was not added%s; export it "
				 "again from a good store",
				 hex, m->name, m->version, kept);
	return error_set(ret_error, r, "import: chunk %s: %s; %s:%u was not added%s", hex,
			 strerror(-r), m->name, m->version, kept);
}

int transfer_import(struct store *s, int in_fd, char **ret_name, uint32_t *ret_version,
		    char **ret_error)
{
	const size_t max_compressed = ZSTD_compressBound(STORE_CHUNK_MAX_BYTES) + 1024;
	struct archive *a = archive_read_new();
	struct archive_entry *e;
	struct manifest *m = NULL;
	struct store_chunk_ref *refs = NULL;
	_cleanup_close_ int lock_fd = -1;
	struct store_put_stats stats = {0};
	size_t n = 0, n_received = 0;
	bool *received = NULL;
	int r;

	if (!a)
		return -ENOMEM;
	archive_read_support_format_tar(a);
	if (archive_read_open_fd(a, in_fd, 65536) != ARCHIVE_OK) {
		r = error_set(ret_error, -EBADMSG, "import: cannot read the stream: %s",
			      archive_error_string(a));
		goto out;
	}
	r = store_lock(s, STORE_LOCK_WRITE, &lock_fd);
	if (r < 0)
		goto out;
	for (;;) {
		const char *path;
		void *data = NULL;
		size_t len;
		int ar = archive_read_next_header(a, &e);

		if (ar == ARCHIVE_EOF)
			break;
		if (ar != ARCHIVE_OK) {
			r = error_set(ret_error, -EBADMSG,
				      "import: the stream is truncated or not an image export: %s",
				      archive_error_string(a));
			goto out;
		}
		path = archive_entry_pathname(e);
		if (!m) {
			_cleanup_free_ char *why = NULL;

			if (!path || strcmp(path, MANIFEST_ENTRY) != 0) {
				r = error_set(
				    ret_error, -EBADMSG,
				    "import: the stream does not start with %s; it is not "
				    "made by `vmhpc image export`",
				    MANIFEST_ENTRY);
				goto out;
			}
			r = read_entry(a, e, MANIFEST_MAX_BYTES, &data, &len);
			if (r == -EBADMSG) {
				r = error_set(ret_error, r,
					      "import: the stream ends inside %s; it is truncated",
					      MANIFEST_ENTRY);
				goto out;
			}
			if (r == 0)
				r = manifest_from_json(data, len, &m, &why);
			free(data);
			if (r < 0) {
				r = error_set(ret_error, r, "import: bad manifest: %s",
					      why ? why : strerror(-r));
				goto out;
			}
			r = manifest_distinct_chunks(m, &refs, &n);
			if (r < 0)
				goto out;
			received = calloc(n ? n : 1, sizeof(*received));
			if (!received) {
				r = -ENOMEM;
				goto out;
			}
			continue;
		}
		{
			uint8_t id[STORE_ID_BYTES];
			char hex[STORE_ID_HEX_LEN + 1];
			size_t lo = 0, hi = n;

			if (!path || strncmp(path, "chunks/", 7) != 0 ||
			    strlen(path) != 7 + 64 + 4 || strcmp(path + 7 + 64, ".zst") != 0) {
				r = error_set(ret_error, -EBADMSG, "import: unexpected entry '%s'",
					      path ? path : "?");
				goto out;
			}
			memcpy(hex, path + 7, 64);
			hex[64] = '\0';
			if (store_id_from_hex(hex, id) < 0) {
				r = error_set(ret_error, -EBADMSG, "import: bad chunk name '%s'",
					      path);
				goto out;
			}
			while (lo < hi) {
				size_t mid = lo + (hi - lo) / 2;

				if (memcmp(refs[mid].id, id, STORE_ID_BYTES) < 0)
					lo = mid + 1;
				else
					hi = mid;
			}
			if (lo == n || memcmp(refs[lo].id, id, STORE_ID_BYTES) != 0) {
				r = error_set(ret_error, -EBADMSG,
					      "import: chunk %s is not named by the manifest", hex);
				goto out;
			}
			r = read_entry(a, e, max_compressed, &data, &len);
			if (r == 0)
				r = store_put_compressed_chunk(s, id, data, len, &stats);
			free(data);
			if (r < 0) {
				r = import_chunk_error(s, m, hex, r, &stats, ret_error);
				goto out;
			}
			if (!received[lo]) {
				received[lo] = true;
				n_received++;
			}
		}
	}
	if (!m) {
		r = error_set(ret_error, -EBADMSG, "import: the stream is empty");
		goto out;
	}
	for (size_t i = 0; i < n && n_received < n; i++) {
		char hex[STORE_ID_HEX_LEN + 1];

		if (received[i] || store_has_chunk(s, refs[i].id))
			continue;
		store_id_to_hex(refs[i].id, hex);
		r = error_set(ret_error, -EBADMSG,
			      "import: %s:%u lacks chunk %s (the stream is incomplete); no version "
			      "was added%s",
			      m->name, m->version, hex,
			      stats.new_chunks > 0 ? "; the chunks it stored stay for a retry "
						     "(`vmhpc image gc` removes them)"
						   : "");
		goto out;
	}
	r = transfer_commit_received(s, m, NULL);
	if (r == -ENOSPC || r == -EDQUOT) {
		r = import_chunk_error(s, m, NULL, r, &stats, ret_error);
		goto out;
	}
	if (r < 0) {
		r = error_set(ret_error, r, "import: saving %s: %s", m->name, strerror(-r));
		goto out;
	}
	*ret_name = strdup(m->name);
	*ret_version = m->version;
	r = *ret_name ? 0 : -ENOMEM;
out:
	archive_read_free(a);
	free(received);
	free(refs);
	manifest_free(m);
	return r;
}
