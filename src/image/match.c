/* A recursive-descent parser for match.h's expressions, and their evaluation:
 *
 *   expr    := and ( "||" and )*
 *   and     := unary ( "&&" unary )*
 *   unary   := "!" unary | "(" expr ")" | has | compare
 *   has     := "has" "(" STRING ")"
 *   compare := operand OP literal | literal OP operand
 *   operand := FIELD | PACKAGE | ("pkg" | "lib") "(" STRING ")"
 *   literal := STRING | NUMBER[K|M|G|T]
 *
 * Every node keeps the span of text it came from: errors give columns, explanations quote
 * the user's own clause. */
#include "image/match.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image/debversion.h"
#include "util/cleanup.h"
#include "util/error.h"

#define MATCH_MAX_DEPTH 64 /* nesting of ! and parentheses: bounds the recursion */

enum token_kind {
	T_END,
	T_IDENT,
	T_STRING,
	T_NUMBER,
	T_AND,
	T_OR,
	T_NOT,
	T_LPAREN,
	T_RPAREN,
	T_CMP,
};

enum cmp_op { CMP_EQ, CMP_NE, CMP_LT, CMP_LE, CMP_GT, CMP_GE };

static const char *const cmp_names[] = {"==", "!=", "<", "<=", ">", ">="};

struct token {
	enum token_kind kind;
	size_t start, end; /* offsets into the text */
	enum cmp_op op;	   /* T_CMP */
	char *string;	   /* T_IDENT, T_STRING: unescaped, owned by the parser */
	uint64_t number;   /* T_NUMBER */
};

/* What a comparison reads from a candidate. */
enum operand_kind {
	OPERAND_NAME, /* strings */
	OPERAND_OS,
	OPERAND_ARCH,
	OPERAND_KERNEL,
	OPERAND_OWNER,
	OPERAND_DESCRIPTION,
	OPERAND_VERSION, /* numbers */
	OPERAND_SIZE,
	OPERAND_CREATED,
	OPERAND_PACKAGE, /* by name: bare, or pkg("NAME") */
	OPERAND_LIBRARY, /* lib("SONAME") */
};

static const struct {
	const char *name;
	enum operand_kind kind;
	bool numeric;
} fields[] = {
    {"name", OPERAND_NAME, false},	{"os", OPERAND_OS, false},
    {"arch", OPERAND_ARCH, false},	{"kernel", OPERAND_KERNEL, false},
    {"owner", OPERAND_OWNER, false},	{"description", OPERAND_DESCRIPTION, false},
    {"version", OPERAND_VERSION, true}, {"size", OPERAND_SIZE, true},
    {"created", OPERAND_CREATED, true},
};

enum node_kind { NODE_OR, NODE_AND, NODE_NOT, NODE_CMP, NODE_HAS };

struct node {
	enum node_kind kind;
	size_t start, end; /* the clause's text */
	struct node *a, *b;
	/* NODE_CMP */
	enum operand_kind operand;
	char *key; /* package or library name (NODE_CMP), or has()'s argument */
	size_t key_start;
	bool bare_package; /* a bare name: must be known to some candidate (match_check) */
	enum cmp_op op;
	bool numeric;
	char *string;
	uint64_t number;
};

struct match_expr {
	char *text;
	struct node *root;
};

struct parser {
	const char *text;
	size_t pos;
	struct token tok; /* the current token */
	char *error;
	int depth;
};

static void node_free(struct node *n)
{
	if (!n)
		return;
	node_free(n->a);
	node_free(n->b);
	free(n->key);
	free(n->string);
	free(n);
}

struct match_expr *match_expr_free(struct match_expr *e)
{
	if (e) {
		node_free(e->root);
		free(e->text);
		free(e);
	}
	return NULL;
}

