/*
 * alertmanager.c - the Prometheus Alertmanager webhook format, in front of the intake: checks
 * one posted group (payload version 4) field by field and maps each of its alerts to the
 * on-call platform's REST shape (the table is in alertmanager.h and the README).  The intake
 * then treats the result as it treats posted alerts; nothing here keeps state.
 */
#include "firebridge/alertmanager.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "firebridge/intake.h"

/* Writes "<path>: <reason>" to err; always returns FBR_INVALID. */
static int fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    /* a key cut inside a UTF-8 sequence would make the JSON reply unpackable */
    size_t n = strnlen(err, errlen);
    if (n + 1 >= errlen) {
        while (n > 0 && ((unsigned char)err[n - 1] & 0xC0) == 0x80)
            n--;
        if (n > 0 && ((unsigned char)err[n - 1] & 0xC0) == 0xC0)
            n--;
        err[n] = '\0';
    }
    return FBR_INVALID;
}

/* Bytes of key to quote in a message: at most 100, cut on a UTF-8 boundary. */
static int key_quote_len(const char *key)
{
    return (int)fbr_utf8_cut(key, strlen(key), 100);
}

static int too_long(json_t *s, size_t max)
{
    size_t len = json_string_length(s);
    return len > max && fbr_utf8_chars(json_string_value(s), len) > max;
}

/* An optional string member of obj: absent or a string of at most max characters. */
static int check_string(json_t *obj, const char *key, size_t max, const char *where, char *err,
                        size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return FBR_OK;
    if (!json_is_string(v))
        return fail(err, errlen, "%s%s: expected a string", where, key);
    if (too_long(v, max))
        return fail(err, errlen, "%s%s: longer than %zu characters", where, key, max);
    return FBR_OK;
}

/* A map of strings (labels, annotations): at most FBR_ALERTMANAGER_MAX_PAIRS members, string
 * values of at most max characters each (long_max for the member named long_key), keys of at
 * most FBR_INTAKE_FIELD_MAX. */
static int check_map(json_t *obj, const char *where, const char *name, size_t max,
                     const char *long_key, size_t long_max, char *err, size_t errlen)
{
    if (!json_is_object(obj))
        return fail(err, errlen, "%s%s: expected an object of strings", where, name);
    if (json_object_size(obj) > FBR_ALERTMANAGER_MAX_PAIRS)
        return fail(err, errlen, "%s%s: more than %d members", where, name,
                    FBR_ALERTMANAGER_MAX_PAIRS);
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        size_t klen = strlen(key);
        if (klen > FBR_INTAKE_FIELD_MAX && fbr_utf8_chars(key, klen) > FBR_INTAKE_FIELD_MAX)
            return fail(err, errlen, "%s%s: a key is longer than %d characters", where, name,
                        FBR_INTAKE_FIELD_MAX);
        if (!json_is_string(v))
            return fail(err, errlen, "%s%s.%.*s: expected a string", where, name,
                        key_quote_len(key), key);
        size_t lim = long_key && strcmp(key, long_key) == 0 ? long_max : max;
        if (too_long(v, lim))
            return fail(err, errlen, "%s%s.%.*s: longer than %zu characters", where, name,
                        key_quote_len(key), key, lim);
    }
    return FBR_OK;
}

