/*
 * main.c - firebridge-loadgen: flags (one table gives getopt_long its options and --help its
 * text, as the daemon's config table does), the phases of a run and the exit status.  A run:
 * the sink starts listening, the sender sends for --warmup then --duration seconds (open loop at
 * --rate, else closed loop), then the answers still in flight and the deliveries have --drain
 * seconds to arrive (a request never answered by then is unanswered); an alert answered 2xx whose
 * delivery never came is lost, and any loss makes the exit status 1 (2: bad flags or set-up
 * failure; 3: alerts were sent and not one was accepted).
 */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include "fbr_build.h"
#include "firebridge/common.h"
#include "firebridge/config.h"
#include "firebridge/ratelimit.h"
#include "firebridge/log.h"
#include "loadgen.h"

#define LG_FLAG_MAP(X)                                                                             \
    X(TARGET, "target", "ADDR:PORT", "127.0.0.1:8080",                                             \
      "where alerts (or notifications) are posted: firebridge, or a proxy")                        \
    X(RATE, "rate", "N/s", "0",                                                                    \
      "open loop: alerts per second ('N', 'N/s' or 'N/SECONDS', at least 0.00001); "               \
      "0 = closed loop")                                                                           \
    X(CONNECTIONS, "connections", "N", "32",                                                       \
      "sender keep-alive connections (each a descriptor: refused beyond ulimit -n)")               \
    X(DURATION, "duration", "SECONDS", "10", "measured sending time")                              \
    X(WARMUP, "warmup", "SECONDS", "1", "sending time before the measurement starts")              \
    X(DRAIN, "drain", "SECONDS", "10", "after sending, how long deliveries may still arrive")      \
    X(ROOMS, "rooms", "N", "1000", "rooms r0..r(N-1), one per alert in turn")                      \
    X(ROUTING_KEYS, "routing-keys", "K1,K2,...", "loadgen", "routing keys used in turn")           \
    X(SCENARIO, "scenario", "seed|single-room|mixed|flood", "seed",                                \
      "seed: a new incident per alert (one delivery each); single-room: the same to room r0; "     \
      "mixed: CRITICAL, ACK and RECOVERY of an earlier entity, a /v1/events item; flood: "         \
      "single-room, closed loop whatever --rate says")                                             \
    X(FORMAT, "format", "alert|notification", "alert",                                             \
      "notification: post HipChat notifications instead of alerts (a reverse proxy as target)")    \
    X(API_KEY, "api-key", "KEY", "CHANGE-ME-integration-key", "the daemon's API key")              \
    X(AUTH_TOKEN, "auth-token", "TOKEN", "loadgen", "auth_token the alerts carry")                 \
    X(SINK_LISTEN, "sink-listen", "ADDR:PORT", "127.0.0.1:0",                                      \
      "the sink's address (port 0: any, printed at start)")                                        \
    X(NO_SINK, "no-sink", NULL, NULL, "send only: no sink, no end-to-end figures, nothing lost")   \
    X(SINK_LATENCY, "sink-latency", "MS", "0", "the sink answers each delivery after this")        \
    X(SINK_429, "sink-429", "FRACTION", "0", "fraction of deliveries the sink answers 429")        \
    X(SINK_5XX, "sink-5xx", "FRACTION", "0", "fraction of deliveries the sink answers 503")        \
    X(PID, "pid", "PID", NULL, "the daemon's pid: its peak RSS is reported")                       \
    X(NO_METRICS, "no-metrics", NULL, NULL, "do not poll the target's /metrics for queue depth")   \
    X(MAX_ALERTS, "max-alerts", "N", "16000000",                                                   \
      "stop sending after this many alerts (the ledger, 10 bytes per alert, is sized up front: "   \
      "by this, or in open loop by --rate over --warmup and --duration when that is less)")        \
    X(JSON, "json", NULL, NULL, "print the result as one JSON object on stdout")                   \
    X(QUIET, "quiet", NULL, NULL, "no progress lines")                                             \
    X(BUSY_POLL, "busy-poll", NULL, NULL,                                                          \
      "never sleep: the event loop polls without blocking, one whole CPU (for a loadgen pinned "   \
      "to a core of its own, where each wake-up costs more than the work it wakes for)")          \
    X(HELP, "help", NULL, NULL, "this text")                                                       \
    X(VERSION, "version", NULL, NULL, "print the version")

enum lg_flag {
#define LG_X(id, name, meta, def, help) LG_FLAG_##id,
    LG_FLAG_MAP(LG_X)
#undef LG_X
        LG_NFLAGS
};

