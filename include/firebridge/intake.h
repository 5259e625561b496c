/*
 * intake.h - the inbound endpoints, as plain functions so they are testable without a
 * server: the platform-compatible REST alert endpoint
 * `POST /integrations/generic/20131114/alert/{api_key}/{routing_key}`, the Prometheus
 * Alertmanager receiver `POST /v1/alertmanager/{routing_key}` (a group of alerts, mapped by
 * alertmanager.h) and the timeline event endpoint `POST /v1/events` (both with
 * Authorization: Bearer <api_key>).  An alert is validated, stamped
 * (routing_key, VO_UUID, VO_ALERT_RCV_TIME, ...), run through the Rules Engine, the incident
 * table and event derivation; every enabled webhook subscribed to a fired event is rendered and
 * handed to a sink (the delivery engine, or a queue in tests).  This is the head of the data
 * path: intake -> rules -> incidents/events -> templates -> delivery.
 */
#ifndef FIREBRIDGE_INTAKE_H
#define FIREBRIDGE_INTAKE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "firebridge/alertmanager.h"
#include "firebridge/common.h"
#include "firebridge/incidents.h"
#include "firebridge/journal.h"
#include "firebridge/rules.h"
#include "firebridge/server.h"
#include "firebridge/webhook.h"

#define FBR_INTAKE_ALERT_PREFIX "/integrations/generic/20131114/alert/"
#define FBR_INTAKE_EVENTS_PATH "/v1/events"

#define FBR_INTAKE_FIELD_MAX 1024         /* characters, most fields */
#define FBR_INTAKE_STATE_MESSAGE_MAX 20480
#define FBR_INTAKE_ENTITY_ID_MAX 512
#define FBR_ROUTING_KEY_MAX 256 /* bytes of a routing key (a path segment of every endpoint) */

#define FBR_INTAKE_RETRY_AFTER_S 5 /* Retry-After of a 503 when the sink is full */

/*
 * Where rendered deliveries go; same contract as fbr_delivery_submit() so the delivery engine
 * plugs in with a one-line adapter.  On FBR_OK the sink has taken over o's contents and
 * references (o is left initialised and empty, e.g. by fbr_outreq_move); on any other return o is
 * untouched and the intake releases it.  o itself stays the intake's (it is reused).
 *
 * FBR_INVALID means this request can never be sent (counted, the others go on); any other
 * refusal (FBR_LIMIT: --max-pending reached) is taken as temporary.  `room` (optional) says how
 * many submissions would be accepted right now (for the delivery engine: max_pending minus
 * fbr_delivery_pending()); with it the intake refuses an alert whose deliveries do not all fit
 * before anything is submitted or changed.
 */
struct fbr_sink {
    int (*submit)(void *arg, struct fbr_outreq *o);
    void *arg;
    size_t (*room)(void *arg); /* NULL: unknown, rely on submit's answer */
    /* Optional, for a sink that holds what it takes until the journal committed it (the
     * delivery engine with the journal on): last_seq names the newest submission so far,
     * cancel drops the still-held ones in (after, upto] (fbr_delivery_last_seq and
     * fbr_delivery_cancel).  The intake cancels what a request submitted when its journal
     * commit failed and it answered 503. */
    uint64_t (*last_seq)(void *arg);
    size_t (*cancel)(void *arg, uint64_t after, uint64_t upto);
};

