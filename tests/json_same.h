/*
 * json_same.h - the one comparison of fbr_json_loadb() (src/json.c) with jansson's
 * json_loadb(buf, len, JSON_REJECT_DUPLICATES, ...), shared by tests/test_json.c and the
 * differential fuzz target tests/fuzz/fuzz_json.c.  Header-only because the fuzz targets link
 * neither Check nor the test support library.
 */
#ifndef FBR_TEST_JSON_SAME_H
#define FBR_TEST_JSON_SAME_H

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "firebridge/json.h"

/* Both trees equal: json_equal (which compares types, so an integer is never a real) and the
 * same compact text with 17 significant digits (member order and the sign of a zero). */
static inline int fbr_json_trees_same(const json_t *a, const json_t *b)
{
    if (!json_equal(a, b))
        return 0;
    size_t flags = JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17);
    char *da = json_dumps(a, flags), *db = json_dumps(b, flags);
    int same = da && db && strcmp(da, db) == 0;
    free(da);
    free(db);
    return same;
}

/* Parses buf[0..len) both ways.  Returns 1 when both refuse it, 2 when both accept it and build
 * the same tree, 0 when they disagree; *why (static text) then says how. */
static inline int fbr_json_parsers_agree(const char *buf, size_t len, const char **why)
{
    json_error_t je, fe;
    json_t *j = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    json_t *f = fbr_json_loadb(buf, len, &fe);
    int r;
    if (!j && !f) {
        r = fe.text[0] ? 1 : 0;
        *why = "both refuse, but fbr_json_loadb gave no error text";
    } else if (!j || !f) {
        r = 0;
        *why = j ? "jansson accepts, fbr_json_loadb refuses"
                 : "fbr_json_loadb accepts, jansson refuses";
    } else {
        r = fbr_json_trees_same(j, f) ? 2 : 0;
        *why = "both accept, different trees";
    }
    json_decref(j);
    json_decref(f);
    return r;
}

#endif