static const struct {
    const char *name, *meta, *def, *help;
} flags[] = {
#define LG_X(id, name, meta, def, help) {name, meta, def, help},
    LG_FLAG_MAP(LG_X)
#undef LG_X
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: firebridge-loadgen [FLAGS]\n\n"
            "Posts alerts to firebridge and is the HipChat-shaped server firebridge delivers\n"
            "to: measures intake latency (coordinated omission corrected with --rate),\n"
            "end-to-end delivery latency, loss, duplicates and order per room.  Point the\n"
            "daemon's webhook URL at http://<sink-listen>/v2/room/${{ALERT.room_id}}/...\n"
            "Exit status: 0, 1 when an accepted alert was never delivered, 2 on bad usage,\n"
            "3 when alerts were sent and none was accepted (2xx).\n\n");
    for (int i = 0; i < LG_NFLAGS; i++) {
        char head[80];
        int n = snprintf(head, sizeof(head), "      --%s", flags[i].name);
        if (flags[i].meta)
            snprintf(head + n, sizeof(head) - (size_t)n, " %s", flags[i].meta);
        fprintf(out, "%-36s %s", head, flags[i].help);
        if (flags[i].def)
            fprintf(out, " [default: %s]", flags[i].def);
        fputc('\n', out);
    }
}

static int parse_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* Open-loop rates below this (one alert in a bit more than a day) are refused: alert i is due
 * at i / rate seconds, which must stay a number of nanoseconds. */
#define LG_RATE_MIN 1e-5

static int parse_rate_value(const char *s, double *out)
{
    size_t n = strlen(s);
    if (n > 2 && strcmp(s + n - 2, "/s") == 0) {
        char num[64];
        if (n - 2 >= sizeof(num))
            return -1;
        memcpy(num, s, n - 2);
        num[n - 2] = '\0';
        return parse_double(num, 0, 1e8, out);
    }
    if (!strchr(s, '/'))
        return parse_double(s, 0, 1e8, out);
    uint32_t cnt, secs;
    if (fbr_ratelimit_parse(s, &cnt, &secs) != FBR_OK || secs == 0)
        return -1;
    *out = (double)cnt / secs;
    return 0;
}

static int parse_rate(const char *s, double *out)
{
    double r;
    if (parse_rate_value(s, &r) != 0 || (r > 0 && r < LG_RATE_MIN))
        return -1;
    *out = r;
    return 0;
}

static int parse_addr(const char *s, char *host, size_t hostlen, int *port)
{
    int family;
    uint16_t p;
    char h[64];
    if (fbr_listen_parse(s, h, sizeof(h), &family, &p) != FBR_OK)
        return -1;
    snprintf(host, hostlen, "%s%s", family == AF_INET6 ? "ipv6:" : "", h);
    *port = p;
    return 0;
}

/* The target: its address for getaddrinfo() (IPv6 without the "ipv6:" libevhtp wants for
 * binding) and for the Host header (IPv6 in brackets); port 0 names nothing to connect to. */
static int parse_target(struct lg_opts *o, const char *s)
{
    int family;
    uint16_t p;
    char h[64];
    if (fbr_listen_parse(s, h, sizeof(h), &family, &p) != FBR_OK || p == 0)
        return -1;
    snprintf(o->addr, sizeof(o->addr), "%s", h);
    snprintf(o->host, sizeof(o->host), family == AF_INET6 ? "[%s]" : "%s", h);
    o->port = p;
    return 0;
}

static int split_keys(struct lg_opts *o, const char *s)
{
    for (size_t i = 0; i < o->nrouting_keys; i++)
        free(o->routing_keys[i]);
    free(o->routing_keys);
    o->routing_keys = NULL;
    o->nrouting_keys = 0;
    const char *p = s;
    for (;;) {
        size_t len = strcspn(p, ",");
        if (len == 0 || len > 255 ||
            strspn(p, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                      "0123456789-_.") < len)
            return -1;
        o->routing_keys = fbr_xrealloc(o->routing_keys, (o->nrouting_keys + 1) * sizeof(char *));
        o->routing_keys[o->nrouting_keys++] = fbr_xstrndup(p, len);
        if (!p[len])
            return 0;
        p += len + 1;
    }
}

