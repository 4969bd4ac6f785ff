/* Names users give things (images, OS labels): safe as one path component. */
#pragma once

#define NAME_MAX_CHARS 64

/* Accepts 1-64 chars of [A-Za-z0-9._-] starting with a letter or digit (so never "/",
 * "." or ".."). On -EINVAL *ret_error (caller frees) says "<what> 'NAME': rule". */
int name_validate(const char *what, const char *name, char **ret_error);
