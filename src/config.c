/*
 * config.c - the configuration table and its three readers: the JSON file (jansson), the command
 * line (getopt_long) and the built-in defaults, plus the writers of --help and the README
 * reference.  It runs before the data path exists: main.c turns the result into the server and
 * the modules of intake -> rules -> events -> templates -> delivery.  One table row per setting
 * keeps the file key, the flag, the type, the bounds, the default and the help text together.
 */
#include "firebridge/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "firebridge/defaults.h"

enum opt_type {
    T_ACTION,     /* flag only: help, version, check-config, config */
    T_STR,        /* string */
    T_LISTEN,     /* list of ADDR:PORT, repeatable flag */
    T_STRLIST,    /* list of strings, repeatable flag */
    T_SIZE,       /* bytes, u64; flags accept a K/M/G suffix */
    T_U32,        /* integer with bounds */
    T_RATE,       /* "N/SECONDS" */
    T_FSYNC,      /* always|batch|off */
    T_BOOL,       /* on|off (int); a flag without metavar takes no value and means on */
    T_LOGLEVEL,   /* error|warn|info|debug */
    T_LOGFORMAT,  /* text|json */
    T_MSGTYPE,    /* CRITICAL|WARNING|INFO (a firing alert's message_type) */
    T_JSON_ARRAY, /* file only, kept as JSON */
    T_JSON_OBJECT,
};

enum { A_NONE, A_CONFIG, A_HELP, A_VERSION, A_CHECK, A_PRINT };

struct opt {
    const char *key;  /* JSON key, NULL when flag only */
    const char *flag; /* long flag, NULL when file only */
    int short_flag;   /* 0 when none */
    enum opt_type type;
    size_t offset;
    const char *def;  /* default in flag syntax, NULL = unset */
    uint64_t min, max;
    const char *metavar;
    const char *help;
    int action;
};

#define OFF(f) offsetof(struct fbr_config, f)
#define MB (1024u * 1024u)