/* Applies one flag; returns 0 or -1 (bad value). */
static int apply(struct lg_opts *o, enum lg_flag f, const char *v)
{
    double d;
    switch (f) {
    case LG_FLAG_TARGET:
        return parse_target(o, v);
    case LG_FLAG_RATE:
        return parse_rate(v, &o->rate);
    case LG_FLAG_CONNECTIONS:
        if (parse_double(v, 1, 10000, &d) != 0 || d != floor(d))
            return -1;
        o->connections = (uint32_t)d;
        return 0;
    case LG_FLAG_DURATION:
        return parse_double(v, 0.1, 86400, &o->duration_s);
    case LG_FLAG_WARMUP:
        return parse_double(v, 0, 3600, &o->warmup_s);
    case LG_FLAG_DRAIN:
        return parse_double(v, 0, 3600, &o->drain_s);
    case LG_FLAG_ROOMS:
        if (parse_double(v, 1, 1000000, &d) != 0 || d != floor(d))
            return -1;
        o->rooms = (uint32_t)d;
        return 0;
    case LG_FLAG_ROUTING_KEYS:
        return split_keys(o, v);
    case LG_FLAG_SCENARIO:
        for (int i = 0; i < LG_NSCENARIOS; i++) {
            if (strcmp(v, lg_scenario_name((enum lg_scenario)i)) == 0) {
                o->scenario = (enum lg_scenario)i;
                return 0;
            }
        }
        return -1;
    case LG_FLAG_FORMAT:
        if (strcmp(v, "alert") == 0)
            o->format = LG_FORMAT_ALERT;
        else if (strcmp(v, "notification") == 0)
            o->format = LG_FORMAT_NOTIFICATION;
        else
            return -1;
        return 0;
    case LG_FLAG_API_KEY:
    case LG_FLAG_AUTH_TOKEN:
        if (!*v || strlen(v) > 255 || strpbrk(v, "\"\\/ ?&#%\r\n"))
            return -1;
        if (f == LG_FLAG_API_KEY)
            o->api_key = v;
        else
            o->auth_token = v;
        return 0;
    case LG_FLAG_SINK_LISTEN:
        return parse_addr(v, o->sink_host, sizeof(o->sink_host), &o->sink_port);
    case LG_FLAG_NO_SINK:
        o->no_sink = 1;
        return 0;
    case LG_FLAG_SINK_LATENCY:
        if (parse_double(v, 0, 600000, &d) != 0 || d != floor(d))
            return -1;
        o->sink_latency_ms = (uint32_t)d;
        return 0;
    case LG_FLAG_SINK_429:
        return parse_double(v, 0, 1, &o->sink_429);
    case LG_FLAG_SINK_5XX:
        return parse_double(v, 0, 1, &o->sink_5xx);
    case LG_FLAG_PID:
        if (parse_double(v, 1, 4194304, &d) != 0 || d != floor(d))
            return -1;
        o->pid = (pid_t)d;
        return 0;
    case LG_FLAG_NO_METRICS:
        o->no_metrics = 1;
        return 0;
    case LG_FLAG_MAX_ALERTS:
        if (parse_double(v, 1, 1e9, &d) != 0 || d != floor(d))
            return -1;
        o->max_alerts = (uint64_t)d;
        return 0;
    case LG_FLAG_JSON:
        o->json = 1;
        return 0;
    case LG_FLAG_QUIET:
        o->quiet = 1;
        return 0;
    case LG_FLAG_BUSY_POLL:
        o->busy_poll = 1;
        return 0;
    default:
        return 0;
    }
}

/* Returns 0 run, 1 exit 0 (help, version), -1 exit 2. */
static int parse_flags(struct lg_opts *o, int argc, char **argv)
{
    for (int i = 0; i < LG_NFLAGS; i++)
        if (flags[i].def && flags[i].meta && apply(o, (enum lg_flag)i, flags[i].def) != 0)
            abort(); /* a bad default in the table above: a programming error */
    struct option lopts[LG_NFLAGS + 1];
    for (int i = 0; i < LG_NFLAGS; i++)
        lopts[i] = (struct option){flags[i].name, flags[i].meta ? required_argument : no_argument,
                                   NULL, 256 + i};
    lopts[LG_NFLAGS] = (struct option){NULL, 0, NULL, 0};
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":", lopts, NULL)) != -1) {
        if (c < 256) {
            if (c == ':' && optopt >= 256)
                fprintf(stderr, "firebridge-loadgen: --%s: needs a value: %s\n",
                        flags[optopt - 256].name, flags[optopt - 256].meta);
            else
                fprintf(stderr, "firebridge-loadgen: %s: unknown flag (see --help)\n",
                        argv[optind - 1]);
            return -1;
        }
        enum lg_flag f = (enum lg_flag)(c - 256);
        if (f == LG_FLAG_HELP) {
            usage(stdout);
            return 1;
        }
        if (f == LG_FLAG_VERSION) {
            printf("firebridge-loadgen %s\n", FBR_VERSION);
            return 1;
        }
        if (apply(o, f, optarg) != 0) {
            fprintf(stderr, "firebridge-loadgen: --%s: expected %s, got '%.64s'\n", flags[f].name,
                    flags[f].meta, optarg);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "firebridge-loadgen: %.64s: unexpected argument (flags only; see --help)\n",
                argv[optind]);
        return -1;
    }
    if (o->scenario == LG_SCENARIO_FLOOD)
        o->rate = 0;
    if (o->format == LG_FORMAT_NOTIFICATION)
        o->no_metrics = 1;
    return 0;
}

