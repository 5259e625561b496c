/*
 * events.h - the platform's outgoing-webhook events (12 names plus Any-Alert) and how they are
 * derived: from a processed alert and the incident transition it caused (intake -> rules ->
 * incidents -> here), or from a timeline event posted to /v1/events.  The result is one event
 * object ({"ALERT":..., "STATE":..., "INCIDENT":...} or the posted namespaces) and the set of
 * event names it fires; the intake then renders every enabled webhook subscribed to one of them.
 */
#ifndef FIREBRIDGE_EVENTS_H
#define FIREBRIDGE_EVENTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "firebridge/common.h"
#include "firebridge/incidents.h"

#define FBR_EVENT_MAP(X)                                                                           \
    X(INCIDENT_TRIGGERED, "Incident-Triggered")                                                    \
    X(INCIDENT_ACKNOWLEDGED, "Incident-Acknowledged")                                              \
    X(INCIDENT_RESOLVED, "Incident-Resolved")                                                      \
    X(ANY_INCIDENT, "Any-Incident")                                                                \
    X(INCIDENT_CHATS, "Incident-Chats")                                                            \
    X(ALL_CHATS, "All-Chats")                                                                      \
    X(ON_CALL, "On-Call")                                                                          \
    X(OFF_CALL, "Off-Call")                                                                        \
    X(ANY_ON_CALL, "Any-On-Call")                                                                  \
    X(PAGING_START, "Paging-Start")                                                                \
    X(PAGING_STOP, "Paging-Stop")                                                                  \
    X(ANY_PAGING, "Any-Paging")                                                                    \
    X(ANY_ALERT, "Any-Alert")

enum fbr_event {
#define FBR_X(id, name) FBR_EV_##id,
    FBR_EVENT_MAP(FBR_X)
#undef FBR_X
    FBR_EV_COUNT
};

#define FBR_EV_BIT(ev) (UINT32_C(1) << (ev))

/* Returns the exact platform spelling ("Incident-Triggered"), or "?" out of range. */
const char *fbr_event_name(enum fbr_event ev);
/* Parses an event name (exact spelling, ASCII case-insensitive).  FBR_OK or FBR_NOTFOUND. */
int fbr_event_parse(const char *name, size_t len, enum fbr_event *out);

/*
 * What one alert or timeline event fires: a mask of FBR_EV_BIT()s and the one event object every
 * webhook of the set renders against.  `event` is a new reference (NULL when mask is 0).
 */
struct fbr_event_set {
    uint32_t mask;
    json_t *event;
};

/*
 * Derives the events of a processed alert.  `alert` (borrowed; the event object takes a
 * reference) is the alert after the Rules Engine; `res` is what fbr_incidents_apply() reported.
 * Any-Alert always fires; Incident-Triggered / -Acknowledged / -Resolved fire on the matching
 * transition, each together with Any-Incident.  The event object is
 * {"ALERT": alert, "STATE": res->state, "INCIDENT": res->incident} (STATE/INCIDENT omitted when
 * NULL).  Never fails.
 */
void fbr_events_derive(json_t *alert, const struct fbr_incident_result *res,
                       struct fbr_event_set *out);

/* Bounds on what a /v1/events client controls (characters counted as UTF-8 code points). */
#define FBR_EVENTS_FIELD_MAX 1024       /* any string value, and any key */
#define FBR_EVENTS_CHAT_TEXT_MAX 20480  /* CHAT.TEXT */
#define FBR_EVENTS_MAX_DEPTH 8          /* the body object is depth 1, a namespace depth 2 */
#define FBR_EVENTS_MAX_VALUES 1000      /* object members plus array elements, whole body */

/*
 * Builds the events of a POST /v1/events body: {"event": "<name>", "ALERT": {..}, "STATE": {..},
 * "CHAT": {..}, "ONCALL": {..}, "PAGE": {..}, "INCIDENT": {..}} (every namespace optional, each
 * must be an object).  The named event fires with its umbrella: On-Call/Off-Call with
 * Any-On-Call, Paging-Start/-Stop with Any-Paging, Incident-Chats with All-Chats,
 * Incident-Triggered/-Acknowledged/-Resolved with Any-Incident.  The body is bounded by the
 * FBR_EVENTS_* limits above (strings and keys, nesting depth, total number of values).  `body` is
 * borrowed; the event object references the namespaces.  Returns FBR_OK, or FBR_INVALID with the
 * message for the 400 reply written to err (NUL-terminated, truncated to errlen).
 */
int fbr_events_from_body(json_t *body, struct fbr_event_set *out, char *err, size_t errlen);

/* Drops the event reference and zeroes the set. */
void fbr_event_set_clear(struct fbr_event_set *s);

#endif