static const struct opt opts[] = {
    {NULL, "config", 'c', T_ACTION, 0, NULL, 0, 0, "FILE",
     "JSON configuration file (without it the built-in defaults are used)", A_CONFIG},
    {"listen", "listen", 'l', T_LISTEN, OFF(listen), "127.0.0.1:8080", 0, 0, "ADDR:PORT",
     "address to serve on, IPv4 or [IPv6], port 0 picks one; repeatable", 0},
    {"tls_cert", "tls-cert", 0, T_STR, OFF(tls_cert), NULL, 0, 0, "FILE",
     "PEM certificate chain: serve HTTPS inbound (needs --tls-key)", 0},
    {"tls_key", "tls-key", 0, T_STR, OFF(tls_key), NULL, 0, 0, "FILE",
     "PEM private key for --tls-cert", 0},
    {"data_dir", "data-dir", 'd', T_STR, OFF(data_dir), "./firebridge-data", 0, 0, "DIR",
     "directory for the journal and dead letters (created if missing; one daemon per "
     "directory: locked while it runs)", 0},
    {"api_keys", "api-key", 0, T_STRLIST, OFF(api_keys), NULL, 0, 0, "KEY",
     "API key accepted by the intake endpoints; repeatable", 0},
    {"public_url", "public-url", 0, T_STR, OFF(public_url), NULL, 0, 0, "URL",
     "URL under which the chat side reaches firebridge (HipChat add-on descriptor)", 0},
    {"organization_id", "organization-id", 0, T_STR, OFF(organization_id), NULL, 0, 0, "ID",
     "on-call platform organization id", 0},
    {"max_body", "max-body", 0, T_SIZE, OFF(max_body), FBR_DEFAULT_TEXT(FBR_DEFAULT_MAX_BODY), 1024, 1024ull * MB, "BYTES",
     "largest request body accepted; larger ones get 413", 0},
    {"max_connections", "max-connections", 0, T_U32, OFF(max_connections),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_MAX_CONNECTIONS), 1, 1000000,
     "N", "open inbound connections at most; more wait in the listen backlog (unset, the "
     "default is lowered to fit the open files hard limit)", 0},
    {"read_timeout", "read-timeout", 0, T_U32, OFF(read_timeout_ms),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_READ_TIMEOUT_MS), 10, 3600000, "MS",
     "a whole request (headers and body) must arrive within this", 0},
    {"idle_timeout", "idle-timeout", 0, T_U32, OFF(idle_timeout_ms),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_IDLE_TIMEOUT_MS), 10, 86400000, "MS",
     "a connection with nothing to read or write is closed after this", 0},
    {"max_pending", "max-pending", 0, T_U32, OFF(max_pending),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_MAX_PENDING), 1, 10000000, "N",
     "deliveries queued at most; more are refused with 503", 0},
    {"connect_timeout", "connect-timeout", 0, T_U32, OFF(connect_timeout_ms),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_CONNECT_TIMEOUT_MS), 10, 600000,
     "MS", "outbound connect (and TLS handshake) deadline", 0},
    {"request_timeout", "request-timeout", 0, T_U32, OFF(request_timeout_ms),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_REQUEST_TIMEOUT_MS), 10,
     3600000, "MS", "outbound request deadline, connect included", 0},
    {"pool_size", "pool-size", 0, T_U32, OFF(pool_size), FBR_DEFAULT_TEXT(FBR_DEFAULT_POOL_SIZE), 1, 1024, "N",
     "outbound keep-alive connections per origin (scheme, host, port)", 0},
    {"pipeline", "pipeline", 0, T_U32, OFF(pipeline), FBR_DEFAULT_TEXT(FBR_DEFAULT_PIPELINE), 1, 64, "N",
     "outbound requests in flight per kept-alive connection (HTTP/1.1 pipelining; 1: off)", 0},
    {"room_rate", "room-rate", 0, T_RATE, OFF(room_rate),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_ROOM_RATE_N) "/" FBR_DEFAULT_TEXT(FBR_DEFAULT_ROOM_RATE_SECS), 1, 1000000, "N/SECONDS",
     "deliveries per room (destination) per time window", 0},
    {"token_rate", "token-rate", 0, T_RATE, OFF(token_rate),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_TOKEN_RATE_N) "/" FBR_DEFAULT_TEXT(FBR_DEFAULT_TOKEN_RATE_SECS), 1, 1000000,
     "N/SECONDS", "deliveries per API token per time window", 0},
    {"retry_initial", "retry-initial", 0, T_U32, OFF(retry_initial_ms),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_RETRY_INITIAL_MS), 1, 3600000, "MS",
     "first retry delay (doubles with jitter)", 0},
    {"retry_max_interval", "retry-max-interval", 0, T_U32, OFF(retry_max_interval_ms),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_RETRY_MAX_INTERVAL_MS),
     1, 86400000, "MS", "longest delay between retries", 0},
    {"retry_max_age", "retry-max-age", 0, T_U32, OFF(retry_max_age_s),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_RETRY_MAX_AGE_S), 1, 2592000,
     "SECONDS", "a delivery older than this goes to the dead-letter file", 0},
    {"ca_file", "ca-file", 0, T_STR, OFF(ca_file), NULL, 0, 0, "FILE",
     "CA bundle for outbound TLS (default: the system trust store)", 0},
    {"journal", "journal", 0, T_BOOL, OFF(journal), "on", 0, 0, "on|off",
     "write-ahead journal in DATA_DIR/journal: an alert is answered 200 only once its incident "
     "change and deliveries are in it (off: memory only, pending deliveries go to the "
     "dead-letter file on SIGTERM)", 0},
    {"fsync", "fsync", 0, T_FSYNC, OFF(fsync), "batch", 0, 0, "always|batch|off",
     "what a 200 waits for: always = the journal is fdatasync'ed (one per loop iteration, "
     "shared), batch = written, fdatasync every --fsync-interval, off = written", 0},
    {"fsync_interval", "fsync-interval", 0, T_U32, OFF(fsync_interval_ms),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_FSYNC_INTERVAL_MS), 1, 60000, "MS",
     "with --fsync batch: longest time between two fdatasyncs of the journal", 0},
    {"journal_segment_size", "journal-segment-size", 0, T_SIZE, OFF(journal_segment_size),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_JOURNAL_SEGMENT_SIZE), 4096, 1024ull * MB, "BYTES", "journal segment file size before a new one starts", 0},
    {NULL, "journal-repair", 0, T_BOOL, OFF(journal_repair), NULL, 0, 0, NULL,
     "start even when a journal segment is corrupt in the middle, keeping every readable record",
     0},
    {"drain_timeout", "drain-timeout", 0, T_U32, OFF(drain_timeout_s),
     FBR_DEFAULT_TEXT(FBR_DEFAULT_DRAIN_TIMEOUT_S), 0, 3600, "SECONDS",
     "on SIGTERM/SIGINT, time allowed to finish in-flight work", 0},
    {"log_level", "log-level", 0, T_LOGLEVEL, OFF(log_level), "info", 0, 0,
     "error|warn|info|debug", "lowest level logged", 0},
    {"log_format", "log-format", 0, T_LOGFORMAT, OFF(log_format), "text", 0, 0, "text|json",
     "log line format on stderr", 0},
    {"alertmanager_other_severity", "alertmanager-other-severity", 0, T_MSGTYPE,
     OFF(alertmanager_other_severity), "CRITICAL", 0, 0, "CRITICAL|WARNING|INFO",
     "message_type of a firing Alertmanager alert whose severity label is neither critical nor "
     "warning", 0},
    {NULL, "replay-dead-letters", 0, T_STR, OFF(replay_dead_letters), NULL, 0, 0, "FILE",
     "re-queue the deliveries of a dead-letter file at start", 0},
    {"rules", NULL, 0, T_JSON_ARRAY, OFF(rules), NULL, 0, 0, "array",
     "Rules Engine rules (matched against incoming alerts)", 0},
    {"webhooks", NULL, 0, T_JSON_ARRAY, OFF(webhooks), NULL, 0, 0, "array",
     "Outgoing Webhooks (Multi-Room mode)", 0},
    {"hipchat", NULL, 0, T_JSON_OBJECT, OFF(hipchat), NULL, 0, 0, "object",
     "HipChat Connect add-on settings (Single Room mode; keys below)", 0},
    {"oncall_api", NULL, 0, T_JSON_OBJECT, OFF(oncall_api), NULL, 0, 0, "object",
     "the platform's public API, where room messages, acks and resolves are posted (keys below)",
     0},
    {NULL, "print-addon-url", 0, T_STR, OFF(print_addon_url), NULL, 0, 0, "ROUTING_KEY",
     "print the Add-on Capabilities URL to install for this routing key and exit", 0},
    {NULL, "check-config", 0, T_ACTION, 0, NULL, 0, 0, NULL,
     "validate the configuration, print ok or the errors, exit 0 or 1", A_CHECK},
    {NULL, "print-config", 0, T_ACTION, 0, NULL, 0, 0, NULL,
     "print the effective settings (defaults, file, flags) as JSON, keys masked, and exit",
     A_PRINT},
    {NULL, "version", 'V', T_ACTION, 0, NULL, 0, 0, NULL, "print the version and exit", A_VERSION},
    {NULL, "help", 'h', T_ACTION, 0, NULL, 0, 0, NULL, "print this help and exit", A_HELP},
};

