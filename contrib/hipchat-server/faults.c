/*
 * faults.c - hipchat-server's fault injection: the rules set by --fault, the config file and
 * POST /faults (error statuses, 429s with chosen reset times, resets, stalls, slow replies,
 * close after the reply), their use by the notification API, and the deferred work (timers on
 * the connection) that stalls, delays and resets need.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "hcs.h"

void hcs_fault_free(struct hcs_fault *f)
{
    if (!f)
        return;
    free(f->room);
    free(f->retry_after);
    free(f->reset_headers);
    free(f);
}

void hcs_faults_clear(struct hcs *s)
{
    while (s->faults) {
        struct hcs_fault *f = s->faults;
        s->faults = f->next;
        hcs_fault_free(f);
    }
}

static int json_get_ms(json_t *o, const char *key, long *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return FBR_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 3600000) {
        snprintf(err, errlen, "'%s' must be an integer from 0 to 3600000", key);
        return FBR_ERROR;
    }
    *out = (long)json_integer_value(v);
    return FBR_OK;
}

/* Parses one fault object; returns a new fault or NULL with err filled. */
static struct hcs_fault *fault_parse(json_t *o, char *err, size_t errlen)
{
    static const char *const known[] = {"room",        "count",        "status",   "reset",
                                        "close",       "stall_ms",     "delay_ms", "reset_in",
                                        "retry_after", "reset_headers"};
    if (!json_is_object(o)) {
        snprintf(err, errlen, "a fault must be a JSON object");
        return NULL;
    }
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        size_t i = 0;
        while (i < FBR_ARRAY_LEN(known) && strcmp(known[i], key) != 0)
            i++;
        if (i == FBR_ARRAY_LEN(known)) {
            snprintf(err, errlen, "unknown fault key '%.64s'", key);
            return NULL;
        }
    }
    struct hcs_fault *f = fbr_xcalloc(1, sizeof(*f));
    f->count = 1;
    f->reset_in = -1;
    if ((v = json_object_get(o, "room"))) {
        if (json_is_string(v))
            f->room = fbr_xstrdup(json_string_value(v));
        else if (json_is_integer(v)) {
            char buf[32];
            snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            f->room = fbr_xstrdup(buf);
        } else {
            snprintf(err, errlen, "'room' must be a string or an integer");
            goto fail;
        }
    }
    if ((v = json_object_get(o, "count"))) {
        if (!json_is_integer(v) || json_integer_value(v) < -1 || json_integer_value(v) == 0) {
            snprintf(err, errlen, "'count' must be a positive integer or -1 (until cleared)");
            goto fail;
        }
        f->count = (long)json_integer_value(v);
    }
    if ((v = json_object_get(o, "status"))) {
        if (!json_is_integer(v) || json_integer_value(v) < 200 || json_integer_value(v) > 599) {
            snprintf(err, errlen, "'status' must be an HTTP status from 200 to 599");
            goto fail;
        }
        f->status = (int)json_integer_value(v);
    }
    if ((v = json_object_get(o, "reset")) && !json_is_boolean(v)) {
        snprintf(err, errlen, "'reset' must be a boolean");
        goto fail;
    }
    f->reset = json_is_true(v);
    if ((v = json_object_get(o, "close")) && !json_is_boolean(v)) {
        snprintf(err, errlen, "'close' must be a boolean");
        goto fail;
    }
    f->close = json_is_true(v);
    if (json_get_ms(o, "stall_ms", &f->stall_ms, err, errlen) < 0 ||
        json_get_ms(o, "delay_ms", &f->delay_ms, err, errlen) < 0 ||
        json_get_ms(o, "reset_in", &f->reset_in, err, errlen) < 0)
        goto fail;
    if ((v = json_object_get(o, "retry_after"))) {
        char buf[32];
        if (json_is_integer(v) && json_integer_value(v) >= 0) {
            snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
            f->retry_after = fbr_xstrdup(buf);
        } else if (json_is_string(v) && !strpbrk(json_string_value(v), "\r\n")) {
            f->retry_after = fbr_xstrdup(json_string_value(v));
        } else if (json_is_false(v) || json_is_null(v)) {
            f->retry_after = fbr_xstrdup("");
        } else {
            snprintf(err, errlen, "'retry_after' must be seconds, a string or false");
            goto fail;
        }
    }
    if ((v = json_object_get(o, "reset_headers"))) {
        const char *h = json_string_value(v);
        if (!h || (strcmp(h, "flood") && strcmp(h, "rate") && strcmp(h, "both"))) {
            snprintf(err, errlen, "'reset_headers' must be \"flood\", \"rate\" or \"both\"");
            goto fail;
        }
        f->reset_headers = fbr_xstrdup(h);
    }
    if (!f->status && !f->reset && !f->close && !f->stall_ms && !f->delay_ms) {
        snprintf(err, errlen, "a fault needs one of status, reset, close, stall_ms, delay_ms");
        goto fail;
    }
    return f;
fail:
    hcs_fault_free(f);
    return NULL;
}

int hcs_faults_add_json(struct hcs *s, json_t *j, char *err, size_t errlen)
{
    struct hcs_fault *list = NULL, **tail = &list;
    size_t n = json_is_array(j) ? json_array_size(j) : 1;
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_is_array(j) ? json_array_get(j, i) : j;
        struct hcs_fault *f = fault_parse(o, err, errlen);
        if (!f) {
            while (list) {
                struct hcs_fault *next = list->next;
                hcs_fault_free(list);
                list = next;
            }
            return FBR_ERROR;
        }
        *tail = f;
        tail = &f->next;
    }
    struct hcs_fault **end = &s->faults;
    while (*end)
        end = &(*end)->next;
    *end = list;
    return FBR_OK;
}

