/*
 * fuzz_rules.c - libFuzzer target for the Rules Engine compiler and evaluator (rules.c with
 * template.c): arbitrary bytes are compiled as the `rules` configuration array (which is what
 * an operator's configuration file feeds in at load and at reload), then the compiled rules run
 * twice over an arbitrary or a built-in alert.  It checks the promises of rules.h: a compile
 * either succeeds with no messages or fails with at least one and no rule set, the number of
 * matches never exceeds the number of rules, the alert stays an object, and every regex stays
 * within its bounded effort (libFuzzer's -timeout catches a stall).
 *
 * Input: the rules JSON up to the first NUL byte; the rest, when it parses as an object, is the
 * alert (else a built-in one).  A bare object is wrapped into a one-rule array so that the
 * fuzzer reaches rule bodies quickly.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/log.h"
#include "firebridge/rules.h"

static const char default_alert[] =
    "{\"message_type\": \"CRITICAL\", \"routing_key\": \"devops\", \"entity_id\": \"db-12.disk\","
    " \"entity_display_name\": \"Disk \\\"/var\\\" full\", \"host_name\": \"db03.mydomain.tld\","
    " \"state_message\": \"\\u00e9t\\u00e9 \\ud83d\\ude00 a\\r\\nb\", \"monitor\": {\"tool\": "
    "\"nagios\", \"ids\": [1, \"two\", {\"three\": 3}]}, \"n\": 12, \"f\": 1.5, \"t\": true,"
    " \"z\": null, \"vo_annotate.u.Runbook\": \"https://wiki/x\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once) {
        fbr_log_setup(FBR_LOG_ERROR, FBR_LOG_TEXT);
        once = 1;
    }
    const char *src = (const char *)data;
    const char *nul = memchr(src, 0, size);
    size_t rlen = nul ? (size_t)(nul - src) : size;
    json_t *j = json_loadb(src, rlen, JSON_DECODE_ANY, NULL);
    if (!j)
        return 0;
    if (json_is_object(j)) {
        json_t *arr = json_array();
        json_array_append_new(arr, j);
        j = arr;
    }
    struct fbr_rules_opts opts = {0};
    struct fbr_rules *rules = (struct fbr_rules *)1;
    struct fbr_cfgerr errs = {0};
    int rc = fbr_rules_compile(j, &opts, &rules, &errs);
    if (rc == FBR_OK) {
        if (!rules || errs.n != 0)
            abort();
    } else {
        if (rc != FBR_INVALID || rules || errs.n == 0)
            abort();
        for (size_t i = 0; i < errs.n; i++)
            if (!errs.msgs[i] || !errs.msgs[i][0])
                abort();
    }
    if (rules) {
        json_t *alert = NULL;
        if (nul)
            alert = json_loadb(nul + 1, size - rlen - 1, 0, NULL);
        if (!json_is_object(alert)) {
            json_decref(alert);
            alert = json_loads(default_alert, 0, NULL);
        }
        struct fbr_rules_stats st = {0};
        for (int round = 0; round < 2; round++) {
            size_t matched = fbr_rules_apply(rules, alert, &st);
            if (matched > fbr_rules_count(rules) || !json_is_object(alert))
                abort();
            /* what webhooks will see must still serialise */
            char *s = json_dumps(alert, JSON_COMPACT);
            if (!s)
                abort();
            free(s);
        }
        if (st.alerts != 2 || st.matched > 2 * fbr_rules_count(rules))
            abort();
        json_decref(alert);
        fbr_rules_free(&rules);
    }
    fbr_cfgerr_clear(&errs);
    json_decref(j);
    return 0;
}