#define NOPTS FBR_ARRAY_LEN(opts)
_Static_assert(FBR_ARRAY_LEN(opts) <= 128, "fbr_config.given has 128 bits");

static void mark_given(struct fbr_config *cfg, const struct opt *o)
{
    size_t i = (size_t)(o - opts);
    cfg->given[i / 64] |= 1ull << (i % 64);
}

int fbr_config_given(const struct fbr_config *cfg, const char *key)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (opts[i].key && strcmp(opts[i].key, key) == 0)
            return (cfg->given[i / 64] >> (i % 64)) & 1;
    return 0;
}

/* ---- error accumulation ---- */

/* Every error goes to one fbr_cfgerr (cfgerr.h); count is how many this run added. */
struct errs {
    struct fbr_cfgerr *list;
    int count;
};

static void errs_add(struct errs *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void errs_add(struct errs *e, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    e->count++;
    fbr_cfgerr_line(e->list, "%s", msg);
}

/* For the text interfaces: the collected errors into err (emptied first), then cleared. */
static void errs_to_text(struct fbr_cfgerr *list, char *err, size_t errlen)
{
    if (err && errlen) {
        err[0] = '\0';
        fbr_cfgerr_join(list, err, errlen);
    }
    fbr_cfgerr_clear(list);
}

/* ---- value parsers shared by flags, file and defaults ---- */

static void strlist_add(struct fbr_strlist *l, const char *s)
{
    l->v = fbr_xrealloc(l->v, (l->n + 1) * sizeof(*l->v));
    l->v[l->n++] = fbr_xstrdup(s);
}

static void strlist_clear(struct fbr_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

int fbr_listen_parse(const char *s, char *host, size_t hostlen, int *family, uint16_t *port)
{
    const char *colon;
    const char *h;
    size_t hlen;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':')
            return FBR_INVALID;
        h = s + 1;
        hlen = (size_t)(end - h);
        colon = end + 1;
        *family = AF_INET6;
    } else {
        colon = strrchr(s, ':');
        if (!colon)
            return FBR_INVALID;
        h = s;
        hlen = (size_t)(colon - s);
        *family = AF_INET;
    }
    if (hlen == 0 || hlen >= hostlen || hlen >= 64)
        return FBR_INVALID;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    unsigned char tmp[16];
    if (inet_pton(*family, host, tmp) != 1)
        return FBR_INVALID;
    const char *p = colon + 1;
    if (!*p || strlen(p) > 5)
        return FBR_INVALID;
    unsigned long v = 0;
    for (; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return FBR_INVALID;
        v = v * 10 + (unsigned long)(*p - '0');
    }
    if (v > 65535)
        return FBR_INVALID;
    *port = (uint16_t)v;
    return FBR_OK;
}

/* Parses a decimal unsigned integer (no sign, no spaces), optionally with a binary K/M/G suffix. */
static int parse_u64(const char *s, int suffix, uint64_t *out)
{
    if (!isdigit((unsigned char)s[0]))
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    uint64_t mul = 1;
    if (suffix && *end) {
        switch (*end) {
        case 'k':
        case 'K':
            mul = 1024;
            break;
        case 'm':
        case 'M':
            mul = 1024 * 1024;
            break;
        case 'g':
        case 'G':
            mul = 1024ull * 1024 * 1024;
            break;
        default:
            return -1;
        }
        end++;
    }
    if (*end || v > UINT64_MAX / mul)
        return -1;
    *out = (uint64_t)v * mul;
    return 0;
}

/* A rate through the one parser (ratelimit.h), within the option's bounds for N. */
static int parse_rate(const char *s, const struct opt *o, struct fbr_rate *r)
{
    struct fbr_rate v;
    if (fbr_rate_parse(s, &v) != FBR_OK || v.n < o->min || v.n > o->max || v.secs < 1 ||
        v.secs > 86400)
        return -1;
    *r = v;
    return 0;
}

/* What an option accepts, for error messages. */
static const char *accepts(const struct opt *o, char *buf, size_t len)
{
    switch (o->type) {
    case T_SIZE:
        snprintf(buf, len, "a byte count between %" PRIu64 " and %" PRIu64 " (K/M/G suffix)",
                 o->min, o->max);
        break;
    case T_U32:
        snprintf(buf, len, "an integer between %" PRIu64 " and %" PRIu64, o->min, o->max);
        break;
    case T_RATE:
        snprintf(buf, len, "N/SECONDS with N between %" PRIu64 " and %" PRIu64
                 " and SECONDS between 1 and 86400", o->min, o->max);
        break;
    case T_LISTEN:
        snprintf(buf, len, "ADDR:PORT with an IPv4 address or [IPv6] and a port 0-65535");
        break;
    case T_BOOL:
        snprintf(buf, len, "on or off");
        break;
    case T_FSYNC:
    case T_LOGLEVEL:
    case T_LOGFORMAT:
    case T_MSGTYPE:
        snprintf(buf, len, "one of %s", o->metavar);
        break;
    case T_STR:
    case T_STRLIST:
        snprintf(buf, len, "a non-empty string");
        break;
    case T_JSON_ARRAY:
        snprintf(buf, len, "an array");
        break;
    case T_JSON_OBJECT:
        snprintf(buf, len, "an object");
        break;
    case T_ACTION:
        snprintf(buf, len, "no value");
        break;
    }
    return buf;
}

/*
 * Stores the text form of a value into cfg.  `append` adds to a list instead of starting it.
 * Returns 0, or -1 when the value is not acceptable (nothing stored).
 */
