/*
 * events.c - derives the platform's webhook events: from an alert after the Rules Engine and the
 * incident transition it caused, or from a timeline event posted to /v1/events.  The output is
 * one shared event object plus a mask of event names; the intake renders each subscribed webhook
 * against that object next.
 */
#include "firebridge/events.h"

#include <stdio.h>
#include <string.h>
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

/* ---- bounds on a /v1/events body ------------------------------------------------------------ */

/* The dotted path of the value being checked, for messages; bounded, cut on a UTF-8 boundary so
 * the message stays valid UTF-8 (jansson refuses to pack anything else). */
struct walk {
    char path[160];
    size_t plen;
    size_t values;
    char *err;
    size_t errlen;
};

static size_t path_push(struct walk *w, const char *seg, size_t len, int dot)
{
    size_t saved = w->plen;
    size_t room = sizeof(w->path) - 1 - w->plen;
    if (dot && w->plen && room) {
        w->path[w->plen++] = '.';
        room--;
    }
    size_t n = fbr_utf8_cut(seg, len, room);
    memcpy(w->path + w->plen, seg, n);
    w->plen += n;
    w->path[w->plen] = '\0';
    return saved;
}

static void path_pop(struct walk *w, size_t saved)
{
    w->plen = saved;
    w->path[saved] = '\0';
}

/* Writes the message (fmt takes the path, then a limit) and evaluates to FBR_INVALID. */
#define FAIL(w, fmt, n)                                                                            \
    (snprintf((w)->err, (w)->errlen, fmt, (w)->path, (size_t)(n)), FBR_INVALID)

static int check_string(struct walk *w, json_t *v, size_t max)
{
    size_t len = json_string_length(v);
    if (len > max && fbr_utf8_chars(json_string_value(v), len) > max)
        return FAIL(w, "Field too long: %s exceeds %zu characters", max);
    return FBR_OK;
}

/* Checks v (a container at `depth`, the body being 1) and everything under it. */
static int check_tree(struct walk *w, json_t *v, unsigned depth)
{
    if (depth > FBR_EVENTS_MAX_DEPTH)
        return FAIL(w, "Invalid body: %s nests deeper than %zu levels", FBR_EVENTS_MAX_DEPTH);
    if (json_is_object(v)) {
        const char *key;
        size_t klen;
        json_t *m;
        json_object_keylen_foreach (v, key, klen, m) {
            if (++w->values > FBR_EVENTS_MAX_VALUES) {
                path_pop(w, 0);
                return FAIL(w, "Invalid body: %smore than %zu keys and values",
                            FBR_EVENTS_MAX_VALUES);
            }
            size_t saved = path_push(w, key, klen, 1);
            if (klen > FBR_EVENTS_FIELD_MAX && fbr_utf8_chars(key, klen) > FBR_EVENTS_FIELD_MAX)
                return FAIL(w, "Invalid body: key %s exceeds %zu characters",
                            FBR_EVENTS_FIELD_MAX);
            size_t max = FBR_EVENTS_FIELD_MAX;
            if (depth == 2 && strcmp(w->path, "CHAT.TEXT") == 0)
                max = FBR_EVENTS_CHAT_TEXT_MAX;
            int rc = json_is_string(m) ? check_string(w, m, max)
                     : (json_is_object(m) || json_is_array(m)) ? check_tree(w, m, depth + 1)
                                                               : FBR_OK;
            if (rc != FBR_OK)
                return rc;
            path_pop(w, saved);
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *m;
        json_array_foreach (v, i, m) {
            if (++w->values > FBR_EVENTS_MAX_VALUES) {
                path_pop(w, 0);
                return FAIL(w, "Invalid body: %smore than %zu keys and values",
                            FBR_EVENTS_MAX_VALUES);
            }
            char idx[24];
            int n = snprintf(idx, sizeof(idx), "[%zu]", i);
            size_t saved = path_push(w, idx, (size_t)n, 0);
            int rc = json_is_string(m) ? check_string(w, m, FBR_EVENTS_FIELD_MAX)
                     : (json_is_object(m) || json_is_array(m)) ? check_tree(w, m, depth + 1)
                                                               : FBR_OK;
            if (rc != FBR_OK)
                return rc;
            path_pop(w, saved);
        }
    }
    return FBR_OK;
}

int fbr_events_from_body(json_t *body, struct fbr_event_set *out, char *err, size_t errlen)
{
    static const char *const namespaces[] = {"ALERT", "STATE", "INCIDENT", "CHAT", "ONCALL",
                                             "PAGE"};
    out->mask = 0;
    out->event = NULL;
    if (!json_is_object(body)) {
        snprintf(err, errlen, "Invalid body: expected a JSON object");
        return FBR_INVALID;
    }
    json_t *name = json_object_get(body, "event");
    if (!name) {
        snprintf(err, errlen, "Missing fields: event");
        return FBR_INVALID;
    }
    enum fbr_event ev;
    if (!json_is_string(name) ||
        fbr_event_parse(json_string_value(name), json_string_length(name), &ev) != FBR_OK) {
        snprintf(err, errlen,
                 "Invalid field: event must be one of the 12 platform events or Any-Alert");
        return FBR_INVALID;
    }
    const char *key;
    json_t *v;
    json_object_foreach (body, key, v) {
        int known = strcmp(key, "event") == 0;
        for (size_t i = 0; i < FBR_ARRAY_LEN(namespaces); i++)
            known |= strcmp(key, namespaces[i]) == 0;
        if (!known) {
            snprintf(err, errlen, "Invalid body: unknown key (expected event, ALERT, STATE, "
                                  "INCIDENT, CHAT, ONCALL, PAGE)");
            return FBR_INVALID;
        }
        if (strcmp(key, "event") != 0 && !json_is_object(v)) {
            snprintf(err, errlen, "Invalid body: namespace %s must be a JSON object", key);
            return FBR_INVALID;
        }
    }
    struct walk w = {.err = err, .errlen = errlen};
    if (check_tree(&w, body, 1) != FBR_OK)
        return FBR_INVALID;
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