/* Descriptors the loadgen needs besides its sender connections (the loop, the sink's listener
 * and at least a few of its clients, /metrics, stdio). */
#define LG_SPARE_FDS 16

/*
 * The checks that need the flags together: the sender's connections must fit under the
 * descriptor limit (raised to the hard limit when needed), and the ledger is sized for the
 * alerts the run can send (in open loop no more than --rate allows over --warmup and
 * --duration, whatever --max-alerts says).  Returns 0, or -1 with a message.
 */
static int check_resources(struct lg_opts *o)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)o->connections + LG_SPARE_FDS;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < need) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > need ? need : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
            fprintf(stderr,
                    "firebridge-loadgen: --connections %" PRIu32 ": needs %llu descriptors, the "
                    "limit is %llu (ulimit -n)\n",
                    o->connections, (unsigned long long)need, (unsigned long long)rl.rlim_cur);
            return -1;
        }
    }
    if (o->rate > 0) {
        double can = ceil(o->rate * (o->warmup_s + o->duration_s)) + 2;
        if (can < (double)o->max_alerts)
            o->max_alerts = (uint64_t)can;
    }
    return 0;
}

/* ---- phases ------------------------------------------------------------------------------- */

enum phase { PH_SEND, PH_ANSWERS, PH_DRAIN, PH_DONE };

struct run {
    struct lg *lg;
    enum phase phase;
    uint64_t phase_end_ns;
    uint64_t next_progress_ns;
    uint64_t lost;
};

static uint64_t secs_ns(double s)
{
    return (uint64_t)(s * 1e9);
}

