/*
 * json.h - the JSON reader of the intake's hot path.  fbr_json_loadb() reads a request body and
 * builds the same jansson tree that json_loadb(buf, len, JSON_REJECT_DUPLICATES, err) of jansson
 * 2.14 builds, with jansson's own constructors, but scans the bytes in runs instead of through
 * jansson's per-character stream.  It accepts exactly the inputs jansson accepts and refuses the
 * others (tests/test_json.c compares the two on a table, tests/fuzz/fuzz_json.c on anything):
 *
 *   - the top level is an object or an array; whitespace is space, tab, CR and LF only; nothing
 *     but whitespace may follow the top-level value; empty input is refused;
 *   - a duplicate key in one object is refused;
 *   - strings are UTF-8 (Unicode table 3-7: no overlong forms, no surrogates, nothing past
 *     U+10FFFF) without raw bytes below 0x20; escapes are \" \\ \/ \b \f \n \r \t and \uXXXX,
 *     a high surrogate escape must be followed by a low one, a lone low one is refused, and
 *     \u0000 is refused in keys and values (jansson without JSON_ALLOW_NUL);
 *   - numbers follow jansson's grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?; without
 *     fraction and exponent it is an integer and must fit json_int_t, otherwise a real read as
 *     strtod() reads it, refused when it overflows to infinity;
 *   - values nest at most 2048 deep (jansson's JSON_PARSER_MAX_DEPTH, counting the scalars);
 *   - one jansson quirk is kept on purpose, for the sake of "exactly": a single NUL byte right
 *     after a number or a true/false/null inside a container is skipped (jansson's lexer pushes
 *     the NUL back into a stream buffer that takes NUL for "empty").
 *
 * The daemon runs in the C locale (nothing calls setlocale), so strtod's decimal point is '.'.
 */
#ifndef FIREBRIDGE_JSON_H
#define FIREBRIDGE_JSON_H

#include <stddef.h>

#include <jansson.h>

/* Parses buf[0..len) (not NUL-terminated; NULL is refused).  Returns a new reference to the
 * object or array, or NULL; then, when err is not NULL, err->text says what was wrong and
 * err->position, err->line and err->column where (byte offset, 1-based line, 1-based byte
 * column). */
json_t *fbr_json_loadb(const char *buf, size_t len, json_error_t *err);

/*
 * The short string values that repeat from one body to the next (message types, tools, hosts,
 * rooms) made once: fbr_json_loadb_shared() gives a value of at most 12 bytes the json_t it
 * gave for the same text before, while that text holds its slot among 128.  Such a value is
 * referenced by several trees, so whoever holds a tree read this way replaces values
 * (json_object_set) and never changes a string in place (json_string_set).  One table per
 * thread; fbr_json_strings_free() drops its references and sets *strings to NULL.
 */
struct fbr_json_strings;
struct fbr_json_strings *fbr_json_strings_new(void);
void fbr_json_strings_free(struct fbr_json_strings **strings);

/* fbr_json_loadb() with string values taken from strings (borrowed; NULL: none); the same tree
 * as far as json_equal() and the text written from it can tell. */
json_t *fbr_json_loadb_shared(const char *buf, size_t len, json_error_t *err,
                              struct fbr_json_strings *strings);

/*
 * json_dumps(json, flags) in memory for free(): the text, NUL-terminated, a new allocation, or
 * NULL when jansson cannot write the value.  jansson's own json_dumps() returns a block of
 * whatever functions jansson allocates with; in the daemon those are slab.c's, whose blocks
 * free() must never see (slab.h), so modules dump through this.
 */
char *fbr_json_dumps(const json_t *json, size_t flags);

#endif
