/*
 * loadgen.h - firebridge-loadgen's parts and the one object they share.  The program is both ends
 * of a benchmark in one event loop: the sender (sender.c) posts alerts to firebridge (or
 * notifications to any HipChat-shaped proxy) open or closed loop, the sink (sink.c) is the
 * HipChat-shaped server the deliveries reach, the ledger (track.c) matches one to the other and
 * the report (report.c) prints progress each second and the result at the end.  main.c parses
 * flags and runs the phases (warm-up, measure, wait for replies, drain).
 */
#ifndef FBR_LOADGEN_H
#define FBR_LOADGEN_H

#include <event2/event.h>
#include <stdint.h>
#include <sys/types.h>

#include "hist.h"
#include "track.h"

#define LG_SCENARIO_MAP(X)                                                                         \
    X(SEED, "seed")                                                                                \
    X(SINGLE_ROOM, "single-room")                                                                  \
    X(MIXED, "mixed")                                                                              \
    X(FLOOD, "flood")

enum lg_scenario {
#define LG_X(name, text) LG_SCENARIO_##name,
    LG_SCENARIO_MAP(LG_X)
#undef LG_X
        LG_NSCENARIOS
};

enum lg_format {
    LG_FORMAT_ALERT,        /* alerts to firebridge's REST endpoint (and /v1/events) */
    LG_FORMAT_NOTIFICATION, /* HipChat notifications, e.g. through a reverse proxy */
};

struct lg_opts {
    char host[256]; /* the target as the Host header names it ("[::1]" for IPv6) */
    char addr[256]; /* the target's address as getaddrinfo() takes it */
    int port;
    double rate;          /* alerts per second; 0: closed loop */
    uint32_t connections; /* sender connections */
    double duration_s, warmup_s, drain_s;
    uint32_t rooms;
    char **routing_keys;
    size_t nrouting_keys;
    enum lg_scenario scenario;
    enum lg_format format;
    const char *api_key, *auth_token;
    char sink_host[256];
    int sink_port; /* 0: ephemeral */
    int no_sink;
    uint32_t sink_latency_ms;
    double sink_429, sink_5xx; /* fractions of deliveries answered 429 / 503 */
    int json;
    pid_t pid; /* daemon whose RSS is reported, 0: none */
    int no_metrics;
    uint64_t max_alerts;
    int quiet;
    int busy_poll; /* --busy-poll: the loop never blocks */
};

/* Status classes counted per side. */
#define LG_STATUS_MAP(X)                                                                           \
    X(S2XX, "2xx")                                                                                 \
    X(S429, "429")                                                                                 \
    X(S4XX, "4xx")                                                                                 \
    X(S503, "503")                                                                                 \
    X(S5XX, "5xx")                                                                                 \
    X(ERR, "error")

enum lg_status {
#define LG_X(name, text) LG_##name,
    LG_STATUS_MAP(LG_X)
#undef LG_X
        LG_NSTATUS
};

struct lg_sender;
struct lg_sink;

struct lg {
    struct lg_opts o;
    struct event_base *base;
    struct lg_track track;
    uint64_t start_ns, measure_ns, stop_ns; /* phases on the monotonic clock */
    int stopping;                           /* no new sends */
    /* sender results */
    struct lg_hist intake;    /* per alert sent at or after measure_ns: answer - intended send */
    struct lg_hist send_lag;  /* the same alerts: actual send - intended send (the sender's own
                               * lateness, part of intake; 0 in closed loop) */
    struct lg_hist from_send; /* the same alerts: answer - actual send (the target's share of
                               * intake, not corrected for coordinated omission) */
    uint64_t next_seq;        /* alerts started */
    uint64_t answered;        /* answers received */
    uint64_t answered_window; /* answers received within [measure_ns, stop_ns) */
    uint64_t status[LG_NSTATUS];
    uint64_t backlog_max; /* open loop: most alerts overdue at once */
    uint64_t unsent_due;  /* open loop: alerts due before the sending stopped, never sent (every
                           * connection was waiting for an answer): their latency is unknown */
    /* sink results */
    uint64_t sink_status[LG_NSTATUS];
    uint64_t delivered_window; /* first deliveries received within [measure_ns, stop_ns) */
    uint64_t first_delivery_ns, last_delivery_ns;
    /* from the daemon */
    long long queue_depth; /* last firebridge_deliveries_pending, -1: unknown */
    long peak_rss_kb, rss_kb;
    struct lg_sender *sender;
    struct lg_sink *sink;
};

uint64_t lg_now_ns(void);
/* Status class of an HTTP status (0: transport error). */
enum lg_status lg_status_class(int status);
const char *lg_status_name(enum lg_status s);
const char *lg_scenario_name(enum lg_scenario s);

/* sender.c: NULL on failure (message on stderr). */
struct lg_sender *lg_sender_new(struct lg *lg);
/* Starts sending (the phases' times are set). */
void lg_sender_start(struct lg_sender *s);
/* Requests still waiting for an answer. */
uint32_t lg_sender_busy(const struct lg_sender *s);
/* Asks the daemon's /metrics for the delivery queue depth; the answer lands in lg->queue_depth. */
void lg_sender_poll_metrics(struct lg_sender *s);
void lg_sender_free(struct lg_sender **s);

/*
 * Builds the request for alert seq intended at t_ns into buf (cap bytes) as the scenario says;
 * returns its length (0 when it does not fit) and sets *expects to whether one delivery of it
 * should reach a room.  Exposed for the tests.
 */
size_t lg_request_build(const struct lg_opts *o, uint64_t run_id, uint64_t seq, uint64_t t_ns,
                        char *buf, size_t cap, int *expects);

/* sink.c: NULL on failure (message on stderr).  The bound port is in lg_sink_port(). */
struct lg_sink *lg_sink_new(struct lg *lg);
int lg_sink_port(const struct lg_sink *k);
void lg_sink_free(struct lg_sink **k);

/*
 * Parses the sequence number, send time and room out of a delivery: path is
 * "/v2/room/r<N>/notification[?...]", body contains "lg <seq> <t_ns>".  Returns 0, or -1 when the
 * body names no alert; *room is nrooms when the path names no room r0..r(nrooms-1).
 */
int lg_sink_parse(const char *path, size_t plen, const char *body, size_t blen, uint32_t nrooms,
                  uint64_t *seq, uint64_t *t_ns, uint32_t *room);

/* report.c */
void lg_report_progress(struct lg *lg);
void lg_report_rss(struct lg *lg);
/* Prints the table (stderr with --json, else stdout) and the JSON object (stdout, --json). */
void lg_report_final(struct lg *lg, uint64_t lost);

#endif
