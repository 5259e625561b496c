/*
 * pattern.c - webhook patterns (pattern.h): POSIX extended regular expressions, compiled with
 * Oniguruma's POSIX-extended syntax.  Not <regex.h>: libonig (linked through libevhtp) exports
 * its own regcomp()/regexec() under the POSIX names, which would shadow glibc's at link time
 * with a different regex_t.
 */
#include "pattern.h"

#include <oniguruma.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/common.h"

struct hcs_pattern {
    regex_t *re;
};

struct hcs_pattern *hcs_pattern_new(const char *re, char *err, size_t errlen)
{
    static int ready;
    if (!ready) {
        OnigEncoding use[] = {ONIG_ENCODING_UTF8};
        onig_initialize(use, 1);
        ready = 1;
    }
    OnigErrorInfo einfo;
    struct hcs_pattern *p = fbr_xcalloc(1, sizeof(*p));
    const OnigUChar *pat = (const OnigUChar *)re;
    int rc = onig_new(&p->re, pat, pat + strlen(re), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8,
                      ONIG_SYNTAX_POSIX_EXTENDED, &einfo);
    if (rc != ONIG_NORMAL) {
        OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
        onig_error_code_to_str(msg, rc, &einfo);
        snprintf(err, errlen, "%s", (const char *)msg);
        free(p);
        return NULL;
    }
    return p;
}

int hcs_pattern_match(const struct hcs_pattern *p, const char *text)
{
    const OnigUChar *s = (const OnigUChar *)text, *end = s + strlen(text);
    return onig_search(p->re, s, end, s, end, NULL, ONIG_OPTION_NONE) >= 0;
}

void hcs_pattern_free(struct hcs_pattern *p)
{
    if (!p)
        return;
    onig_free(p->re);
    free(p);
}
