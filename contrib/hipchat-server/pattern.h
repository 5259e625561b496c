/*
 * pattern.h - the webhook `pattern` of add-on descriptors: a POSIX extended regular expression
 * matched against a message's text (found anywhere in it unless anchored).
 */
#ifndef HCS_PATTERN_H
#define HCS_PATTERN_H

#include <stddef.h>

struct hcs_pattern;

/* Compiles re; returns a new pattern, or NULL with the reason in err. */
struct hcs_pattern *hcs_pattern_new(const char *re, char *err, size_t errlen);
/* 1 when text contains a match, else 0. */
int hcs_pattern_match(const struct hcs_pattern *p, const char *text);
void hcs_pattern_free(struct hcs_pattern *p);

#endif