struct fbr_intake_opts {
    const char *const *api_keys; /* copied; a request must carry one of them */
    size_t napi_keys;
    const char *organization_id; /* copied; VO_ORGANIZATION_ID ("" when NULL) */
    struct fbr_rules *rules;       /* borrowed, may be NULL; see fbr_intake_set_config */
    struct fbr_webhooks *webhooks; /* borrowed, may be NULL */
    struct fbr_incidents *incidents; /* borrowed, may be NULL (no STATE/INCIDENT, no lifecycle) */
    struct fbr_sink sink;
    struct fbr_journal *journal;   /* borrowed, may be NULL: the HTTP endpoints answer 200 only
                                      once the journal committed what the request appended
                                      (fbr_journal_wait), 503 + Retry-After when it failed or
                                      while it cannot be written.  A request answered 503
                                      because the commit failed is taken back whole: its
                                      deliveries are cancelled unsent (sink.cancel) and its
                                      incident changes undone (fbr_incidents_undo), so the
                                      sender's retry is processed as the first post would
                                      have been and the room sees the alert once */
    uint64_t (*clock_ms)(void);    /* wall clock in ms; NULL: fbr_wall_ms */
    struct fbr_alertmanager_opts alertmanager; /* copied */
};

struct fbr_intake_stats {
    uint64_t alerts, events, rejected;      /* accepted alerts / timeline events, 4xx replies */
    uint64_t deliveries, skipped, invalid;  /* submitted, URL variable missing, unsafe render */
    uint64_t sink_errors;                   /* deliveries the sink refused and that are lost */
    uint64_t unavailable;                   /* 503 replies: the sink was full, nothing changed */
    struct fbr_rules_stats rules;
};

struct fbr_intake;

/* 1 when s[0..len) is a routing key: at most FBR_ROUTING_KEY_MAX letters, digits, '-' and '_'
 * (the empty string passes: callers that need one check the length). */
int fbr_routing_key_ok(const char *s, size_t len);

/* Never fails (aborts on exhaustion).  Returns a new intake. */
struct fbr_intake *fbr_intake_new(const struct fbr_intake_opts *opts);
void fbr_intake_free(struct fbr_intake **in);
/* Swaps the borrowed rules and webhooks (configuration reload); NULL disables them. */
void fbr_intake_set_config(struct fbr_intake *in, struct fbr_rules *rules,
                           struct fbr_webhooks *webhooks);
/* Replaces the Alertmanager mapping options (configuration reload; copied). */
void fbr_intake_set_alertmanager(struct fbr_intake *in, const struct fbr_alertmanager_opts *o);
const struct fbr_intake_stats *fbr_intake_stats(const struct fbr_intake *in);
/* The intake's metrics collector (metrics.h; arg: the intake, borrowed): alerts, events,
 * rejected and unavailable requests, webhook renders by outcome, rule matches. */
struct fbr_metrics_samples;
void fbr_intake_metrics_collect(struct fbr_metrics_samples *s, void *arg);

/* What a request produced: the HTTP status, the JSON reply (new reference, never NULL), the
 * number of deliveries handed to the sink, and for a 503 the Retry-After seconds (else 0). */
struct fbr_intake_reply {
    int status;
    json_t *body;
    size_t deliveries;
    unsigned retry_after;
};

/*
 * Handles POST <path> on the alert endpoint.  `path` is the decoded path; `body` is the parsed
 * request body (borrowed, modified in place: the stamped and rule-rewritten alert that webhooks
 * see; NULL when the body was not JSON).  A wrong key or malformed path gives 404, a bad body
 * 400 {"result":"failure","message":...}, success 200 {"result":"success","entity_id":...}.
 *
 * All or nothing: the deliveries are rendered before anything is committed; when the sink has
 * no room for them (or refuses the first one as temporary) the reply is
 * 503 {"result":"failure","message":...} with retry_after set, nothing was submitted and the
 * incident table is unchanged, so the client's retry is processed as if it were the first post.
 * Only a temporary refusal after some deliveries were accepted (a sink without `room`) loses the
 * rest; that alert is answered 200 and the loss counted in sink_errors and logged.
 * Release out->body with json_decref.
 */
void fbr_intake_alert(struct fbr_intake *in, struct fbr_slice path, json_t *body,
                      struct fbr_intake_reply *out);

