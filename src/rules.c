/*
 * rules.c - the Rules Engine.  Compiles the `rules` array at load (wildcards kept as text,
 * regexes compiled once by Oniguruma in Java syntax and anchored to the whole value, `set` and
 * annotation values compiled as RULE templates) and runs it on every alert between intake and the
 * incident table: each matching rule renders its values against the alert as it stood, then
 * writes them.  Regex matching carries a retry limit so a catastrophic pattern costs a bounded
 * amount of work and only skips its rule.
 */
#include "firebridge/rules.h"

#include <oniguruma.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/config.h" /* fbr_config_check_item: the one section checker */
#include "firebridge/log.h"
#include "firebridge/template.h"

#define WILDCARD_MAX 1024 /* characters of a wildcard pattern */
#define MAX_CAPTURES 10   /* \0 .. \9 */

struct cond {
    char *field;
    size_t field_len;
    int regex;
    char *pattern;
    size_t pattern_len;
    OnigRegex re; /* regex only: "(?:pattern)\z", matched at offset 0 */
};

struct set_op {
    char *field;          /* target; annotations are literal top-level keys */
    int literal;
    size_t max_chars;     /* 0: unbounded */
    struct fbr_tpl *tpl;  /* FBR_TPL_RULE */
};

struct rule {
    char *name;
    int enabled;
    int stop;
    struct cond *conds;
    size_t nconds;
    struct set_op *ops;
    size_t nops;
};

struct fbr_rules {
    struct rule *v;
    size_t n;
    unsigned long retry_limit;
    OnigRegion *region;
    OnigMatchParam *mp;
    struct fbr_render render;
    json_t **pending; /* rendered values of the rule being applied */
    size_t pending_cap;
};

static int onig_ready;

static void onig_setup(void)
{
    if (onig_ready)
        return;
    OnigEncoding use[] = {ONIG_ENCODING_UTF8};
    onig_initialize(use, 1);
    onig_ready = 1;
}

/* Number of UTF-8 characters in s (continuation bytes are not counted). */
static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xC0) != 0x80;
    return n;
}

/* Length of the UTF-8 sequence starting at s, at most `left` and at least 1. */
static size_t utf8_step(const char *s, size_t left)
{
    unsigned char c = (unsigned char)*s;
    size_t n = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return n < left ? n : left;
}

static inline unsigned char ascii_lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
}

int fbr_wildcard_match(const char *pat, size_t plen, const char *s, size_t slen)
{
    size_t p = 0, i = 0;
    size_t star_p = SIZE_MAX, star_i = 0;
    /* Greedy scan with one resume point: the last `*` seen.  Earlier stars never need revisiting
     * because the last one can absorb anything they could, so the cost is O(plen * slen). */
    while (i < slen) {
        if (p < plen && pat[p] == '*') {
            star_p = ++p;
            star_i = i;
            continue;
        }
        if (p < plen && pat[p] == '?') {
            p++;
            i += utf8_step(s + i, slen - i);
            continue;
        }
        if (p < plen && ascii_lower((unsigned char)pat[p]) == ascii_lower((unsigned char)s[i])) {
            p++;
            i++;
            continue;
        }
        if (star_p == SIZE_MAX)
            return 0;
        p = star_p;
        star_i += utf8_step(s + star_i, slen - star_i);
        i = star_i;
    }
    while (p < plen && pat[p] == '*')
        p++;
    return p == plen;
}

json_t *fbr_alert_lookup(json_t *alert, const char *field, size_t len)
{
    if (!json_is_object(alert))
        return NULL;
    json_t *v = json_object_getn(alert, field, len);
    if (v || !memchr(field, '.', len))
        return v;
    json_t *cur = alert;
    size_t at = 0;
    while (cur && at <= len) {
        const char *dot = memchr(field + at, '.', len - at);
        size_t seg = dot ? (size_t)(dot - field) - at : len - at;
        if (json_is_object(cur)) {
            cur = json_object_getn(cur, field + at, seg);
        } else if (json_is_array(cur) && seg > 0 && seg < 10) {
            size_t idx = 0;
            for (size_t k = 0; k < seg; k++) {
                char c = field[at + k];
                if (c < '0' || c > '9')
                    return NULL;
                idx = idx * 10 + (size_t)(c - '0');
            }
            cur = json_array_get(cur, idx);
        } else {
            return NULL;
        }
        if (!dot)
            return cur;
        at += seg + 1;
    }
    return NULL;
}