static int digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int fbr_alertmanager_time(const char *s, long long *secs)
{
    int Y, M, D, h, m, sec;
    *secs = 0;
    if (strlen(s) < 20 || digits(s, 4, &Y) || s[4] != '-' || digits(s + 5, 2, &M) || s[7] != '-' ||
        digits(s + 8, 2, &D) || (s[10] != 'T' && s[10] != 't') || digits(s + 11, 2, &h) ||
        s[13] != ':' || digits(s + 14, 2, &m) || s[16] != ':' || digits(s + 17, 2, &sec))
        return FBR_INVALID;
    if (M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60)
        return FBR_INVALID;
    const char *p = s + 19;
    if (*p == '.') {
        p++;
        if (*p < '0' || *p > '9')
            return FBR_INVALID;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    long long offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om;
        if (digits(p + 1, 2, &oh) || p[3] != ':' || digits(p + 4, 2, &om) || oh > 23 || om > 59)
            return FBR_INVALID;
        offset = (oh * 3600LL + om * 60LL) * (*p == '-' ? -1 : 1);
        p += 6;
    } else {
        return FBR_INVALID;
    }
    if (*p)
        return FBR_INVALID;
    if (Y < 1970)
        return FBR_OK; /* Go's zero time: not known yet */
    struct tm tm = {.tm_year = Y - 1900,
                    .tm_mon = M - 1,
                    .tm_mday = D,
                    .tm_hour = h,
                    .tm_min = m,
                    .tm_sec = sec};
    long long t = (long long)timegm(&tm) - offset;
    *secs = t > 0 ? t : 0;
    return FBR_OK;
}

static enum fbr_msg_type firing_type(json_t *labels, const struct fbr_alertmanager_opts *opts)
{
    const char *sev = json_string_value(json_object_get(labels, "severity"));
    if (sev && strcasecmp(sev, "critical") == 0)
        return FBR_MT_CRITICAL;
    if (sev && strcasecmp(sev, "warning") == 0)
        return FBR_MT_WARNING;
    return opts ? opts->other_severity : FBR_MT_CRITICAL;
}

/* Checks alerts[i] (where is "alerts[i]."); FBR_OK or FBR_INVALID with err set. */
static int check_alert(json_t *a, const char *where, char *err, size_t errlen)
{
    if (!json_is_object(a))
        return fail(err, errlen, "%.*s: expected an object", (int)strlen(where) - 1, where);
    json_t *st = json_object_get(a, "status");
    if (!st)
        return fail(err, errlen, "%sstatus: missing", where);
    const char *s = json_string_value(st);
    if (!s || (strcmp(s, "firing") != 0 && strcmp(s, "resolved") != 0))
        return fail(err, errlen, "%sstatus: expected \"firing\" or \"resolved\"", where);
    json_t *fp = json_object_get(a, "fingerprint");
    if (!fp)
        return fail(err, errlen, "%sfingerprint: missing", where);
    if (!json_is_string(fp) || json_string_length(fp) == 0)
        return fail(err, errlen, "%sfingerprint: expected a non-empty string", where);
    if (too_long(fp, FBR_INTAKE_ENTITY_ID_MAX))
        return fail(err, errlen, "%sfingerprint: longer than %d characters", where,
                    FBR_INTAKE_ENTITY_ID_MAX);
    json_t *labels = json_object_get(a, "labels");
    if (!labels)
        return fail(err, errlen, "%slabels: missing", where);
    if (check_map(labels, where, "labels", FBR_INTAKE_FIELD_MAX, NULL, 0, err, errlen))
        return FBR_INVALID;
    json_t *ann = json_object_get(a, "annotations");
    if (ann && check_map(ann, where, "annotations", FBR_INTAKE_STATE_MESSAGE_MAX, "summary",
                         FBR_INTAKE_FIELD_MAX, err, errlen))
        return FBR_INVALID;
    if (check_string(a, "generatorURL", FBR_INTAKE_FIELD_MAX, where, err, errlen))
        return FBR_INVALID;
    static const char *const times[] = {"startsAt", "endsAt"};
    for (size_t i = 0; i < FBR_ARRAY_LEN(times); i++) {
        json_t *t = json_object_get(a, times[i]);
        long long secs;
        if (t && (!json_is_string(t) || json_string_length(t) > 64 ||
                  fbr_alertmanager_time(json_string_value(t), &secs) != FBR_OK))
            return fail(err, errlen, "%s%s: expected an RFC 3339 time", where, times[i]);
    }
    return FBR_OK;
}

static void copy_member(json_t *to, const char *to_key, json_t *from, const char *key)
{
    json_t *v = json_object_get(from, key);
    if (v)
        json_object_set(to, to_key, v);
}