/*
 * Runs a group of alerts of the platform's shape (`alerts`, a JSON array, borrowed; its objects
 * are stamped and rewritten in place) for routing key rk through the path of
 * fbr_intake_alert(): each is checked as the REST endpoint checks one (400 naming
 * "alerts[i]: ..." when one fails, nothing processed), stamped, run through the rules, the
 * incident table, the events and the webhooks.  All or nothing: the deliveries the whole group
 * will need (predicted from the incident table without changing it) must fit the sink's room,
 * else 503 with retry_after and nothing changed.  Success: 200
 * {"result":"success","alerts":N,"deliveries":M}.  Release out->body with json_decref.
 */
void fbr_intake_alert_group(struct fbr_intake *in, struct fbr_slice rk, json_t *alerts,
                            struct fbr_intake_reply *out);

/*
 * Handles POST /v1/alertmanager/{routing_key}: a wrong path gives 404, an Authorization other
 * than "Bearer <api_key>" 401, a body fbr_alertmanager_map() refuses 400 with its message
 * naming the field; then fbr_intake_alert_group() on the mapped alerts.  `body` is borrowed and
 * not modified (NULL: not JSON).
 */
void fbr_intake_alertmanager(struct fbr_intake *in, struct fbr_slice path,
                             const char *authorization, json_t *body,
                             struct fbr_intake_reply *out);

/* 1 when authorization (a header value, may be NULL) is "Bearer <one of the api keys>"; the
 * keys are compared in constant time. */
int fbr_intake_authorized(const struct fbr_intake *in, const char *authorization);

/*
 * Handles POST /v1/events.  `authorization` is the Authorization header value (or NULL): it must
 * be "Bearer <api_key>" (401 otherwise).  `body` as above (borrowed, not modified).  A full
 * sink gives the same 503 as for an alert.
 */
void fbr_intake_event(struct fbr_intake *in, const char *authorization, json_t *body,
                      struct fbr_intake_reply *out);

/*
 * fbr_intake_event() for events firebridge posts itself on behalf of someone it already trusts
 * (the HipChat add-on, after a verified room message): no API key is checked.  Alerts it makes
 * itself (an /ack in a room) go through fbr_intake_alert_group(), which checks no key either.
 */
void fbr_intake_event_trusted(struct fbr_intake *in, json_t *body, struct fbr_intake_reply *out);

/*
 * Something else that follows the timeline (the HipChat add-on's room notifications): called
 * after every accepted alert or timeline event, once its webhooks were submitted and its
 * incident change committed, with the events it fired (borrowed for the call).  need (may be
 * NULL) says beforehand how many deliveries fn will queue for a set, at most: the intake counts
 * them in its all-or-nothing room check (503 before anything changes), so what the observer
 * posts after a 200 has room.  One observer; fn NULL removes it.
 */
struct fbr_event_set;
typedef void (*fbr_intake_observer_fn)(void *arg, const struct fbr_event_set *set);
typedef size_t (*fbr_intake_observer_need_fn)(void *arg, const struct fbr_event_set *set);
void fbr_intake_set_observer(struct fbr_intake *in, fbr_intake_observer_fn fn,
                             fbr_intake_observer_need_fn need, void *arg);
/*
 * The event namespaces (FBR_NS_BIT()s of template.h) the observer reads; fbr_intake_set_observer
 * sets all of them.  An alert's event object carries STATE and INCIDENT only when the enabled
 * webhooks' templates (fbr_webhooks_namespaces, decided at fbr_intake_new and
 * fbr_intake_set_config) or the observer read them; ALERT always.  Call again whenever what the
 * observer reads changes (a configuration reload).
 */
void fbr_intake_observer_namespaces(struct fbr_intake *in, unsigned namespaces);

/* Registers the three endpoints on srv (POST only; bodies parsed here so a wrong key is a 404 even
 * with an unparsable body; a 503 carries Retry-After).  `in` must outlive the server's use of
 * the routes.  While srv drains (fbr_server_drain) they answer 503 with Retry-After
 * and accept nothing. */
void fbr_intake_register(struct fbr_intake *in, struct fbr_server *srv);

#endif