/* Text form of a scalar for matching; NULL for null, objects, arrays. */
static const char *scalar_text(json_t *v, char *buf, size_t buflen, size_t *len)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        *len = json_string_length(v);
        return json_string_value(v);
    case JSON_INTEGER:
        *len = (size_t)snprintf(buf, buflen, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return buf;
    case JSON_REAL:
        *len = (size_t)snprintf(buf, buflen, "%.15g", json_real_value(v));
        return buf;
    case JSON_TRUE:
        *len = 4;
        return "true";
    case JSON_FALSE:
        *len = 5;
        return "false";
    default:
        return NULL;
    }
}

/* ---- compile ---------------------------------------------------------------------------- */

/* The tables of the objects a rule is made of.  FBR_F_ANY rows are checked for their meaning
 * by the compile functions below, which word those messages themselves. */
static const struct fbr_field rule_fields[] = {
    {"name", FBR_F_STRING, 0, 0, 0},     {"enabled", FBR_F_BOOL, 0, 0, 0},
    {"when", FBR_F_ANY, 0, 0, 0},        {"set", FBR_F_OBJECT, 0, 0, 0},
    {"annotations", FBR_F_ARRAY, 0, 0, 0}, {"stop", FBR_F_BOOL, 0, 0, 0},
};
static const struct fbr_field cond_fields[] = {
    {"field", FBR_F_ANY, 0, 0, 0},
    {"match", FBR_F_ANY, 0, 0, 0},
    {"pattern", FBR_F_ANY, 0, 0, 0},
};
static const struct fbr_field annotation_fields[] = {
    {"type", FBR_F_ANY, 0, 0, 0},
    {"title", FBR_F_ANY, 0, 0, 0},
    {"value", FBR_F_ANY, 0, 0, 0},
};

