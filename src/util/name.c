#include "util/error.h"
#include "util/name.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int fail(char **ret_error, const char *what, const char *name, const char *why)
{
	char shown[81];
	size_t i;

	/* The name is untrusted: show at most 80 bytes, control bytes as '?'. */
	for (i = 0; name[i] && i < sizeof(shown) - 1; i++)
		shown[i] = (unsigned char)name[i] < 0x20 || name[i] == 0x7f ? '?' : name[i];
	shown[i] = '\0';
	error_set(ret_error, 0,
		  "%s '%s%s' %s; use 1-%d characters of A-Z a-z 0-9 . _ -, starting with a "
		  "letter or digit",
		  what, shown, name[i] ? "..." : "", why, NAME_MAX_CHARS);
	return -EINVAL;
}

int name_validate(const char *what, const char *name, char **ret_error)
{
	size_t len = strlen(name);

	if (len == 0)
		return fail(ret_error, what, name, "is empty");
	if (len > NAME_MAX_CHARS)
		return fail(ret_error, what, name, "is too long");
	if (!((name[0] >= 'a' && name[0] <= 'z') || (name[0] >= 'A' && name[0] <= 'Z') ||
	      (name[0] >= '0' && name[0] <= '9')))
		return fail(ret_error, what, name, "does not start with a letter or digit");
	for (size_t i = 0; i < len; i++) {
		char c = name[i];

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    c == '.' || c == '_' || c == '-')
			continue;
		return fail(ret_error, what, name, "has a character that is not allowed");
	}
	return 0;
}