static int set_from_text(struct fbr_config *cfg, const struct opt *o, const char *s, int append)
{
    void *field = (char *)cfg + o->offset;
    uint64_t v;
    switch (o->type) {
    case T_STR:
        if (!*s)
            return -1;
        free(*(char **)field);
        *(char **)field = fbr_xstrdup(s);
        return 0;
    case T_LISTEN:
    case T_STRLIST:
        if (!*s)
            return -1;
        if (o->type == T_LISTEN) {
            char host[64];
            int fam;
            uint16_t port;
            if (fbr_listen_parse(s, host, sizeof(host), &fam, &port) != FBR_OK)
                return -1;
        }
        if (!append)
            strlist_clear((struct fbr_strlist *)field);
        strlist_add((struct fbr_strlist *)field, s);
        return 0;
    case T_SIZE:
        if (parse_u64(s, 1, &v) || v < o->min || v > o->max)
            return -1;
        *(uint64_t *)field = v;
        return 0;
    case T_U32:
        if (parse_u64(s, 0, &v) || v < o->min || v > o->max)
            return -1;
        *(uint32_t *)field = (uint32_t)v;
        return 0;
    case T_RATE:
        return parse_rate(s, o, (struct fbr_rate *)field);
    case T_FSYNC:
        return fbr_fsync_mode_parse(s, (enum fbr_fsync_mode *)field) == FBR_OK ? 0 : -1;
    case T_BOOL:
        if (!strcmp(s, "on") || !strcmp(s, "true") || !strcmp(s, "1"))
            *(int *)field = 1;
        else if (!strcmp(s, "off") || !strcmp(s, "false") || !strcmp(s, "0"))
            *(int *)field = 0;
        else
            return -1;
        return 0;
    case T_LOGLEVEL:
        return fbr_log_level_parse(s, (enum fbr_log_level *)field);
    case T_LOGFORMAT:
        return fbr_log_format_parse(s, (enum fbr_log_format *)field);
    case T_MSGTYPE: {
        enum fbr_msg_type t;
        if (fbr_msg_type_parse(s, strlen(s), &t) != FBR_OK ||
            (t != FBR_MT_CRITICAL && t != FBR_MT_WARNING && t != FBR_MT_INFO))
            return -1;
        *(enum fbr_msg_type *)field = t;
        return 0;
    }
    case T_JSON_ARRAY:
    case T_JSON_OBJECT:
    case T_ACTION:
        return -1;
    }
    return -1;
}

void fbr_config_defaults(struct fbr_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < NOPTS; i++) {
        if (opts[i].def && set_from_text(cfg, &opts[i], opts[i].def, 0) != 0)
            abort(); /* a broken table is a programming error */
    }
}

void fbr_config_free(struct fbr_config *cfg)
{
    for (size_t i = 0; i < NOPTS; i++) {
        const struct opt *o = &opts[i];
        void *field = (char *)cfg + o->offset;
        switch (o->type) {
        case T_STR:
            free(*(char **)field);
            break;
        case T_LISTEN:
        case T_STRLIST:
            strlist_clear((struct fbr_strlist *)field);
            break;
        case T_JSON_ARRAY:
        case T_JSON_OBJECT:
            json_decref(*(json_t **)field);
            break;
        default:
            break;
        }
    }
    free(cfg->config_file);
    memset(cfg, 0, sizeof(*cfg));
}

/* ---- JSON file ---- */

static const char *json_type_name(const json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    case JSON_NULL:
        return "null";
    }
    return "something else";
}

static void apply_one(struct fbr_config *cfg, const struct opt *o, json_t *val, struct errs *e)
{
    char acc[160];
    void *field = (char *)cfg + o->offset;
    switch (o->type) {
    case T_LISTEN:
    case T_STRLIST: {
        if (!json_is_array(val)) {
            errs_add(e, "%s: expected an array of strings, got %s", o->key, json_type_name(val));
            return;
        }
        struct fbr_strlist *l = (struct fbr_strlist *)field;
        strlist_clear(l);
        size_t i;
        json_t *item;
        json_array_foreach(val, i, item)
        {
            if (!json_is_string(item) || set_from_text(cfg, o, json_string_value(item), 1)) {
                errs_add(e, "%s[%zu]: expected %s", o->key, i, accepts(o, acc, sizeof(acc)));
            }
        }
        if (o->type == T_LISTEN && l->n == 0)
            errs_add(e, "%s: expected at least one address", o->key);
        return;
    }
    case T_SIZE:
    case T_U32:
        if (!json_is_integer(val) || json_integer_value(val) < 0) {
            errs_add(e, "%s: expected %s, got %s", o->key, accepts(o, acc, sizeof(acc)),
                     json_type_name(val));
            return;
        } else {
            char num[32];
            snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(val));
            if (set_from_text(cfg, o, num, 0))
                errs_add(e, "%s: expected %s, got %s", o->key, accepts(o, acc, sizeof(acc)), num);
        }
        return;
    case T_BOOL:
        if (json_is_boolean(val)) {
            *(int *)field = json_is_true(val);
            return;
        }
        if (!json_is_string(val) || set_from_text(cfg, o, json_string_value(val), 0))
            errs_add(e, "%s: expected true, false, \"on\" or \"off\", got %s", o->key,
                     json_type_name(val));
        return;
    case T_JSON_ARRAY:
    case T_JSON_OBJECT:
        if ((o->type == T_JSON_ARRAY && !json_is_array(val)) ||
            (o->type == T_JSON_OBJECT && !json_is_object(val))) {
            errs_add(e, "%s: expected %s, got %s", o->key, accepts(o, acc, sizeof(acc)),
                     json_type_name(val));
            return;
        }
        json_decref(*(json_t **)field);
        *(json_t **)field = json_incref(val);
        return;
    default:
        if (!json_is_string(val)) {
            errs_add(e, "%s: expected %s, got %s", o->key, accepts(o, acc, sizeof(acc)),
                     json_type_name(val));
            return;
        }
        if (set_from_text(cfg, o, json_string_value(val), 0))
            errs_add(e, "%s: expected %s, got \"%.64s\"", o->key, accepts(o, acc, sizeof(acc)),
                     json_string_value(val));
        return;
    }
}

