/*
 * pattern.c - webhook patterns (pattern.h): glibc's POSIX extended regular expressions.
 */
#include "pattern.h"

#include <regex.h>
#include <stdlib.h>

#include "firebridge/common.h"

struct hcs_pattern {
    regex_t re;
};

struct hcs_pattern *hcs_pattern_new(const char *re, char *err, size_t errlen)
{
    struct hcs_pattern *p = fbr_xcalloc(1, sizeof(*p));
    int rc = regcomp(&p->re, re, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        regerror(rc, &p->re, err, errlen);
        free(p);
        return NULL;
    }
    return p;
}

int hcs_pattern_match(const struct hcs_pattern *p, const char *text)
{
    return regexec(&p->re, text, 0, NULL, 0) == 0;
}

void hcs_pattern_free(struct hcs_pattern *p)
{
    if (!p)
        return;
    regfree(&p->re);
    free(p);
}