/* Builds the platform-shaped alert of a checked Alertmanager alert a (new reference). */
static json_t *map_alert(json_t *body, json_t *a, const struct fbr_alertmanager_opts *opts)
{
    json_t *labels = json_object_get(a, "labels");
    json_t *ann = json_object_get(a, "annotations");
    int resolved = strcmp(json_string_value(json_object_get(a, "status")), "resolved") == 0;
    enum fbr_msg_type t = resolved ? FBR_MT_RECOVERY : firing_type(labels, opts);
    json_t *out = json_object();
    json_object_set_new(out, "message_type", json_string(fbr_msg_type_name(t)));
    copy_member(out, "entity_id", a, "fingerprint");
    json_t *name = json_object_get(ann, "summary");
    if (!name)
        name = json_object_get(labels, "alertname");
    if (!name)
        name = json_object_get(a, "fingerprint");
    json_object_set(out, "entity_display_name", name);
    copy_member(out, "state_message", ann, "description");
    long long start = 0;
    json_t *when = json_object_get(a, resolved ? "endsAt" : "startsAt");
    if (when && fbr_alertmanager_time(json_string_value(when), &start) == FBR_OK && start > 0)
        json_object_set_new(out, "state_start_time", json_integer((json_int_t)start));
    json_object_set_new(out, "monitoring_tool", json_string("alertmanager"));
    json_object_set(out, "labels", labels);
    json_object_set_new(out, "annotations", ann ? json_incref(ann) : json_object());
    static const char *const kept[] = {"generatorURL", "startsAt", "endsAt", "fingerprint",
                                       "status"};
    for (size_t i = 0; i < FBR_ARRAY_LEN(kept); i++)
        copy_member(out, kept[i], a, kept[i]);
    static const char *const group[] = {"externalURL", "receiver", "groupKey"};
    for (size_t i = 0; i < FBR_ARRAY_LEN(group); i++)
        copy_member(out, group[i], body, group[i]);
    return out;
}

int fbr_alertmanager_map(json_t *body, const struct fbr_alertmanager_opts *opts, json_t **alerts,
                         char *err, size_t errlen)
{
    *alerts = NULL;
    if (!json_is_object(body))
        return fail(err, errlen, "(body): expected a JSON object");
    json_t *version = json_object_get(body, "version");
    if (version && !(json_is_string(version) && strcmp(json_string_value(version), "4") == 0))
        return fail(err, errlen, "version: expected \"4\"");
    static const char *const strings[] = {"status", "receiver", "groupKey", "externalURL"};
    for (size_t i = 0; i < FBR_ARRAY_LEN(strings); i++)
        if (check_string(body, strings[i], FBR_INTAKE_FIELD_MAX, "", err, errlen))
            return FBR_INVALID;
    static const char *const maps[] = {"groupLabels", "commonLabels", "commonAnnotations"};
    for (size_t i = 0; i < FBR_ARRAY_LEN(maps); i++) {
        json_t *m = json_object_get(body, maps[i]);
        if (m && !json_is_object(m))
            return fail(err, errlen, "%s: expected an object", maps[i]);
    }
    json_t *list = json_object_get(body, "alerts");
    if (!list)
        return fail(err, errlen, "alerts: missing");
    if (!json_is_array(list))
        return fail(err, errlen, "alerts: expected an array");
    if (json_array_size(list) == 0)
        return fail(err, errlen, "alerts: empty");
    if (json_array_size(list) > FBR_ALERTMANAGER_MAX_ALERTS)
        return fail(err, errlen, "alerts: more than %d (set max_alerts in webhook_configs)",
                    FBR_ALERTMANAGER_MAX_ALERTS);
    size_t i;
    json_t *a;
    json_array_foreach(list, i, a)
    {
        char where[32];
        snprintf(where, sizeof(where), "alerts[%zu].", i);
        if (check_alert(a, where, err, errlen) != FBR_OK)
            return FBR_INVALID;
    }
    json_t *out = json_array();
    json_array_foreach(list, i, a) json_array_append_new(out, map_alert(body, a, opts));
    *alerts = out;
    return FBR_OK;
}