static int apply_json(struct fbr_config *cfg, json_t *root, struct errs *e)
{
    int before = e->count;
    if (!json_is_object(root)) {
        errs_add(e, "(top level): expected an object, got %s", json_type_name(root));
        return FBR_INVALID;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        const struct opt *o = NULL;
        for (size_t i = 0; i < NOPTS; i++) {
            if (opts[i].key && strcmp(opts[i].key, key) == 0) {
                o = &opts[i];
                break;
            }
        }
        if (!o) {
            errs_add(e, "%.100s: unknown key", key);
            continue;
        }
        apply_one(cfg, o, val, e);
        mark_given(cfg, o);
    }
    return e->count > before ? FBR_INVALID : FBR_OK;
}

int fbr_config_apply_json(struct fbr_config *cfg, json_t *root, char *err, size_t errlen)
{
    struct fbr_cfgerr list = {0};
    struct errs e = {&list, 0};
    int rc = apply_json(cfg, root, &e);
    errs_to_text(&list, err, errlen);
    return rc;
}

/* ---- command line ---- */

void fbr_cli_free(struct fbr_cli *cli)
{
    for (size_t i = 0; i < cli->nopts; i++)
        free(cli->opts[i].value);
    free(cli->opts);
    free(cli->config_file);
    memset(cli, 0, sizeof(*cli));
}

static int cli_parse(struct fbr_cli *cli, int argc, char **argv, struct errs *ep);

int fbr_cli_parse(struct fbr_cli *cli, int argc, char **argv, char *err, size_t errlen)
{
    struct fbr_cfgerr list = {0};
    struct errs e = {&list, 0};
    int rc = cli_parse(cli, argc, argv, &e);
    errs_to_text(&list, err, errlen);
    return rc;
}

static int cli_parse(struct fbr_cli *cli, int argc, char **argv, struct errs *ep)
{
    memset(cli, 0, sizeof(*cli));
    struct option lopts[NOPTS + 1];
    char shorts[3 * NOPTS + 2];
    size_t ns = 0, nl = 0;
    shorts[ns++] = ':';
    for (size_t i = 0; i < NOPTS; i++) {
        if (!opts[i].flag)
            continue;
        int has_arg = opts[i].metavar && opts[i].type != T_ACTION ? required_argument
                      : opts[i].action == A_CONFIG                ? required_argument
                                                                  : no_argument;
        lopts[nl++] = (struct option){opts[i].flag, has_arg, NULL, 256 + (int)i};
        if (opts[i].short_flag) {
            shorts[ns++] = (char)opts[i].short_flag;
            if (has_arg == required_argument)
                shorts[ns++] = ':';
        }
    }
    lopts[nl] = (struct option){NULL, 0, NULL, 0};
    shorts[ns] = '\0';

    struct errs e = *ep;
    optind = 0; /* GNU: full re-initialisation, so the parser can run more than once */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, shorts, lopts, NULL)) != -1) {
        const struct opt *o = NULL;
        if (c >= 256) {
            o = &opts[c - 256];
        } else if (c == '?' || c == ':') {
            const char *arg = argv[optind - 1];
            if (optopt && optopt < 256) {
                for (size_t i = 0; i < NOPTS; i++)
                    if (opts[i].short_flag == optopt)
                        o = &opts[i];
            } else if (optopt >= 256) {
                o = &opts[optopt - 256];
            }
            if (c == ':' && o) {
                char acc[160];
                errs_add(&e, "--%s: needs a value: %s", o->flag,
                         o->type == T_ACTION ? o->metavar : accepts(o, acc, sizeof(acc)));
            } else {
                errs_add(&e, "%s: unknown flag (see --help)", arg);
            }
            return FBR_INVALID;
        } else {
            for (size_t i = 0; i < NOPTS; i++)
                if (opts[i].short_flag == c)
                    o = &opts[i];
        }
        if (!o)
            continue;
        switch (o->action) {
        case A_CONFIG:
            free(cli->config_file);
            cli->config_file = fbr_xstrdup(optarg);
            continue;
        case A_HELP:
            cli->action = FBR_CLI_HELP;
            continue;
        case A_VERSION:
            if (cli->action != FBR_CLI_HELP)
                cli->action = FBR_CLI_VERSION;
            continue;
        case A_CHECK:
            if (cli->action == FBR_CLI_RUN)
                cli->action = FBR_CLI_CHECK;
            continue;
        case A_PRINT:
            if (cli->action == FBR_CLI_RUN || cli->action == FBR_CLI_CHECK)
                cli->action = FBR_CLI_PRINT;
            continue;
        default:
            break;
        }
        /* Validate now so that a bad flag fails before anything else happens. */
        const char *val = optarg ? optarg : "on"; /* a switch (T_BOOL without a value) */
        struct fbr_config scratch;
        memset(&scratch, 0, sizeof(scratch));
        int bad = set_from_text(&scratch, o, val, 0);
        fbr_config_free(&scratch);
        if (bad) {
            char acc[160];
            errs_add(&e, "--%s: expected %s, got '%.64s'", o->flag,
                     accepts(o, acc, sizeof(acc)), val);
            return FBR_INVALID;
        }
        cli->opts = fbr_xrealloc(cli->opts, (cli->nopts + 1) * sizeof(*cli->opts));
        cli->opts[cli->nopts].entry = (int)(o - opts);
        cli->opts[cli->nopts].value = fbr_xstrdup(val);
        cli->nopts++;
    }
    if (optind < argc) {
        errs_add(&e, "%.64s: unexpected argument (flags only; see --help)", argv[optind]);
        return FBR_INVALID;
    }
    return FBR_OK;
}

