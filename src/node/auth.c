#include "node/auth.h"

#include <errno.h>
#include <munge.h>
#include <stdlib.h>
#include <string.h>

#include "util/error.h"

static munge_ctx_t ctx_new(const char *munge_socket)
{
	munge_ctx_t ctx = munge_ctx_create();

	if (ctx && munge_socket &&
	    munge_ctx_set(ctx, MUNGE_OPT_SOCKET, munge_socket) != EMUNGE_SUCCESS) {
		munge_ctx_destroy(ctx);
		return NULL;
	}
	return ctx;
}

int node_auth_encode(const char *munge_socket, const void *payload, size_t len, char **ret_cred,
		     char **ret_error)
{
	munge_ctx_t ctx = ctx_new(munge_socket);
	munge_err_t e;
	char *cred = NULL;

	if (!ctx)
		return error_set(ret_error, -ENOMEM, "cannot set up a MUNGE context");
	e = munge_encode(&cred, ctx, payload, (int)len);
	if (e != EMUNGE_SUCCESS) {
		int r = error_set(ret_error, -EACCES,
				  "MUNGE could not sign the request (%s); is munged running%s%s?",
				  munge_ctx_strerror(ctx), munge_socket ? " at " : "",
				  munge_socket ? munge_socket : "");
		munge_ctx_destroy(ctx);
		free(cred);
		return r;
	}
	munge_ctx_destroy(ctx);
	*ret_cred = cred;
	return 0;
}

int node_auth_decode(const char *munge_socket, const char *cred, char **ret_payload,
		     size_t *ret_len, uid_t *ret_uid, gid_t *ret_gid, char **ret_error)
{
	munge_ctx_t ctx = ctx_new(munge_socket);
	void *buf = NULL;
	int len = 0;
	uid_t uid;
	gid_t gid;
	munge_err_t e;
	char *out;

	if (!ctx)
		return error_set(ret_error, -ENOMEM, "cannot set up a MUNGE context");
	e = munge_decode(cred, ctx, &buf, &len, &uid, &gid);
	if (e != EMUNGE_SUCCESS) {
		int r = error_set(ret_error, -EACCES, "MUNGE credential refused: %s",
				  munge_ctx_strerror(ctx) ? munge_ctx_strerror(ctx)
							  : munge_strerror(e));
		munge_ctx_destroy(ctx);
		free(buf);
		return r;
	}
	munge_ctx_destroy(ctx);
	out = malloc((size_t)len + 1);
	if (!out) {
		free(buf);
		return -ENOMEM;
	}
	if (len > 0)
		memcpy(out, buf, (size_t)len);
	out[len] = 0;
	free(buf);
	*ret_payload = out;
	*ret_len = (size_t)len;
	*ret_uid = uid;
	*ret_gid = gid;
	return 0;
}
