/* Error messages for users: the function that knows what is wrong writes one message
 * naming the thing and the fix; callers further up pass it on unchanged. */
#pragma once

/* Formats a message into *ret_error (caller frees) unless ret_error is NULL or already
 * holds one (the innermost, most specific message wins); returns r, so that
 * `return error_set(ret_error, -ENOENT, "...")` works. */
int error_set(char **ret_error, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
