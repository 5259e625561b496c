/*
 * events.c - derives the platform's webhook events: from an alert after the Rules Engine and the
 * incident transition it caused, or from a timeline event posted to /v1/events.  The output is
 * one shared event object plus a mask of event names; the intake renders each subscribed webhook
 * against that object next.
 */
#include "firebridge/events.h"

#include <strings.h>

static const char *const event_names[] = {
#define FBR_X(id, name) name,
    FBR_EVENT_MAP(FBR_X)
#undef FBR_X
};

const char *fbr_event_name(enum fbr_event ev)
{
    return (unsigned)ev < FBR_EV_COUNT ? event_names[ev] : "?";
}

int fbr_event_parse(const char *name, size_t len, enum fbr_event *out)
{
    for (unsigned i = 0; i < FBR_EV_COUNT; i++) {
        if (strlen(event_names[i]) == len && strncasecmp(event_names[i], name, len) == 0) {
            *out = (enum fbr_event)i;
            return FBR_OK;
        }
    }
    return FBR_NOTFOUND;
}

void fbr_events_derive(json_t *alert, const struct fbr_incident_result *res,
                       struct fbr_event_set *out)
{
    uint32_t mask = FBR_EV_BIT(FBR_EV_ANY_ALERT);
    switch (res ? res->transition : FBR_TR_NONE) {
    case FBR_TR_TRIGGERED:
        mask |= FBR_EV_BIT(FBR_EV_INCIDENT_TRIGGERED) | FBR_EV_BIT(FBR_EV_ANY_INCIDENT);
        break;
    case FBR_TR_ACKED:
        mask |= FBR_EV_BIT(FBR_EV_INCIDENT_ACKNOWLEDGED) | FBR_EV_BIT(FBR_EV_ANY_INCIDENT);
        break;
    case FBR_TR_RESOLVED:
        mask |= FBR_EV_BIT(FBR_EV_INCIDENT_RESOLVED) | FBR_EV_BIT(FBR_EV_ANY_INCIDENT);
        break;
    case FBR_TR_NONE:
    case FBR_TR_ROLLED:
        break;
    }
    json_t *ev = json_object();
    json_object_set(ev, "ALERT", alert);
    if (res && res->state)
        json_object_set(ev, "STATE", res->state);
    if (res && res->incident)
        json_object_set(ev, "INCIDENT", res->incident);
    out->mask = mask;
    out->event = ev;
}

static uint32_t with_umbrella(enum fbr_event ev)
{
    uint32_t m = FBR_EV_BIT(ev);
    switch (ev) {
    case FBR_EV_INCIDENT_TRIGGERED:
    case FBR_EV_INCIDENT_ACKNOWLEDGED:
    case FBR_EV_INCIDENT_RESOLVED:
        return m | FBR_EV_BIT(FBR_EV_ANY_INCIDENT);
    case FBR_EV_INCIDENT_CHATS:
        return m | FBR_EV_BIT(FBR_EV_ALL_CHATS);
    case FBR_EV_ON_CALL:
    case FBR_EV_OFF_CALL:
        return m | FBR_EV_BIT(FBR_EV_ANY_ON_CALL);
    case FBR_EV_PAGING_START:
    case FBR_EV_PAGING_STOP:
        return m | FBR_EV_BIT(FBR_EV_ANY_PAGING);
    default:
        return m;
    }
}

int fbr_events_from_body(json_t *body, struct fbr_event_set *out, const char **err)
{
    static const char *const namespaces[] = {"ALERT", "STATE", "INCIDENT", "CHAT", "ONCALL",
                                             "PAGE"};
    out->mask = 0;
    out->event = NULL;
    if (!json_is_object(body)) {
        *err = "Invalid body: expected a JSON object";
        return FBR_INVALID;
    }
    json_t *name = json_object_get(body, "event");
    if (!name) {
        *err = "Missing fields: event";
        return FBR_INVALID;
    }
    enum fbr_event ev;
    if (!json_is_string(name) ||
        fbr_event_parse(json_string_value(name), json_string_length(name), &ev) != FBR_OK) {
        *err = "Invalid field: event must be one of the 12 platform events or Any-Alert";
        return FBR_INVALID;
    }
    const char *key;
    json_t *v;
    json_object_foreach (body, key, v) {
        int known = strcmp(key, "event") == 0;
        for (size_t i = 0; i < FBR_ARRAY_LEN(namespaces); i++)
            known |= strcmp(key, namespaces[i]) == 0;
        if (!known) {
            *err = "Invalid body: unknown key (expected event, ALERT, STATE, INCIDENT, CHAT, "
                   "ONCALL, PAGE)";
            return FBR_INVALID;
        }
        if (known && strcmp(key, "event") != 0 && !json_is_object(v)) {
            *err = "Invalid body: every namespace must be a JSON object";
            return FBR_INVALID;
        }
    }
    json_t *obj = json_object();
    for (size_t i = 0; i < FBR_ARRAY_LEN(namespaces); i++) {
        v = json_object_get(body, namespaces[i]);
        if (v)
            json_object_set(obj, namespaces[i], v);
    }
    out->mask = with_umbrella(ev);
    out->event = obj;
    return FBR_OK;
}

void fbr_event_set_clear(struct fbr_event_set *s)
{
    json_decref(s->event);
    s->event = NULL;
    s->mask = 0;
}