static void on_phase_tick(evutil_socket_t fd, short what, void *arg)
{
    struct run *r = arg;
    struct lg *lg = r->lg;
    uint64_t now = lg_now_ns();
    if (now >= r->next_progress_ns) {
        r->next_progress_ns += secs_ns(1);
        lg_report_rss(lg);
        lg_report_progress(lg);
        if (!lg->o.no_metrics)
            lg_sender_poll_metrics(lg->sender);
    }
    switch (r->phase) {
    case PH_SEND:
        if (now < lg->stop_ns)
            return;
        lg->stopping = 1;
        if (lg->o.rate > 0) {
            double due = floor((double)(lg->stop_ns - lg->start_ns) * lg->o.rate / 1e9) + 1;
            if (due > (double)lg->o.max_alerts)
                due = (double)lg->o.max_alerts;
            if (due > (double)lg->next_seq)
                lg->unsent_due = (uint64_t)due - lg->next_seq;
        }
        r->phase = PH_ANSWERS;
        /* answers and deliveries share one deadline: a target that never answers (or never
         * delivers) holds the run for --drain seconds after the sending, no longer */
        r->phase_end_ns = now + secs_ns(lg->o.drain_s);
        __attribute__((fallthrough)); /* clang reads no comment for this */
    case PH_ANSWERS:
        if (lg_sender_busy(lg->sender) && now < r->phase_end_ns)
            return;
        r->phase = PH_DRAIN;
        __attribute__((fallthrough));
    case PH_DRAIN:
        if (!lg->o.no_sink && now < r->phase_end_ns &&
            (lg->track.delivered < lg->track.expected ||
             lg_track_lost(&lg->track, lg->next_seq) > 0))
            return;
        r->phase = PH_DONE;
        r->lost = lg->o.no_sink ? 0 : lg_track_lost(&lg->track, lg->next_seq);
        event_base_loopexit(lg->base, NULL);
        return;
    case PH_DONE:
        return;
    }
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct run *r = arg;
    /* a second interrupt ends at once; the first ends the sending phase */
    if (r->phase != PH_SEND) {
        r->lost = r->lg->o.no_sink ? 0 : lg_track_lost(&r->lg->track, r->lg->next_seq);
        event_base_loopexit(r->lg->base, NULL);
    }
    r->lg->stop_ns = lg_now_ns();
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    static struct lg lg; /* large (two histograms): not on the stack */
    int rc = parse_flags(&lg.o, argc, argv);
    if (rc != 0)
        return rc > 0 ? 0 : 2;
    if (check_resources(&lg.o) != 0)
        return 2;
    lg.queue_depth = -1;
    /* libevhtp 1.2.18 prints an ANSI-coloured "ODDITY" line on stderr for every pipelined request
     * the sink reads (a write(2) each, 10 % of the system calls at 24,000 alerts/s with the
     * daemon's
     * --pipeline): captured like the daemon's and dropped below debug level; the loadgen's own
     * lines go to the original stream (fbr_log_stream()) */
    fbr_log_capture_stderr();
    /* open loop sends are timed to the microsecond: timerfd instead of epoll's milliseconds; the
     * changelist folds an event turned on and off within one iteration (sink.c, flush_now) */
    struct event_config *ecfg = event_config_new();
    event_config_set_flag(ecfg, EVENT_BASE_FLAG_PRECISE_TIMER);
    event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    lg.base = event_base_new_with_config(ecfg);
    event_config_free(ecfg);
    if (!lg.base) {
        fprintf(fbr_log_stream(), "firebridge-loadgen: cannot set up the event loop\n");
        return 2;
    }
    if (lg_track_init(&lg.track, lg.o.max_alerts, lg.o.rooms + 1) != 0) {
        fprintf(fbr_log_stream(),
                "firebridge-loadgen: the ledger for %" PRIu64 " alerts (%" PRIu64
                " MB; --max-alerts, or --rate over --warmup and --duration) does not fit in "
                "memory\n",
                lg.o.max_alerts, lg.o.max_alerts * 10 / 1000000);
        return 2;
    }
    lg.track.nrooms = lg.o.rooms + 1; /* room index o.rooms: any room not named r0..r(N-1) */
    if (!lg.o.no_sink) {
        lg.sink = lg_sink_new(&lg);
        if (!lg.sink)
            return 2;
        const char *sh = lg.o.sink_host;
        int v6 = strncmp(sh, "ipv6:", 5) == 0;
        fprintf(fbr_log_stream(), "firebridge-loadgen: sink listening on %s%s%s:%d\n",
                v6 ? "[" : "", v6 ? sh + 5 : sh, v6 ? "]" : "", lg_sink_port(lg.sink));
    }
    lg.sender = lg_sender_new(&lg);
    if (!lg.sender)
        return 2;
    struct run r = {.lg = &lg, .phase = PH_SEND};
    lg.start_ns = lg_now_ns();
    lg.measure_ns = lg.start_ns + secs_ns(lg.o.warmup_s);
    lg.stop_ns = lg.measure_ns + secs_ns(lg.o.duration_s);
    lg.track.measure_from_ns = lg.measure_ns;
    r.next_progress_ns = lg.start_ns + secs_ns(1);
    struct event *tick = event_new(lg.base, -1, EV_PERSIST, on_phase_tick, &r);
    struct timeval tv = {0, 20000};
    event_add(tick, &tv);
    struct event *sigint = evsignal_new(lg.base, SIGINT, on_signal, &r);
    struct event *sigterm = evsignal_new(lg.base, SIGTERM, on_signal, &r);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    lg_sender_start(lg.sender);
    if (lg.o.busy_poll) /* event_base_loopexit() ends both: the flag outlives the call */
        while (!event_base_got_exit(lg.base) && !event_base_got_break(lg.base))
            event_base_loop(lg.base, EVLOOP_NONBLOCK);
    else
        event_base_dispatch(lg.base);
    if (lg.stop_ns < lg.measure_ns + 1)
        lg.stop_ns = lg.measure_ns + 1;
    lg_report_rss(&lg);
    lg_report_final(&lg, r.lost);
    event_free(tick);
    event_free(sigint);
    event_free(sigterm);
    lg_sender_free(&lg.sender);
    lg_sink_free(&lg.sink);
    lg_track_free(&lg.track);
    for (size_t i = 0; i < lg.o.nrouting_keys; i++)
        free(lg.o.routing_keys[i]);
    free(lg.o.routing_keys);
    event_base_free(lg.base);
    if (r.lost)
        return 1;
    /* alerts went out and not one was accepted: the target is down or refused them all, which a
     * script running a benchmark must not take for a clean run */
    return lg.next_seq > 0 && lg.status[LG_S2XX] == 0 ? 3 : 0;
}