struct hcs_fault *hcs_fault_take(struct hcs *s, const struct hcs_room *r, const char *key)
{
    for (struct hcs_fault **pp = &s->faults; *pp; pp = &(*pp)->next) {
        struct hcs_fault *f = *pp;
        if (f->room && strcmp(f->room, key) != 0 &&
            !(r && (strcmp(f->room, r->id) == 0 || (r->name && strcmp(f->room, r->name) == 0))))
            continue;
        struct hcs_fault *copy = fbr_xcalloc(1, sizeof(*copy));
        *copy = *f;
        copy->room = NULL;
        copy->next = NULL;
        copy->retry_after = f->retry_after ? fbr_xstrdup(f->retry_after) : NULL;
        copy->reset_headers = f->reset_headers ? fbr_xstrdup(f->reset_headers) : NULL;
        if (f->count > 0 && --f->count == 0) {
            *pp = f->next;
            hcs_fault_free(f);
        }
        s->stats.faults_injected++;
        return copy;
    }
    return NULL;
}

static json_t *faults_json(const struct hcs *s)
{
    json_t *a = json_array();
    for (const struct hcs_fault *f = s->faults; f; f = f->next) {
        json_t *o = json_object();
        json_object_set_new(o, "room", f->room ? json_string(f->room) : json_null());
        json_object_set_new(o, "count", json_integer(f->count));
        if (f->status)
            json_object_set_new(o, "status", json_integer(f->status));
        if (f->reset)
            json_object_set_new(o, "reset", json_true());
        if (f->close)
            json_object_set_new(o, "close", json_true());
        if (f->stall_ms)
            json_object_set_new(o, "stall_ms", json_integer(f->stall_ms));
        if (f->delay_ms)
            json_object_set_new(o, "delay_ms", json_integer(f->delay_ms));
        if (f->reset_in >= 0)
            json_object_set_new(o, "reset_in", json_integer(f->reset_in));
        if (f->retry_after)
            json_object_set_new(o, "retry_after", json_string(f->retry_after));
        if (f->reset_headers)
            json_object_set_new(o, "reset_headers", json_string(f->reset_headers));
        json_array_append_new(a, o);
    }
    return a;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct hcs_conn *c = arg;
    evhtp_request_t *req = c->req;
    enum hcs_pending kind = c->pending;
    event_free(c->timer);
    c->timer = NULL;
    c->pending = HCS_PENDING_NONE;
    switch (kind) {
    case HCS_PENDING_PROCESS: {
        /* A client that gave up during the stall (closed, reset, or sent more while waiting for
         * this answer) gets nothing: the request is dropped unprocessed, as by a hung server. */
        struct bufferevent *bev = evhtp_connection_get_bev(c->ec);
        evutil_socket_t sock = bufferevent_getfd(bev);
        char probe;
        errno = 0;
        ssize_t n = sock >= 0 ? recv(sock, &probe, 1, MSG_PEEK | MSG_DONTWAIT) : 0;
        if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK) ||
            evbuffer_get_length(bufferevent_get_input(bev)) > 0) {
            c->srv->stats.abandoned++;
            evhtp_connection_free(c->ec); /* runs on_conn_fini, which frees c */
            break;
        }
        c->fault->stall_ms = 0;
        hcs_notification_resume(c, req);
        break;
    }
    case HCS_PENDING_REPLY:
        hcs_fault_free(c->fault);
        c->fault = NULL;
        hcs_send_now(c->srv, req, c->status);
        evhtp_request_resume(req);
        break;
    case HCS_PENDING_RESET: {
        /* SO_LINGER 0 makes close() send RST: the peer sees a reset, not an orderly EOF. */
        struct linger lg = {1, 0};
        evutil_socket_t sock = bufferevent_getfd(evhtp_connection_get_bev(c->ec));
        if (sock >= 0)
            setsockopt(sock, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        c->srv->stats.by_status[0]++;
        evhtp_connection_free(c->ec); /* runs on_conn_fini, which frees c */
        break;
    }
    case HCS_PENDING_NONE:
        break;
    }
}

void hcs_schedule(struct hcs_conn *c, evhtp_request_t *req, enum hcs_pending kind, long ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (c->timer)
        event_free(c->timer);
    c->timer = evtimer_new(c->srv->base, on_timer, c);
    c->pending = kind;
    c->req = req;
    evtimer_add(c->timer, &tv);
}

void hcs_faults_handle(struct hcs *s, evhtp_request_t *req, htp_method m)
{
    if (m == htp_method_GET) {
        hcs_reply_json(s, req, 200, faults_json(s));
        return;
    }
    if (m == htp_method_DELETE) {
        hcs_faults_clear(s);
        hcs_reply_json(s, req, 200, faults_json(s));
        return;
    }
    if (m != htp_method_POST) {
        hcs_reply_error(s, req, 405, "use GET, POST or DELETE");
        return;
    }
    size_t blen;
    const char *btext = hcs_req_body(req, &blen);
    json_error_t jerr;
    char err[256];
    json_t *j = json_loadb(btext, blen, 0, &jerr);
    if (!j) {
        snprintf(err, sizeof(err), "invalid JSON: %s", jerr.text);
        hcs_reply_error(s, req, 400, err);
        return;
    }
    if (json_is_object(j) && json_is_true(json_object_get(j, "clear"))) {
        hcs_faults_clear(s);
        json_object_del(j, "clear");
        if (json_object_size(j) == 0) {
            json_decref(j);
            hcs_reply_json(s, req, 200, faults_json(s));
            return;
        }
    }
    int rc = hcs_faults_add_json(s, j, err, sizeof(err));
    json_decref(j);
    if (rc < 0)
        hcs_reply_error(s, req, 400, err);
    else
        hcs_reply_json(s, req, 200, faults_json(s));
}