/* ---- building ---- */

/* Checks that span several keys; pfx names the file (or "") the values came from. */
static void cross_checks(const struct fbr_config *cfg, const char *pfx, struct errs *e)
{
    const char *sep = *pfx ? ": " : "";
    if (!cfg->tls_cert != !cfg->tls_key)
        errs_add(e, "%s%stls_cert, tls_key: give both or neither", pfx, sep);
    if (cfg->retry_initial_ms > cfg->retry_max_interval_ms)
        errs_add(e, "%s%sretry_initial: must not exceed retry_max_interval (%" PRIu32 ")", pfx,
                 sep, cfg->retry_max_interval_ms);
    if (cfg->listen.n == 0)
        errs_add(e, "%s%slisten: expected at least one address", pfx, sep);
    /* every FILE key names a file (not a directory) that must be readable now (the start would fail later, and a
     * reload would keep the old one), so --check-config says so before start */
    for (size_t i = 0; i < FBR_ARRAY_LEN(opts); i++) {
        const struct opt *o = &opts[i];
        if (!o->key || o->type != T_STR || !o->metavar || strcmp(o->metavar, "FILE") != 0)
            continue;
        const void *field = (const char *)cfg + o->offset;
        const char *path = *(char *const *)field;
        struct stat st;
        if (path && access(path, R_OK) != 0)
            errs_add(e, "%s%s%s: cannot read %s: %s", pfx, sep, o->key, path, strerror(errno));
        else if (path && stat(path, &st) == 0 && S_ISDIR(st.st_mode))
            errs_add(e, "%s%s%s: %s is a directory, not a file", pfx, sep, o->key, path);
    }
}

/*
 * Reads the configuration file at path: a new reference, or NULL with one error in e.  A file
 * that cannot be opened or read (missing, a directory, no permission) is "cannot read config
 * PATH: <errno text>"; only a file that was read and is not valid JSON gets jansson's
 * PATH:LINE:COLUMN message (json_load_file said ":-1:-1: unable to open" for the former, without
 * the path, and "'[' or '{' expected near end of file" for a directory).
 */
static json_t *load_file(const char *path, struct errs *e)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        errs_add(e, "cannot read config %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        errs_add(e, "cannot read config %s: %s", path, strerror(EISDIR));
        fclose(f);
        return NULL;
    }
    json_error_t jerr;
    errno = 0;
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &jerr);
    if (!root && ferror(f))
        errs_add(e, "cannot read config %s: %s", path, strerror(errno ? errno : EIO));
    else if (!root)
        errs_add(e, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
    fclose(f);
    return root;
}

int fbr_config_build(struct fbr_config *cfg, const struct fbr_cli *cli, char *err, size_t errlen)
{
    struct fbr_cfgerr list = {0};
    int rc = fbr_config_build_errs(cfg, cli, &list);
    errs_to_text(&list, err, errlen);
    return rc;
}

int fbr_config_build_errs(struct fbr_config *cfg, const struct fbr_cli *cli,
                          struct fbr_cfgerr *errs)
{
    struct errs e = {errs, 0};
    fbr_config_defaults(cfg);
    if (cli->config_file) {
        cfg->config_file = fbr_xstrdup(cli->config_file);
        json_t *root = load_file(cli->config_file, &e);
        if (!root)
            goto fail;
        struct fbr_cfgerr file_errs = {0};
        struct errs fe = {&file_errs, 0};
        apply_json(cfg, root, &fe);
        json_decref(root);
        for (size_t i = 0; i < file_errs.n; i++) /* each prefixed with the file name */
            errs_add(&e, "%s: %s", cli->config_file, file_errs.msgs[i]);
        fbr_cfgerr_clear(&file_errs);
        if (fe.count)
            goto fail;
    }
    /* Flags win over the file.  A repeatable flag replaces the file's list on first use. */
    int started[NOPTS];
    memset(started, 0, sizeof(started));
    for (size_t i = 0; i < cli->nopts; i++) {
        const struct opt *o = &opts[cli->opts[i].entry];
        if (set_from_text(cfg, o, cli->opts[i].value, started[cli->opts[i].entry]))
            errs_add(&e, "--%s: invalid value '%.64s'", o->flag, cli->opts[i].value);
        started[cli->opts[i].entry] = 1;
        mark_given(cfg, o);
    }
    cross_checks(cfg, cli->config_file ? cli->config_file : "", &e);
    if (e.count)
        goto fail;
    return FBR_OK;
fail:
    fbr_config_free(cfg);
    return FBR_INVALID;
}

/* ---- help and reference ---- */

static void default_text(const struct opt *o, char *buf, size_t len)
{
    if (o->def)
        snprintf(buf, len, "%s", o->def);
    else if (o->type == T_JSON_ARRAY)
        snprintf(buf, len, "[]");
    else if (o->type == T_JSON_OBJECT || o->type == T_ACTION || o->type == T_STRLIST)
        snprintf(buf, len, "(none)");
    else
        snprintf(buf, len, "(unset)");
}