static int fail_at(struct parser *p, size_t offset, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail_at(struct parser *p, size_t offset, const char *fmt, ...)
{
	_cleanup_free_ char *msg = NULL;
	va_list ap;

	if (p->error)
		return -EINVAL;
	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	return error_set(&p->error, -EINVAL, "column %zu: %s", offset + 1, msg ? msg : "?");
}

static bool ident_char(char c)
{
	return isalnum((unsigned char)c) || c == '_' || c == '.' || c == '+' || c == '-';
}

/* A number: digits and at most one size suffix; anything else starting with a digit is a
 * name (package names may: "0ad"). */
static bool lex_number(struct parser *p, size_t start, size_t end)
{
	uint64_t v = 0, mult = 1;
	size_t i = start;

	for (; i < end && isdigit((unsigned char)p->text[i]); i++) {
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(p->text[i] - '0');
	}
	if (i + 1 == end) {
		switch (p->text[i]) {
		case 'K':
			mult = 1ull << 10;
			break;
		case 'M':
			mult = 1ull << 20;
			break;
		case 'G':
			mult = 1ull << 30;
			break;
		case 'T':
			mult = 1ull << 40;
			break;
		default:
			return false;
		}
		i++;
	}
	if (i != end || (mult > 1 && v > UINT64_MAX / mult))
		return false;
	p->tok.kind = T_NUMBER;
	p->tok.number = v * mult;
	return true;
}

static int lex_string(struct parser *p)
{
	size_t start = p->pos, n = 0;
	char *out = malloc(strlen(p->text + start) + 1);

	if (!out)
		return -ENOMEM;
	p->pos++; /* the opening quote */
	for (;;) {
		char c = p->text[p->pos];

		if (c == '\0') {
			free(out);
			return fail_at(p, start,
				       "a string that does not end: add the closing '\"'");
		}
		p->pos++;
		if (c == '"')
			break;
		if (c == '\\') {
			c = p->text[p->pos];
			if (c != '"' && c != '\\') {
				free(out);
				return fail_at(p, p->pos - 1,
					       "'\\%c' in a string: only \\\" and \\\\ are escapes",
					       c ? c : ' ');
			}
			p->pos++;
		}
		out[n++] = c;
	}
	out[n] = '\0';
	p->tok.kind = T_STRING;
	p->tok.string = out;
	return 0;
}

/* Reads the next token into p->tok. */
static int next(struct parser *p)
{
	const char *t = p->text;
	size_t start;

	free(p->tok.string);
	p->tok = (struct token){0};
	while (isspace((unsigned char)t[p->pos]))
		p->pos++;
	start = p->tok.start = p->pos;
	switch (t[p->pos]) {
	case '\0':
		p->tok.kind = T_END;
		break;
	case '(':
		p->tok.kind = T_LPAREN;
		p->pos++;
		break;
	case ')':
		p->tok.kind = T_RPAREN;
		p->pos++;
		break;
	case '"': {
		int r = lex_string(p);

		if (r < 0)
			return r;
		break;
	}
	case '&':
	case '|':
		if (t[p->pos + 1] != t[p->pos])
			return fail_at(p, start, "'%c' alone is not an operator: write '%c%c'",
				       t[p->pos], t[p->pos], t[p->pos]);
		p->tok.kind = t[p->pos] == '&' ? T_AND : T_OR;
		p->pos += 2;
		break;
	case '!':
		if (t[p->pos + 1] == '=') {
			p->tok.kind = T_CMP;
			p->tok.op = CMP_NE;
			p->pos += 2;
		} else {
			p->tok.kind = T_NOT;
			p->pos++;
		}
		break;
	case '=':
		if (t[p->pos + 1] != '=')
			return fail_at(p, start, "'=' alone is not an operator: write '=='");
		p->tok.kind = T_CMP;
		p->tok.op = CMP_EQ;
		p->pos += 2;
		break;
	case '<':
	case '>': {
		bool eq = t[p->pos + 1] == '=';

		p->tok.kind = T_CMP;
		p->tok.op = t[p->pos] == '<' ? (eq ? CMP_LE : CMP_LT) : (eq ? CMP_GE : CMP_GT);
		p->pos += eq ? 2 : 1;
		break;
	}
	default:
		if (!ident_char(t[p->pos]) || t[p->pos] == '.' || t[p->pos] == '+' ||
		    t[p->pos] == '-') {
			unsigned char c = (unsigned char)t[p->pos];

			if (c >= 0x20 && c < 0x7f)
				return fail_at(p, start, "unexpected '%c'", c);
			return fail_at(p, start, "unexpected byte 0x%02x", c);
		}
		while (ident_char(t[p->pos]))
			p->pos++;
		if (!lex_number(p, start, p->pos)) {
			p->tok.kind = T_IDENT;
			p->tok.string = strndup(t + start, p->pos - start);
			if (!p->tok.string)
				return -ENOMEM;
		}
		break;
	}
	p->tok.end = p->pos;
	return 0;
}

static const char *describe(const struct token *t)
{
	switch (t->kind) {
	case T_END:
		return "the end";
	case T_IDENT:
		return "a name";
	case T_STRING:
		return "a string";
	case T_NUMBER:
		return "a number";
	case T_AND:
		return "'&&'";
	case T_OR:
		return "'||'";
	case T_NOT:
		return "'!'";
	case T_LPAREN:
		return "'('";
	case T_RPAREN:
		return "')'";
	case T_CMP:
		return cmp_names[t->op];
	}
	return "?";
}

static struct node *node_new(enum node_kind kind, size_t start)
{
	struct node *n = calloc(1, sizeof(*n));

	if (n) {
		n->kind = kind;
		n->start = start;
	}
	return n;
}

/* After a function's name: "(" STRING ")". Takes the string. */
static int parse_call_argument(struct parser *p, const char *fn, char **ret, size_t *ret_start)
{
	int r;

	r = next(p);
	if (r < 0)
		return r;
	if (p->tok.kind != T_LPAREN)
		return fail_at(p, p->tok.start, "expected '(' after %s, found %s", fn,
			       describe(&p->tok));
	r = next(p);
	if (r < 0)
		return r;
	if (p->tok.kind != T_STRING || !p->tok.string[0])
		return fail_at(p, p->tok.start, "%s() takes a name in quotes, e.g. %s(\"mpich\")",
			       fn, fn);
	*ret_start = p->tok.start;
	*ret = TAKE_PTR(p->tok.string);
	r = next(p);
	if (r < 0)
		return r;
	if (p->tok.kind != T_RPAREN)
		return fail_at(p, p->tok.start, "expected ')' after %s's argument, found %s", fn,
			       describe(&p->tok));
	return next(p);
}

/* An operand (a name or pkg()/lib()) into n; p->tok is its first token. */
static int parse_operand(struct parser *p, struct node *n)
{
	const char *name = p->tok.string;

	n->key_start = p->tok.start;
	if (strcmp(name, "pkg") == 0 || strcmp(name, "lib") == 0) {
		bool lib = name[0] == 'l';

		n->operand = lib ? OPERAND_LIBRARY : OPERAND_PACKAGE;
		return parse_call_argument(p, lib ? "lib" : "pkg", &n->key, &n->key_start);
	}
	for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
		if (strcmp(name, fields[i].name) == 0) {
			n->operand = fields[i].kind;
			n->numeric = fields[i].numeric;
			return next(p);
		}
	n->operand = OPERAND_PACKAGE;
	n->bare_package = true;
	n->key = TAKE_PTR(p->tok.string);
	return next(p);
}

/* A literal into n; p->tok is it. */
static int parse_literal(struct parser *p, struct node *n, const char *operand_text)
{
	if (p->tok.kind == T_STRING) {
		if (n->numeric)
			return fail_at(p, p->tok.start,
				       "%s is a number; compare it with a number, e.g. %s > 100M",
				       operand_text, operand_text);
		n->string = TAKE_PTR(p->tok.string);
	} else if (p->tok.kind == T_NUMBER) {
		if (!n->numeric)
			return fail_at(
			    p, p->tok.start,
			    "%s is a version string; write the number in quotes: \"%.*s\"",
			    operand_text, (int)(p->tok.end - p->tok.start), p->text + p->tok.start);
		n->number = p->tok.number;
	} else if (p->tok.kind == T_IDENT && !n->numeric) {
		return fail_at(p, p->tok.start,
			       "%s is a version string; write the value in quotes: \"%s\"",
			       operand_text, p->tok.string);
	} else {
		return fail_at(p, p->tok.start, "expected a value after %s, found %s",
			       cmp_names[n->op], describe(&p->tok));
	}
	return next(p);
}

static int parse_or(struct parser *p, struct node **ret);

static enum cmp_op flip(enum cmp_op op)
{
	switch (op) {
	case CMP_LT:
		return CMP_GT;
	case CMP_LE:
		return CMP_GE;
	case CMP_GT:
		return CMP_LT;
	case CMP_GE:
		return CMP_LE;
	default:
		return op;
	}
}

static int parse_compare(struct parser *p, struct node *n)
{
	_cleanup_free_ char *operand_text = NULL;
	int r;

	if (p->tok.kind == T_STRING || p->tok.kind == T_NUMBER) {
		/* literal OP operand: read the literal's token, then turn it around. */
		struct token lit = p->tok;
		size_t lit_start = p->tok.start;

		p->tok.string = NULL;
		r = next(p);
		if (r < 0) {
			free(lit.string);
			return r;
		}
		if (p->tok.kind != T_CMP) {
			free(lit.string);
			return fail_at(p, p->tok.start,
				       "expected a comparison (== != < <= > >=) after the value, "
				       "found %s",
				       describe(&p->tok));
		}
		n->op = flip(p->tok.op);
		r = next(p);
		if (r < 0 || p->tok.kind != T_IDENT) {
			free(lit.string);
			return r < 0 ? r
				     : fail_at(p, p->tok.start,
					       "expected a field or package name, found %s",
					       describe(&p->tok));
		}
		r = parse_operand(p, n);
		if (r < 0) {
			free(lit.string);
			return r;
		}
		if (lit.kind == T_STRING ? n->numeric : !n->numeric) {
			free(lit.string);
			return fail_at(p, lit_start,
				       "%s the value's type does not match the field's",
				       n->numeric ? "a number field compared with a string:"
						  : "a version string compared with a number:");
		}
		n->string = lit.string;
		n->number = lit.number;
		return 0;
	}
	if (p->tok.kind != T_IDENT)
		return fail_at(p, p->tok.start, "expected a condition, found %s",
			       describe(&p->tok));
	operand_text = strdup(p->tok.string);
	if (!operand_text)
		return -ENOMEM;
	r = parse_operand(p, n);
	if (r < 0)
		return r;
	if (p->tok.kind != T_CMP)
		return fail_at(p, p->tok.start,
			       "expected a comparison (== != < <= > >=) after %s, found %s",
			       operand_text, describe(&p->tok));
	n->op = p->tok.op;
	r = next(p);
	if (r < 0)
		return r;
	return parse_literal(p, n, operand_text);
}

static int parse_unary(struct parser *p, struct node **ret)
{
	size_t start = p->tok.start;
	struct node *n = NULL;
	int r;

	if (++p->depth > MATCH_MAX_DEPTH) {
		r = fail_at(p, start, "nested more than %d deep", MATCH_MAX_DEPTH);
		goto out;
	}
	if (p->tok.kind == T_NOT) {
		n = node_new(NODE_NOT, start);
		r = n ? next(p) : -ENOMEM;
		if (r == 0)
			r = parse_unary(p, &n->a);
	} else if (p->tok.kind == T_LPAREN) {
		r = next(p);
		if (r == 0)
			r = parse_or(p, &n);
		if (r == 0 && p->tok.kind != T_RPAREN)
			r = fail_at(p, p->tok.start,
				    "expected ')' to close the '(' at column %zu, "
				    "found %s",
				    start + 1, describe(&p->tok));
		if (r == 0) {
			n->start = start;
			r = next(p);
			n->end = p->tok.start;
			while (n->end > start && isspace((unsigned char)p->text[n->end - 1]))
				n->end--;
		}
		goto out;
	} else if (p->tok.kind == T_IDENT && strcmp(p->tok.string, "has") == 0) {
		n = node_new(NODE_HAS, start);
		r = n ? parse_call_argument(p, "has", &n->key, &n->key_start) : -ENOMEM;
	} else {
		n = node_new(NODE_CMP, start);
		r = n ? parse_compare(p, n) : -ENOMEM;
	}
	if (n) {
		/* The clause ends where the next token starts, less the blanks between. */
		n->end = p->tok.start;
		while (n->end > start && isspace((unsigned char)p->text[n->end - 1]))
			n->end--;
	}
out:
	p->depth--;
	if (r < 0) {
		node_free(n);
		return r;
	}
	*ret = n;
	return 0;
}

static int parse_binary(struct parser *p, enum token_kind op, struct node **ret)
{
	struct node *left = NULL;
	int r;

	r = op == T_OR ? parse_binary(p, T_AND, &left) : parse_unary(p, &left);
	while (r == 0 && p->tok.kind == op) {
		struct node *n = node_new(op == T_OR ? NODE_OR : NODE_AND, left->start);

		if (!n) {
			r = -ENOMEM;
			break;
		}
		n->a = left;
		left = n;
		r = next(p);
		if (r == 0)
			r = op == T_OR ? parse_binary(p, T_AND, &n->b) : parse_unary(p, &n->b);
		if (r == 0)
			n->end = n->b->end;
	}
	if (r < 0) {
		node_free(left);
		return r;
	}
	*ret = left;
	return 0;
}

static int parse_or(struct parser *p, struct node **ret)
{
	return parse_binary(p, T_OR, ret);
}

int match_parse(const char *text, struct match_expr **ret_expr, char **ret_error)
{
	struct parser p = {.text = text};
	struct match_expr *e;
	int r;

	e = calloc(1, sizeof(*e));
	if (!e || !(e->text = strdup(text))) {
		free(e);
		return -ENOMEM;
	}
	p.text = e->text;
	r = next(&p);
	if (r == 0 && p.tok.kind == T_END)
		r = fail_at(&p, 0, "an empty expression; e.g. os == \"debian-12\"");
	if (r == 0)
		r = parse_or(&p, &e->root);
	if (r == 0 && p.tok.kind != T_END)
		r = fail_at(&p, p.tok.start, "expected '&&', '||' or the end, found %s",
			    describe(&p.tok));
	free(p.tok.string);
	if (r < 0) {
		match_expr_free(e);
		if (ret_error)
			*ret_error = TAKE_PTR(p.error);
		free(p.error);
		return r;
	}
	*ret_expr = e;
	return 0;
}

/* ---- evaluation ---- */

static const char *meta_string(const struct match_candidate *c, const char *key)
{
	return json_string_value(json_object_get(c->metadata, key));
}

static const char *package_version(const struct match_candidate *c, const char *name)
{
	return json_string_value(json_object_get(json_object_get(c->metadata, "packages"), name));
}

static const char *library_version(const struct match_candidate *c, const char *soname)
{
	json_t *lib = json_object_get(json_object_get(c->metadata, "libraries"), soname);

	return json_string_value(json_object_get(lib, "version"));
}

/* A binary the spec asked for, by its image path or its file name. */
static bool has_binary(const struct match_candidate *c, const char *name)
{
	const json_t *bins = json_object_get(c->metadata, "binaries");
	size_t i;
	json_t *b;

	json_array_foreach(bins, i, b)
	{
		const char *path = json_string_value(b), *base;

		if (!path)
			continue;
		base = strrchr(path, '/');
		if (strcmp(path, name) == 0 || (base && strcmp(base + 1, name) == 0))
			return true;
	}
	return false;
}

/* The operand's value in c: a string (NULL when c lacks it) or a number. */
static const char *operand_string(const struct node *n, const struct match_candidate *c)
{
	switch (n->operand) {
	case OPERAND_NAME:
		return c->name;
	case OPERAND_OS:
		return meta_string(c, "os");
	case OPERAND_ARCH:
		return meta_string(c, "arch");
	case OPERAND_KERNEL:
		return meta_string(c, "kernel_release");
	case OPERAND_OWNER:
		return c->owner;
	case OPERAND_DESCRIPTION:
		return meta_string(c, "description");
	case OPERAND_PACKAGE:
		return package_version(c, n->key);
	case OPERAND_LIBRARY:
		return library_version(c, n->key);
	default:
		return NULL;
	}
}

static uint64_t operand_number(const struct node *n, const struct match_candidate *c)
{
	switch (n->operand) {
	case OPERAND_VERSION:
		return c->version;
	case OPERAND_SIZE:
		return c->size_bytes;
	case OPERAND_CREATED:
		return c->created_s < 0 ? 0 : (uint64_t)c->created_s;
	default:
		return 0;
	}
}

static bool holds(enum cmp_op op, int cmp)
{
	switch (op) {
	case CMP_EQ:
		return cmp == 0;
	case CMP_NE:
		return cmp != 0;
	case CMP_LT:
		return cmp < 0;
	case CMP_LE:
		return cmp <= 0;
	case CMP_GT:
		return cmp > 0;
	case CMP_GE:
		return cmp >= 0;
	}
	return false;
}

/* Packages carry Debian versions; kernel releases and the rest are plain version strings. */
static int compare_versions(enum operand_kind operand, const char *a, const char *b)
{
	return operand == OPERAND_PACKAGE ? debversion_compare(a, b)
					  : debversion_compare_plain(a, b);
}

static bool eval_compare(const struct node *n, const struct match_candidate *c)
{
	const char *v;

	if (n->numeric) {
		uint64_t x = operand_number(n, c);

		return holds(n->op, x < n->number ? -1 : x > n->number);
	}
	v = operand_string(n, c);
	if (!v)
		return false;
	if (n->op == CMP_EQ || n->op == CMP_NE)
		return holds(n->op, strcmp(v, n->string));
	return holds(n->op, compare_versions(n->operand, v, n->string));
}

static bool eval(const struct node *n, const struct match_candidate *c)
{
	switch (n->kind) {
	case NODE_OR:
		return eval(n->a, c) || eval(n->b, c);
	case NODE_AND:
		return eval(n->a, c) && eval(n->b, c);
	case NODE_NOT:
		return !eval(n->a, c);
	case NODE_HAS:
		return package_version(c, n->key) || library_version(c, n->key) ||
		       has_binary(c, n->key);
	case NODE_CMP:
		return eval_compare(n, c);
	}
	return false;
}

bool match_eval(const struct match_expr *e, const struct match_candidate *c)
{
	return eval(e->root, c);
}

/* ---- names against candidates ---- */

static bool known_anywhere(const char *name, const struct match_candidate *c, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (package_version(&c[i], name) || library_version(&c[i], name))
			return true;
	return false;
}

static int check(const struct match_expr *e, const struct node *n, const struct match_candidate *c,
		 size_t count, char **ret_error)
{
	int r;

	if (!n)
		return 0;
	r = check(e, n->a, c, count, ret_error);
	if (r == 0)
		r = check(e, n->b, c, count, ret_error);
	if (r == 0 && n->kind == NODE_CMP && n->bare_package && !known_anywhere(n->key, c, count))
		return error_set(ret_error, -EINVAL,
				 "column %zu: unknown name '%s': not a field (name, os, arch, "
				 "kernel, owner, description, version, size, created) and no "
				 "candidate image has a package by that name; write "
				 "has(\"%s\") to ask for it, or check its spelling",
				 n->key_start + 1, n->key, n->key);
	return r;
}

int match_check(const struct match_expr *e, const struct match_candidate *c, size_t n,
		char **ret_error)
{
	return check(e, e->root, c, n, ret_error);
}

/* ---- explanations ---- */

struct text {
	char *buf;
	size_t len, cap;
	bool oom;
};

static void text_add(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_add(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (t->oom)
		return;
	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || t->len + (size_t)n + 1 > t->cap) {
		size_t cap = (t->len + (size_t)(n < 0 ? 0 : n) + 1) * 2;
		char *b = realloc(t->buf, cap);

		if (n < 0 || !b) {
			t->oom = true;
			return;
		}
		t->buf = b;
		t->cap = cap;
	}
	va_start(ap, fmt);
	vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
	va_end(ap);
	t->len += (size_t)n;
}

static void describe_value(const struct node *n, const struct match_candidate *c, struct text *t)
{
	const char *v;

	if (n->numeric) {
		text_add(t, "%" PRIu64, operand_number(n, c));
		return;
	}
	v = operand_string(n, c);
	if (v)
		text_add(t, "\"%s\"", v);
	else if (n->operand == OPERAND_PACKAGE)
		text_add(t, "no package %s", n->key);
	else if (n->operand == OPERAND_LIBRARY)
		text_add(t, "no library %s", n->key);
	else
		text_add(t, "not recorded");
}

/* Adds the clauses of n that make it false for c; returns how many. */
static int explain(const struct match_expr *e, const struct node *n,
		   const struct match_candidate *c, struct text *t)
{
	int count = 0;

	if (eval(n, c))
		return 0;
	switch (n->kind) {
	case NODE_AND:
		return explain(e, n->a, c, t) + explain(e, n->b, c, t);
	case NODE_OR:
		/* Every alternative failed: each is a reason. */
		count = explain(e, n->a, c, t);
		return count + explain(e, n->b, c, t);
	default:
		break;
	}
	if (t->len)
		text_add(t, "; ");
	text_add(t, "%.*s", (int)(n->end - n->start), e->text + n->start);
	if (n->kind == NODE_CMP) {
		text_add(t, " (");
		if (n->operand == OPERAND_PACKAGE || n->operand == OPERAND_LIBRARY) {
			if (operand_string(n, c))
				text_add(t, "%s is ", n->key);
		} else {
			for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
				if (fields[i].kind == n->operand)
					text_add(t, "%s is ", fields[i].name);
		}
		describe_value(n, c, t);
		text_add(t, ")");
	} else if (n->kind == NODE_HAS) {
		text_add(t, " (neither a package, a library nor a binary of this version)");
	} else if (n->kind == NODE_NOT) {
		text_add(t, " (true for this version)");
	}
	return 1;
}

int match_explain(const struct match_expr *e, const struct match_candidate *c, char **ret_text)
{
	struct text t = {0};
	int n = explain(e, e->root, c, &t);

	if (!t.buf && !t.oom)
		t.buf = strdup("");
	if (t.oom || !t.buf) {
		free(t.buf);
		return -ENOMEM;
	}
	*ret_text = t.buf;
	return n;
}

/* ---- ranking ---- */

int match_rank_parse(const char *text, enum match_rank *ret_rank, const char **ret_field)
{
	*ret_field = NULL;
	if (strcmp(text, "newest") == 0) {
		*ret_rank = MATCH_RANK_NEWEST;
		return 0;
	}
	if (strcmp(text, "smallest") == 0) {
		*ret_rank = MATCH_RANK_SMALLEST;
		return 0;
	}
	if (!text[0])
		return -EINVAL;
	for (const char *p = text; *p; p++)
		if (!ident_char(*p))
			return -EINVAL;
	*ret_rank = MATCH_RANK_FIELD;
	*ret_field = text;
	return 0;
}

struct sort_key {
	enum match_rank rank;
	struct node field; /* MATCH_RANK_FIELD: an operand to read */
};

static int newest_first(const struct match_candidate *a, const struct match_candidate *b)
{
	if (a->created_s != b->created_s)
		return a->created_s > b->created_s ? -1 : 1;
	if (a->version != b->version)
		return a->version > b->version ? -1 : 1;
	return strcmp(a->name, b->name);
}

static int compare_by(const struct sort_key *k, const struct match_candidate *a,
		      const struct match_candidate *b)
{
	if (k->rank == MATCH_RANK_SMALLEST && a->size_bytes != b->size_bytes)
		return a->size_bytes < b->size_bytes ? -1 : 1;
	if (k->rank == MATCH_RANK_FIELD) {
		if (k->field.numeric) {
			uint64_t x = operand_number(&k->field, a), y = operand_number(&k->field, b);

			if (x != y)
				return x > y ? -1 : 1;
		} else {
			const char *x = operand_string(&k->field, a),
				   *y = operand_string(&k->field, b);
			/* highest first; absent last */
			int r = compare_versions(k->field.operand, y, x);

			if (r)
				return r;
		}
	}
	return newest_first(a, b);
}

static int compare_sort(const void *a, const void *b, void *key)
{
	return compare_by(key, a, b);
}

void match_sort(struct match_candidate *c, size_t n, enum match_rank rank, const char *field)
{
	struct sort_key k = {.rank = rank};

	if (rank == MATCH_RANK_FIELD) {
		k.field.operand = OPERAND_PACKAGE;
		k.field.key = (char *)field;
		for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
			if (strcmp(field, fields[i].name) == 0) {
				k.field.operand = fields[i].kind;
				k.field.numeric = fields[i].numeric;
			}
	}
	qsort_r(c, n, sizeof(*c), compare_sort, &k);
}
