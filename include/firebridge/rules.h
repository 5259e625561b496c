/*
 * rules.h - the Rules Engine: the `rules` configuration array compiled once at load (wildcard
 * patterns lowered, regexes compiled with Oniguruma in Java syntax, value templates compiled in
 * the RULE context) and applied top to bottom to every alert right after intake, before the
 * incident table and the events see it.  A rule rewrites fields (`set`), adds annotations
 * (`vo_annotate.u|i|s.<Title>`) and may stop the evaluation.
 */
#ifndef FIREBRIDGE_RULES_H
#define FIREBRIDGE_RULES_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "firebridge/cfgerr.h"
#include "firebridge/common.h"

#define FBR_RULES_MAX_PATTERN 128        /* characters, default regex pattern limit */
#define FBR_RULES_RETRY_LIMIT 200000ul   /* Oniguruma retries per match (about 2-4 ms), default */
#define FBR_RULES_ANNOTATION_MAX 1124    /* characters of an annotation value */

struct fbr_rules_opts {
    size_t max_pattern_len;    /* 0: FBR_RULES_MAX_PATTERN */
    unsigned long retry_limit; /* 0: FBR_RULES_RETRY_LIMIT */
};

struct fbr_rules;

/*
 * Compiles `rules` (borrowed; a JSON array, or NULL for none).  Every mistake is appended to errs
 * with its path ("rules[1].when.match: must be \"wildcard\" or \"regex\"").  Returns FBR_OK with a
 * new rule set in *out, or FBR_INVALID with *out NULL when errs gained at least one message.
 *
 * A rule: {"name": str, "enabled": bool = true,
 *          "when": COND | [COND, ...]   (all must hold),
 *          "set": {"field": "value template", ...},
 *          "annotations": [{"type": "url"|"image"|"note", "title": str, "value": template}],
 *          "stop": bool = false}
 * COND: {"field": "dotted.path", "match": "wildcard" (default) | "regex", "pattern": str}.
 */
int fbr_rules_compile(json_t *rules, const struct fbr_rules_opts *opts, struct fbr_rules **out,
                      struct fbr_cfgerr *errs);
void fbr_rules_free(struct fbr_rules **rules);
size_t fbr_rules_count(const struct fbr_rules *rules);

struct fbr_rules_stats {
    uint64_t alerts;      /* fbr_rules_apply calls */
    uint64_t matched;     /* rules whose conditions held */
    uint64_t regex_limit; /* rules skipped because a regex hit the retry limit */
    uint64_t errors;      /* rules skipped because a regex or a template failed otherwise */
};

/*
 * Runs the enabled rules top to bottom on `alert` (borrowed JSON object, modified in place).
 * For a matching rule every `set` value and annotation is rendered against the alert as it was
 * before that rule, then written; `${{\N}}` are the groups of the rule's first regex condition.
 * A rule whose regex exceeds the retry limit is skipped and counted.  stats may be NULL.  Uses
 * scratch buffers kept in `rules`: not reentrant (the loop is single-threaded).
 * Returns the number of rules that matched.
 */
size_t fbr_rules_apply(struct fbr_rules *rules, json_t *alert, struct fbr_rules_stats *stats);

/*
 * Whole-value, ASCII case-insensitive wildcard match: `*` any run, `?` exactly one character
 * (a UTF-8 sequence counts as one).  Linear-time with one backtrack point, no recursion.
 */
int fbr_wildcard_match(const char *pat, size_t plen, const char *s, size_t slen);

/*
 * Looks a dotted field up in an alert: the literal key first ("vo_annotate.u.Runbook"), then the
 * path through nested objects ("monitor_data.id"; a numeric segment indexes an array).  Borrowed
 * result or NULL.
 */
json_t *fbr_alert_lookup(json_t *alert, const char *field, size_t len);

#endif