void fbr_config_print_help(FILE *out, const char *argv0)
{
    fprintf(out, "usage: %s [FLAGS]\n\n"
                 "firebridge bridges the on-call platform and team chat.  Every flag has the same\n"
                 "key in the JSON config file with '_' for '-'; a flag overrides the file.\n\n",
            argv0);
    for (size_t i = 0; i < NOPTS; i++) {
        const struct opt *o = &opts[i];
        if (!o->flag)
            continue;
        char head[80], def[64];
        int n;
        if (o->short_flag)
            n = snprintf(head, sizeof(head), "  -%c, --%s", o->short_flag, o->flag);
        else
            n = snprintf(head, sizeof(head), "      --%s", o->flag);
        if (o->metavar && (o->type != T_ACTION || o->action == A_CONFIG))
            snprintf(head + n, sizeof(head) - (size_t)n, " %s", o->metavar);
        default_text(o, def, sizeof(def));
        fprintf(out, "%-36s %s", head, o->help);
        if (o->type != T_ACTION)
            fprintf(out, " [default: %s]", def);
        fputc('\n', out);
    }
    fprintf(out, "\nConfig file only (JSON): ");
    for (size_t i = 0, first = 1; i < NOPTS; i++) {
        if (!opts[i].flag) {
            fprintf(out, "%s%s (%s)", first ? "" : ", ", opts[i].key, opts[i].metavar);
            first = 0;
        }
    }
    fprintf(out, ".\n");
}

void fbr_config_print_reference(FILE *out)
{
    fprintf(out, "| Flag | Config key | Value | Default | Meaning |\n");
    fprintf(out, "|------|------------|-------|---------|---------|\n");
    for (size_t i = 0; i < NOPTS; i++) {
        const struct opt *o = &opts[i];
        char def[64];
        default_text(o, def, sizeof(def));
        char flag[64] = "";
        if (o->flag && o->short_flag)
            snprintf(flag, sizeof(flag), "`-%c`, `--%s`", o->short_flag, o->flag);
        else if (o->flag)
            snprintf(flag, sizeof(flag), "`--%s`", o->flag);
        char mv[48];
        snprintf(mv, sizeof(mv), "%s", o->metavar ? o->metavar : "");
        for (char *p = mv; *p; p++)
            if (*p == '|')
                *p = '/';
        fprintf(out, "| %s | %s%s%s | %s | %s | %s |\n", flag, o->key ? "`" : "",
                o->key ? o->key : "", o->key ? "`" : "", mv, o->type == T_ACTION ? "" : def,
                o->help);
    }
}

/* The value of one setting as JSON (NULL when unset); list entries are masked when secret. */
static json_t *value_json(const struct fbr_config *cfg, const struct opt *o)
{
    const void *field = (const char *)cfg + o->offset;
    char buf[64];
    switch (o->type) {
    case T_STR:
        return *(char *const *)field ? json_string(*(char *const *)field) : NULL;
    case T_LISTEN:
    case T_STRLIST: {
        const struct fbr_strlist *l = field;
        json_t *a = json_array();
        for (size_t i = 0; i < l->n; i++)
            json_array_append_new(a, json_string(o->type == T_STRLIST ? "***" : l->v[i]));
        return a;
    }
    case T_SIZE:
        return json_integer((json_int_t) * (const uint64_t *)field);
    case T_U32:
        return json_integer((json_int_t) * (const uint32_t *)field);
    case T_RATE:
        return json_string(fbr_rate_format(*(const struct fbr_rate *)field, buf, sizeof(buf)));
    case T_FSYNC:
        return json_string(fbr_fsync_mode_name(*(const enum fbr_fsync_mode *)field));
    case T_BOOL:
        return json_boolean(*(const int *)field);
    case T_LOGLEVEL:
        return json_string(fbr_log_level_name(*(const enum fbr_log_level *)field));
    case T_LOGFORMAT:
        return json_string(fbr_log_format_name(*(const enum fbr_log_format *)field));
    case T_MSGTYPE:
        return json_string(fbr_msg_type_name(*(const enum fbr_msg_type *)field));
    case T_JSON_ARRAY:
    case T_JSON_OBJECT:
    case T_ACTION:
        return NULL;
    }
    return NULL;
}

json_t *fbr_config_settings_json(const struct fbr_config *cfg)
{
    json_t *out = json_object();
    for (size_t i = 0; i < NOPTS; i++) {
        if (!opts[i].key)
            continue;
        json_t *v = value_json(cfg, &opts[i]);
        if (v)
            json_object_set_new(out, opts[i].key, v);
    }
    return out;
}

/* Writes s as roff text: backslashes escaped, '-' as \- when minus (option names), a line never
 * starting with a control character. */
static void roff_text(FILE *out, const char *s, int minus)
{
    if (*s == '.' || *s == '\'')
        fputs("\\&", out);
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\e", out);
        else if (*s == '-' && minus)
            fputs("\\-", out);
        else
            fputc(*s, out);
    }
}