/* A boolean the table has checked: def when absent or of another type (already reported). */
static int get_bool(json_t *obj, const char *key, int def)
{
    json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

static int compile_regex(struct cond *c, const char *path, struct fbr_cfgerr *errs)
{
    OnigErrorInfo einfo;
    OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
    const OnigUChar *pat = (const OnigUChar *)c->pattern;
    /* The pattern is compiled alone first so that a stray ')' cannot close the anchoring group
     * below and smuggle in a different meaning. */
    OnigRegex probe;
    int rc = onig_new(&probe, pat, pat + c->pattern_len, ONIG_OPTION_NONE, ONIG_ENCODING_UTF8,
                      ONIG_SYNTAX_JAVA, &einfo);
    if (rc != ONIG_NORMAL) {
        onig_error_code_to_str(msg, rc, &einfo);
        fbr_cfgerr_add(errs, path, "invalid regex: %s", (const char *)msg);
        return -1;
    }
    onig_free(probe);
    size_t wlen = c->pattern_len + 8;
    char *wrapped = fbr_xmalloc(wlen + 1);
    memcpy(wrapped, "(?:", 3);
    memcpy(wrapped + 3, c->pattern, c->pattern_len);
    memcpy(wrapped + 3 + c->pattern_len, ")\\z", 3);
    wlen = c->pattern_len + 6;
    rc = onig_new(&c->re, (OnigUChar *)wrapped, (OnigUChar *)wrapped + wlen, ONIG_OPTION_NONE,
                  ONIG_ENCODING_UTF8, ONIG_SYNTAX_JAVA, &einfo);
    free(wrapped);
    if (rc != ONIG_NORMAL) {
        onig_error_code_to_str(msg, rc, &einfo);
        fbr_cfgerr_add(errs, path, "invalid regex: %s", (const char *)msg);
        c->re = NULL;
        return -1;
    }
    return 0;
}

static int compile_cond(json_t *j, struct cond *c, const char *path, size_t max_pattern,
                        struct fbr_cfgerr *errs)
{
    char p[320];
    int bad = fbr_config_check_item(j, path, cond_fields, FBR_ARRAY_LEN(cond_fields), errs) != 0;
    if (!json_is_object(j))
        return -1;
    json_t *field = json_object_get(j, "field");
    json_t *match = json_object_get(j, "match");
    json_t *pattern = json_object_get(j, "pattern");
    snprintf(p, sizeof(p), "%s.field", path);
    if (!json_is_string(field) || json_string_length(field) == 0) {
        fbr_cfgerr_add(errs, p, "must be a non-empty string");
        bad = 1;
    } else {
        c->field = fbr_xstrndup(json_string_value(field), json_string_length(field));
        c->field_len = json_string_length(field);
    }
    snprintf(p, sizeof(p), "%s.match", path);
    if (match && json_is_string(match) && strcmp(json_string_value(match), "regex") == 0) {
        c->regex = 1;
    } else if (match && !(json_is_string(match) &&
                          strcmp(json_string_value(match), "wildcard") == 0)) {
        fbr_cfgerr_add(errs, p, "must be \"wildcard\" or \"regex\"");
        bad = 1;
    }
    snprintf(p, sizeof(p), "%s.pattern", path);
    if (!json_is_string(pattern)) {
        fbr_cfgerr_add(errs, p, "must be a string");
        return -1;
    }
    c->pattern_len = json_string_length(pattern);
    c->pattern = fbr_xstrndup(json_string_value(pattern), c->pattern_len);
    size_t chars = utf8_chars(c->pattern, c->pattern_len);
    size_t limit = c->regex ? max_pattern : WILDCARD_MAX;
    if (chars > limit) {
        fbr_cfgerr_add(errs, p, "longer than %zu characters", limit);
        return -1;
    }
    if (c->regex && !bad && compile_regex(c, p, errs) != 0)
        return -1;
    return bad ? -1 : 0;
}

static int add_op(struct rule *r, const char *field, int literal, size_t max_chars,
                  json_t *value, const char *path, struct fbr_cfgerr *errs)
{
    if (!json_is_string(value)) {
        fbr_cfgerr_add(errs, path, "must be a string (a value template)");
        return -1;
    }
    char err[200];
    struct fbr_tpl *tpl = NULL;
    if (fbr_tpl_compile(json_string_value(value), json_string_length(value), FBR_TPL_RULE, &tpl,
                        err, sizeof(err)) != FBR_OK) {
        fbr_cfgerr_add(errs, path, "%s", err);
        return -1;
    }
    r->ops = fbr_xrealloc(r->ops, (r->nops + 1) * sizeof(*r->ops));
    r->ops[r->nops++] = (struct set_op){fbr_xstrdup(field), literal, max_chars, tpl};
    return 0;
}

static int compile_annotation(json_t *a, struct rule *r, const char *path,
                              struct fbr_cfgerr *errs)
{
    char p[320];
    int bad = fbr_config_check_item(a, path, annotation_fields, FBR_ARRAY_LEN(annotation_fields),
                                    errs) != 0;
    if (!json_is_object(a))
        return -1;
    const char *type = json_string_value(json_object_get(a, "type"));
    const char *letter = NULL;
    if (type && strcmp(type, "url") == 0)
        letter = "u";
    else if (type && strcmp(type, "image") == 0)
        letter = "i";
    else if (type && strcmp(type, "note") == 0)
        letter = "s";
    if (!letter) {
        snprintf(p, sizeof(p), "%s.type", path);
        fbr_cfgerr_add(errs, p, "must be \"url\", \"image\" or \"note\"");
        bad = 1;
    }
    json_t *title = json_object_get(a, "title");
    if (!json_is_string(title) || json_string_length(title) == 0 ||
        memchr(json_string_value(title), '\0', json_string_length(title))) {
        snprintf(p, sizeof(p), "%s.title", path);
        fbr_cfgerr_add(errs, p, "must be a non-empty string");
        bad = 1;
    }
    if (bad)
        return -1;
    char key[512];
    snprintf(key, sizeof(key), "vo_annotate.%s.%s", letter, json_string_value(title));
    snprintf(p, sizeof(p), "%s.value", path);
    return add_op(r, key, 1, FBR_RULES_ANNOTATION_MAX, json_object_get(a, "value"), p, errs);
}

static void rule_free(struct rule *r)
{
    free(r->name);
    for (size_t i = 0; i < r->nconds; i++) {
        free(r->conds[i].field);
        free(r->conds[i].pattern);
        if (r->conds[i].re)
            onig_free(r->conds[i].re);
    }
    free(r->conds);
    for (size_t i = 0; i < r->nops; i++) {
        free(r->ops[i].field);
        fbr_tpl_unref(&r->ops[i].tpl);
    }
    free(r->ops);
}

/*
 * A capture reference (`${{\N}}`) in a rule's templates needs a group N in the rule's first regex
 * condition, the only one whose groups are kept: without it the value would be empty on every
 * alert, which --check-config can tell before start.  Returns 0, or -1 with errors added.
 */
static int check_captures(const struct rule *r, const char *path, struct fbr_cfgerr *errs)
{
    const struct cond *re = NULL;
    for (size_t i = 0; i < r->nconds && !re; i++)
        if (r->conds[i].regex && r->conds[i].re)
            re = &r->conds[i];
    int groups = re ? onig_number_of_captures(re->re) : -1;
    int bad = 0;
    for (size_t i = 0; i < r->nops; i++) {
        unsigned want = fbr_tpl_max_capture(r->ops[i].tpl);
        if (want == 0 || (int)want <= groups)
            continue;
        if (groups < 0)
            fbr_cfgerr_add(errs, path, "\"%s\" uses ${{\\%u}} but the rule has no regex condition "
                           "(a wildcard has no capture groups)", r->ops[i].field, want);
        else
            fbr_cfgerr_add(errs, path, "\"%s\" uses ${{\\%u}} but the regex of the rule's first "
                           "regex condition has %d capture group(s)", r->ops[i].field, want,
                           groups);
        bad = 1;
    }
    return bad ? -1 : 0;
}

static int compile_rule(json_t *j, struct rule *r, size_t idx, size_t max_pattern,
                        struct fbr_cfgerr *errs)
{
    char path[64], p[256];
    size_t nerr_before = errs->n;
    snprintf(path, sizeof(path), "rules[%zu]", idx);
    int bad = fbr_config_check_item(j, path, rule_fields, FBR_ARRAY_LEN(rule_fields), errs) != 0;
    if (!json_is_object(j))
        return -1;
    json_t *name = json_object_get(j, "name");
    r->name = fbr_xstrdup(json_is_string(name) ? json_string_value(name) : path);
    r->enabled = get_bool(j, "enabled", 1);
    r->stop = get_bool(j, "stop", 0);

    json_t *when = json_object_get(j, "when");
    snprintf(p, sizeof(p), "%s.when", path);
    if (!when || (json_is_array(when) && json_array_size(when) == 0)) {
        fbr_cfgerr_add(errs, p, "missing: a condition or a non-empty array of conditions");
        bad = 1;
    } else if (json_is_array(when)) {
        r->nconds = json_array_size(when);
        r->conds = fbr_xcalloc(r->nconds, sizeof(*r->conds));
        for (size_t i = 0; i < r->nconds; i++) {
            snprintf(p, sizeof(p), "%s.when[%zu]", path, i);
            bad |= compile_cond(json_array_get(when, i), &r->conds[i], p, max_pattern, errs) != 0;
        }
    } else {
        r->nconds = 1;
        r->conds = fbr_xcalloc(1, sizeof(*r->conds));
        bad |= compile_cond(when, &r->conds[0], p, max_pattern, errs) != 0;
    }

    json_t *set = json_object_get(j, "set");
    if (json_is_object(set)) {
        const char *key;
        json_t *v;
        json_object_foreach (set, key, v) {
            snprintf(p, sizeof(p), "%s.set.%s", path, key);
            if (key[0] == '\0') {
                fbr_cfgerr_add(errs, p, "empty field name");
                bad = 1;
                continue;
            }
            bad |= add_op(r, key, 0, 0, v, p, errs) != 0;
        }
    }
    json_t *ann = json_object_get(j, "annotations");
    if (json_is_array(ann)) {
        for (size_t i = 0; i < json_array_size(ann); i++) {
            snprintf(p, sizeof(p), "%s.annotations[%zu]", path, i);
            bad |= compile_annotation(json_array_get(ann, i), r, p, errs) != 0;
        }
    }
    if (!bad)
        bad |= check_captures(r, path, errs) != 0;
    return bad || errs->n != nerr_before ? -1 : 0;
}

int fbr_rules_compile(json_t *rules, const struct fbr_rules_opts *opts, struct fbr_rules **out,
                      struct fbr_cfgerr *errs)
{
    *out = NULL;
    onig_setup();
    size_t max_pattern = opts && opts->max_pattern_len ? opts->max_pattern_len
                                                      : FBR_RULES_MAX_PATTERN;
    if (rules && !json_is_array(rules)) {
        fbr_cfgerr_add(errs, "rules", "must be an array");
        return FBR_INVALID;
    }
    struct fbr_rules *rs = fbr_xcalloc(1, sizeof(*rs));
    rs->retry_limit = opts && opts->retry_limit ? opts->retry_limit : FBR_RULES_RETRY_LIMIT;
    rs->n = rules ? json_array_size(rules) : 0;
    rs->v = fbr_xcalloc(rs->n ? rs->n : 1, sizeof(*rs->v));
    int bad = 0;
    for (size_t i = 0; i < rs->n; i++)
        bad |= compile_rule(json_array_get(rules, i), &rs->v[i], i, max_pattern, errs) != 0;
    rs->region = onig_region_new();
    rs->mp = onig_new_match_param();
    onig_initialize_match_param(rs->mp);
    onig_set_retry_limit_in_match_of_match_param(rs->mp, rs->retry_limit);
    fbr_render_init(&rs->render);
    if (bad) {
        fbr_rules_free(&rs);
        return FBR_INVALID;
    }
    *out = rs;
    return FBR_OK;
}

void fbr_rules_free(struct fbr_rules **rules)
{
    struct fbr_rules *rs = *rules;
    if (!rs)
        return;
    for (size_t i = 0; i < rs->n; i++)
        rule_free(&rs->v[i]);
    free(rs->v);
    if (rs->region)
        onig_region_free(rs->region, 1);
    if (rs->mp)
        onig_free_match_param(rs->mp);
    fbr_render_free(&rs->render);
    free(rs->pending);
    free(rs);
    *rules = NULL;
}

size_t fbr_rules_count(const struct fbr_rules *rules)
{
    return rules ? rules->n : 0;
}

/* ---- apply ------------------------------------------------------------------------------ */

enum cond_result { COND_NO, COND_YES, COND_LIMIT, COND_ERROR };

/* Writes value under field: an existing literal key or an annotation key as it is, else through
 * the dotted path when its parent object exists, else as a new top-level key.  Steals value. */
static void set_field(json_t *alert, const struct set_op *op, json_t *value)
{
    if (!op->literal && !json_object_get(alert, op->field)) {
        const char *dot = strrchr(op->field, '.');
        if (dot && dot != op->field && dot[1]) {
            json_t *parent = fbr_alert_lookup(alert, op->field, (size_t)(dot - op->field));
            if (json_is_object(parent)) {
                json_object_set_new(parent, dot + 1, value);
                return;
            }
        }
    }
    json_object_set_new(alert, op->field, value);
}

/* Cuts s to at most max UTF-8 characters; returns the byte length kept. */
static size_t utf8_truncate(const char *s, size_t len, size_t max)
{
    size_t chars = 0;
    for (size_t i = 0; i < len; i++) {
        if (((unsigned char)s[i] & 0xC0) != 0x80 && chars++ == max)
            return i;
    }
    return len;
}

size_t fbr_rules_apply(struct fbr_rules *rs, json_t *alert, struct fbr_rules_stats *stats)
{
    struct fbr_rules_stats dummy;
    if (!stats)
        stats = &dummy;
    stats->alerts++;
    if (!rs || !json_is_object(alert))
        return 0;
    size_t matched = 0;
    for (size_t ri = 0; ri < rs->n; ri++) {
        struct rule *r = &rs->v[ri];
        if (!r->enabled)
            continue;
        struct fbr_slice caps[MAX_CAPTURES];
        unsigned ncaps = 0;
        char capbuf[64];
        enum cond_result res = COND_YES;
        for (size_t ci = 0; ci < r->nconds && res == COND_YES; ci++) {
            struct cond *c = &r->conds[ci];
            json_t *v = fbr_alert_lookup(alert, c->field, c->field_len);
            char numbuf[64];
            size_t len = 0;
            /* Only the first regex condition's groups are kept; its number text must outlive
             * the loop, so it goes to capbuf. */
            char *buf = c->regex && ncaps == 0 ? capbuf : numbuf;
            const char *text = v ? scalar_text(v, buf, sizeof(numbuf), &len) : NULL;
            if (!text) {
                res = COND_NO;
                break;
            }
            if (!c->regex) {
                res = fbr_wildcard_match(c->pattern, c->pattern_len, text, len) ? COND_YES
                                                                                 : COND_NO;
                continue;
            }
            const OnigUChar *str = (const OnigUChar *)text;
            onig_region_clear(rs->region);
            int m = onig_match_with_param(c->re, str, str + len, str, rs->region,
                                          ONIG_OPTION_NONE, rs->mp);
            if (m >= 0) {
                if (ncaps == 0) {
                    int nr = rs->region->num_regs;
                    for (int g = 0; g < nr && g < MAX_CAPTURES; g++) {
                        int b = rs->region->beg[g], e = rs->region->end[g];
                        caps[g] = b >= 0 ? (struct fbr_slice){text + b, (size_t)(e - b)}
                                         : (struct fbr_slice){"", 0};
                    }
                    ncaps = (unsigned)(nr < MAX_CAPTURES ? nr : MAX_CAPTURES);
                }
            } else if (m == ONIG_MISMATCH) {
                res = COND_NO;
            } else if (m == ONIGERR_RETRY_LIMIT_IN_MATCH_OVER ||
                       m == ONIGERR_RETRY_LIMIT_IN_SEARCH_OVER ||
                       m == ONIGERR_MATCH_STACK_LIMIT_OVER) {
                res = COND_LIMIT;
            } else {
                res = COND_ERROR;
            }
        }
        if (res == COND_LIMIT) {
            stats->regex_limit++;
            fbr_log_warn("rule \"%s\" skipped: regex exceeded its matching budget", r->name);
            continue;
        }
        if (res == COND_ERROR) {
            stats->errors++;
            continue;
        }
        if (res != COND_YES)
            continue;

        /* Render every value against the alert as it stands, then write them all. */
        if (rs->pending_cap < r->nops) {
            rs->pending = fbr_xrealloc(rs->pending, r->nops * sizeof(*rs->pending));
            rs->pending_cap = r->nops;
        }
        struct fbr_tpl_scope scope = {.event = NULL, .alert = alert, .captures = caps,
                                      .ncaptures = ncaps};
        size_t done = 0;
        int failed = 0;
        for (; done < r->nops; done++) {
            struct set_op *op = &r->ops[done];
            fbr_render_reset(&rs->render);
            int rc = fbr_tpl_render(op->tpl, &scope, &rs->render);
            if (rc != FBR_OK) {
                failed = 1;
                break;
            }
            char *s = fbr_render_strdup(&rs->render);
            size_t slen = rs->render.total;
            if (op->max_chars)
                slen = utf8_truncate(s, slen, op->max_chars);
            /* Inputs are valid UTF-8 and cuts land on character boundaries, so this only
             * fails on a template engine bug; the rule is then skipped like any render error. */
            rs->pending[done] = json_stringn(s, slen);
            free(s);
            if (!rs->pending[done]) {
                failed = 1;
                break;
            }
        }
        if (failed) {
            for (size_t k = 0; k < done; k++)
                json_decref(rs->pending[k]);
            stats->errors++;
            fbr_log_warn("rule \"%s\" skipped: a value did not render", r->name);
            continue;
        }
        for (size_t k = 0; k < r->nops; k++)
            set_field(alert, &r->ops[k], rs->pending[k]);
        matched++;
        stats->matched++;
        if (r->stop)
            break;
    }
    return matched;
}