void fbr_config_print_man_options(FILE *out)
{
    for (int file_only = 0; file_only < 2; file_only++) {
        fprintf(out, ".SH %s\n", file_only ? "CONFIGURATION FILE ONLY" : "OPTIONS");
        if (file_only)
            fprintf(out, "These keys have no flag; they are JSON values of the configuration "
                         "file.\n");
        for (size_t i = 0; i < NOPTS; i++) {
            const struct opt *o = &opts[i];
            if ((o->flag == NULL) != file_only)
                continue;
            fprintf(out, ".TP\n");
            if (o->flag) {
                if (o->short_flag)
                    fprintf(out, "\\fB\\-%c\\fR, ", o->short_flag);
                fputs("\\fB\\-\\-", out);
                roff_text(out, o->flag, 1);
                fputs("\\fR", out);
                if (o->metavar && (o->type != T_ACTION || o->action == A_CONFIG)) {
                    fputs(" \\fI", out);
                    roff_text(out, o->metavar, 0);
                    fputs("\\fR", out);
                }
            } else {
                fputs("\\fB", out);
                roff_text(out, o->key, 0);
                fputs("\\fR (", out);
                roff_text(out, o->metavar, 0);
                fputs(")", out);
            }
            fputc('\n', out);
            roff_text(out, o->help, 0);
            fputs(".\n", out);
            if (o->type == T_ACTION)
                continue;
            char def[64];
            default_text(o, def, sizeof(def));
            if (o->flag && o->key) {
                fputs("Config key: \\fB", out);
                roff_text(out, o->key, 0);
                fputs("\\fR.\n", out);
            }
            fputs("Default: ", out);
            roff_text(out, def, 0);
            fputs(".\n", out);
        }
    }
}

/* ---- checks for the sections other modules compile ---- */

static const char *field_type_name(enum fbr_field_type t)
{
    static const char *const names[] = {"a string", "an integer", "a boolean", "an object",
                                        "an array", "any value"};
    return names[t];
}

static int field_type_ok(enum fbr_field_type t, const json_t *v)
{
    switch (t) {
    case FBR_F_STRING:
        return json_is_string(v);
    case FBR_F_INT:
        return json_is_integer(v);
    case FBR_F_BOOL:
        return json_is_boolean(v);
    case FBR_F_OBJECT:
        return json_is_object(v);
    case FBR_F_ARRAY:
        return json_is_array(v);
    case FBR_F_ANY:
        return 1;
    }
    return 0;
}

int fbr_config_check_object(json_t *obj, const char *path, const struct fbr_field *fields,
                            size_t nfields, char *err, size_t errlen)
{
    struct fbr_cfgerr list = {0};
    int n = fbr_config_check_fields(obj, path, fields, nfields, &list);
    fbr_cfgerr_join(&list, err, errlen); /* after what err holds already */
    fbr_cfgerr_clear(&list);
    return n;
}

/*
 * The one table checker behind the top level's sections and the list items.  Its two wordings
 * differ only in the text, kept as the messages have always read: settings objects say
 * "webhooks[2].metod: unknown key" / "expected a string, got an integer" / "required key
 * missing"; list items (a rule, a webhook and their parts) say "rules[0]: unknown key \"sett\"" /
 * "must be true or false" / "missing".
 */
enum wording { SETTINGS, ITEM };

static const char *item_type_name(enum fbr_field_type t)
{
    static const char *const names[] = {"a string", "an integer", "true or false", "an object",
                                        "an array", "any value"};
    return names[t];
}

static int check_fields(json_t *obj, const char *path, const struct fbr_field *fields,
                        size_t nfields, enum wording w, struct fbr_cfgerr *errs)
{
    struct errs e = {errs, 0};
    const char *dot = path && *path ? "." : "";
    if (!path)
        path = "";
    if (!json_is_object(obj) && w == ITEM) {
        char keys[256] = "";
        size_t len = 0;
        for (size_t i = 0; i < nfields && len < sizeof(keys); i++)
            len += (size_t)snprintf(keys + len, sizeof(keys) - len, "%s%s", i ? ", " : "",
                                    fields[i].key);
        errs_add(&e, "%s: must be an object {%s}", path, keys);
        return e.count;
    }
    if (!json_is_object(obj)) {
        errs_add(&e, "%s: expected an object, got %s", *path ? path : "(top level)",
                 obj ? json_type_name(obj) : "nothing");
        return e.count;
    }
    const char *key;
    json_t *val;
    json_object_foreach(obj, key, val)
    {
        const struct fbr_field *f = NULL;
        for (size_t i = 0; i < nfields; i++) {
            if (strcmp(fields[i].key, key) == 0) {
                f = &fields[i];
                break;
            }
        }
        if (!f && w == ITEM) {
            errs_add(&e, "%s: unknown key \"%.100s\"", path, key);
        } else if (!f) {
            errs_add(&e, "%s%s%.100s: unknown key", path, dot, key);
        } else if (!field_type_ok(f->type, val)) {
            if (w == ITEM)
                errs_add(&e, "%s%s%s: must be %s", path, dot, key, item_type_name(f->type));
            else
                errs_add(&e, "%s%s%s: expected %s, got %s", path, dot, key,
                         field_type_name(f->type), json_type_name(val));
        } else if (f->type == FBR_F_INT && (f->min || f->max) &&
                   (json_integer_value(val) < f->min || json_integer_value(val) > f->max)) {
            errs_add(&e, "%s%s%s: %s an integer between %" PRId64 " and %" PRId64, path, dot,
                     key, w == ITEM ? "must be" : "expected", f->min, f->max);
        }
    }
    for (size_t i = 0; i < nfields; i++) {
        if (fields[i].required && !json_object_get(obj, fields[i].key))
            errs_add(&e, "%s%s%s: %s", path, dot, fields[i].key,
                     w == ITEM ? "missing" : "required key missing");
    }
    return e.count;
}

int fbr_config_check_fields(json_t *obj, const char *path, const struct fbr_field *fields,
                            size_t nfields, struct fbr_cfgerr *errs)
{
    return check_fields(obj, path, fields, nfields, SETTINGS, errs);
}

int fbr_config_check_item(json_t *obj, const char *path, const struct fbr_field *fields,
                          size_t nfields, struct fbr_cfgerr *errs)
{
    return check_fields(obj, path, fields, nfields, ITEM, errs);
}
