/*
 * api.c - the room notification API that firebridge delivers to, POST
 * /v2/room/{id_or_name}/notification (hipchat-api.md sections 1 and 2), checked strictly and in
 * the documented order: injected fault, token, room, the token's rate window, the body field by
 * field, the room's flood window, then storage.  Every response carries the X-Ratelimit-* and
 * X-FloodControl-* headers.  Other /v2 paths answer 404 or 405 with the same headers.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hcs.h"

static void add_rate_headers(evhtp_request_t *req, struct hcs_window_view tok,
                             struct hcs_window_view room)
{
    hcs_add_header_u64(req, "X-Ratelimit-Limit", tok.limit);
    hcs_add_header_u64(req, "X-Ratelimit-Remaining", tok.remaining);
    hcs_add_header_u64(req, "X-Ratelimit-Reset", tok.reset_s);
    hcs_add_header_u64(req, "X-FloodControl-Limit", room.limit);
    hcs_add_header_u64(req, "X-FloodControl-Remaining", room.remaining);
    hcs_add_header_u64(req, "X-FloodControl-Reset", room.reset_s);
}

/* Extracts the token: the Authorization: Bearer header first (the spec prefers it), then the
 * auth_token query parameter.  Returns 1 found, 0 missing, -1 malformed. */
static int find_token(evhtp_request_t *req, char *out, size_t outlen)
{
    const char *auth = evhtp_kv_find(req->headers_in, "Authorization");
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0) {
        const char *t = auth + 7;
        while (*t == ' ')
            t++;
        size_t n = strlen(t);
        while (n && t[n - 1] == ' ')
            n--;
        if (n == 0 || n >= outlen)
            return n ? -1 : 0;
        memcpy(out, t, n);
        out[n] = '\0';
        return 1;
    }
    int q = hcs_query_param(hcs_req_query(req), "auth_token", out, outlen);
    if (q == 1 && out[0] == '\0')
        return 0;
    return q;
}

/* ---------------------------------------------------------------------------------------------
 * Body validation, field by field (hipchat-api.md section 1).  Returns NULL when valid, else a
 * message for the 400 reply written into err.
 */
static const char *validate_string(json_t *body, const char *key, size_t min, size_t max,
                                   const char *const *allowed, char *err, size_t errlen)
{
    json_t *v = json_object_get(body, key);
    if (!v)
        return NULL;
    if (!json_is_string(v)) {
        snprintf(err, errlen, "'%s' must be a string", key);
        return err;
    }
    const char *str = json_string_value(v);
    size_t n = fbr_utf8_chars(str, json_string_length(v));
    if (allowed) {
        for (size_t i = 0; allowed[i]; i++) {
            if (strcmp(allowed[i], str) == 0)
                return NULL;
        }
        snprintf(err, errlen, "'%s' is not one of the allowed values", key);
        return err;
    }
    if (n < min || n > max) {
        snprintf(err, errlen, "'%s' must be %zu to %zu characters long, got %zu", key, min, max, n);
        return err;
    }
    return NULL;
}

const char *hcs_validate_body(const struct hcs *s, json_t *body, char *err, size_t errlen)
{
    static const char *const formats[] = {"html", "text", NULL};
    static const char *const colors[] = {"yellow", "green",  "red", "purple",
                                         "gray",   "random", NULL};
    static const char *const known[] = {"message", "message_format", "color", "notify",
                                        "from",    "attach_to",      "card",  NULL};
    if (!json_is_object(body)) {
        snprintf(err, errlen, "the request body must be a JSON object");
        return err;
    }
    json_t *msg = json_object_get(body, "message");
    if (!msg) {
        snprintf(err, errlen, "'message' is required");
        return err;
    }
    if (validate_string(body, "message", 1, HCS_MAX_MESSAGE_CHARS, NULL, err, errlen) ||
        validate_string(body, "message_format", 0, 0, formats, err, errlen) ||
        validate_string(body, "color", 0, 0, colors, err, errlen) ||
        validate_string(body, "from", 0, HCS_MAX_FROM_CHARS, NULL, err, errlen) ||
        validate_string(body, "attach_to", 0, HCS_MAX_ATTACH_TO_CHARS, NULL, err, errlen))
        return err;
    json_t *v = json_object_get(body, "notify");
    if (v && !json_is_boolean(v)) {
        snprintf(err, errlen, "'notify' must be a boolean");
        return err;
    }
    v = json_object_get(body, "card");
    if (v && !json_is_object(v)) {
        snprintf(err, errlen, "'card' must be an object");
        return err;
    }
    if (s->strict_keys) {
        const char *key;
        json_object_foreach(body, key, v)
        {
            size_t i = 0;
            while (known[i] && strcmp(known[i], key) != 0)
                i++;
            if (!known[i]) {
                snprintf(err, errlen, "unknown field '%.64s'", key);
                return err;
            }
        }
    }
    return NULL;
}

static const char *str_or(json_t *body, const char *key, const char *dflt)
{
    const char *v = json_string_value(json_object_get(body, key));
    return v ? v : dflt;
}

json_t *hcs_notification_record(struct hcs *s, const struct hcs_room *r, json_t *body,
                                const char *delivery, const char *oauth_id)
{
    json_t *rec = json_pack("{s:s,s:I,s:s,s:s,s:s,s:b,s:s,s:s,s:I,s:o}", "room", r->id, "seq",
                            (json_int_t)(s->next_seq + 1), "kind", "notification", "message",
                            json_string_value(json_object_get(body, "message")), "color",
                            str_or(body, "color", "yellow"), "notify",
                            json_is_true(json_object_get(body, "notify")), "message_format",
                            str_or(body, "message_format", "html"), "from",
                            str_or(body, "from", ""), "received_ms", (json_int_t)fbr_wall_ms(),
                            "delivery", delivery ? json_string(delivery) : json_null());
    if (json_object_get(body, "attach_to"))
        json_object_set(rec, "attach_to", json_object_get(body, "attach_to"));
    if (json_object_get(body, "card"))
        json_object_set(rec, "card", json_object_get(body, "card"));
    if (oauth_id)
        json_object_set_new(rec, "oauth_id", json_string(oauth_id));
    return rec;
}

/* ---------------------------------------------------------------------------------------------
 * POST /v2/room/{id_or_name}/notification
 */
/* Answers a notification request: runs the fault (if any), auth, limits, validation and storage,
 * and fills req's reply.  Returns the status to send. */
static int notification_reply(struct hcs *s, evhtp_request_t *req, const char *key,
                              const struct hcs_fault *f)
{
    uint64_t now = hcs_now_s();
    char token[HCS_MAX_TOKEN], err[256];
    struct hcs_room *room = hcs_room_find(s, key);
    int have = find_token(req, token, sizeof(token));
    struct hcs_token_state *ts = have == 1 ? hcs_token_get(s, token, 0) : NULL;
    struct hcs_window_view tv = hcs_window_peek(ts ? &ts->window : NULL, s->token_rate, now);
    struct hcs_window_view rv = hcs_window_peek(room ? &room->window : NULL, s->room_rate, now);

    if (f && f->status) {
        const char *which = f->reset_headers ? f->reset_headers : "flood";
        if (f->status == 429 && f->reset_in >= 0) {
            if (strcmp(which, "rate") == 0 || strcmp(which, "both") == 0)
                tv.remaining = 0, tv.reset_s = now + (uint64_t)f->reset_in;
            if (strcmp(which, "flood") == 0 || strcmp(which, "both") == 0)
                rv.remaining = 0, rv.reset_s = now + (uint64_t)f->reset_in;
        }
        add_rate_headers(req, tv, rv);
        if (f->retry_after && f->retry_after[0])
            hcs_add_header(req, "Retry-After", f->retry_after);
        else if (!f->retry_after && f->status == 429 && f->reset_in >= 0)
            hcs_add_header_u64(req, "Retry-After", (uint64_t)f->reset_in);
        if (f->status != 204 && f->status != 304)
            hcs_set_error_body(req, f->status, "injected fault");
        return f->status;
    }

    int status = 0;
    const char *msg = NULL;
    struct hcs_addon *addon = NULL;
    int grant = have == 1 ? hcs_oauth_check(s, token, room, &addon, &msg) : FBR_DECLINED;
    if (have < 0) {
        status = 401, msg = "Invalid OAuth session";
    } else if (have == 0) {
        status = 401, msg = "Authenticated requests only.";
    } else if (grant == FBR_NOTFOUND) {
        status = 404, msg = "Room not found";
    } else if (grant != FBR_DECLINED && grant != FBR_OK) {
        status = 401;
    } else if (grant == FBR_OK) {
        /* an add-on's token: hcs_oauth_check() has decided for its installation's room */
    } else if (!ts && !s->any_token && !(room && hcs_room_has_token(room, token))) {
        status = 401, msg = "Invalid OAuth session";
    } else if (!room && (!s->any_room || s->nrooms >= s->max_rooms)) {
        status = 404, msg = "Room not found";
    }
    if (!status && !room) {
        room = hcs_room_add(s, key, NULL);
        rv = hcs_window_peek(&room->window, s->room_rate, now);
    }
    if (!status && grant == FBR_DECLINED) {
        int global = 0;
        for (size_t i = 0; i < s->nglobal_tokens; i++)
            global |= strcmp(s->global_tokens[i], token) == 0;
        if (!global && !s->any_token && !hcs_room_has_token(room, token))
            status = 401, msg = "This token has no access to this room";
    }
    if (status) {
        add_rate_headers(req, tv, rv);
        hcs_set_error_body(req, status, msg);
        return status;
    }
    if (!ts)
        ts = hcs_token_track(s, token, now);
    if (hcs_window_hit(&ts->window, s->token_rate, now) < 0) {
        tv = hcs_window_peek(&ts->window, s->token_rate, now);
        add_rate_headers(req, tv, rv);
        hcs_add_header_u64(req, "Retry-After", tv.reset_s - now);
        hcs_set_error_body(req, 429, "You have exceeded the rate limit.");
        return 429;
    }
    tv = hcs_window_peek(&ts->window, s->token_rate, now);

    char flag[16];
    if (hcs_query_param(hcs_req_query(req), "auth_test", flag, sizeof(flag)) == 1 &&
        strcmp(flag, "true") == 0) {
        add_rate_headers(req, tv, rv);
        hcs_set_json_body(req,
                          json_pack("{s:{s:i,s:s,s:s}}", "success", "code", 202, "type", "Accepted",
                                    "message", "This auth_token has access to use this method."));
        return 202;
    }

    size_t blen;
    const char *btext = hcs_req_body(req, &blen);
    json_error_t jerr;
    json_t *body = json_loadb(btext, blen, JSON_REJECT_DUPLICATES, &jerr);
    const char *bad = NULL;
    if (!body) {
        snprintf(err, sizeof(err), "the request body is not valid JSON: %s", jerr.text);
        bad = err;
    } else {
        bad = hcs_validate_body(s, body, err, sizeof(err));
    }
    if (bad) {
        json_decref(body);
        add_rate_headers(req, tv, rv);
        hcs_set_error_body(req, 400, bad);
        return 400;
    }
    if (hcs_window_hit(&room->window, s->room_rate, now) < 0) {
        json_decref(body);
        rv = hcs_window_peek(&room->window, s->room_rate, now);
        add_rate_headers(req, tv, rv);
        hcs_add_header_u64(req, "Retry-After", rv.reset_s - now);
        hcs_set_error_body(req, 429, "You have exceeded the flood control limit for this room.");
        return 429;
    }
    rv = hcs_window_peek(&room->window, s->room_rate, now);

    const char *delivery = evhtp_kv_find(req->headers_in, "X-Firebridge-Delivery");
    json_t *rec = hcs_notification_record(s, room, body, delivery, addon ? addon->oauth_id : NULL);
    json_decref(body);
    hcs_store_record(s, room, rec);
    s->stats.accepted++;
    add_rate_headers(req, tv, rv);
    return 204;
}

/* Runs the notification after any stall; sends now or after the fault's delay. */
static void notification_finish(struct hcs *s, struct hcs_conn *c, evhtp_request_t *req,
                                const char *key, int deferred)
{
    const struct hcs_fault *f = c ? c->fault : NULL;
    if (f && f->reset) {
        if (!deferred)
            evhtp_request_pause(req);
        hcs_schedule(c, req, HCS_PENDING_RESET, 0);
        return;
    }
    int status = notification_reply(s, req, key, f);
    if (f && f->close)
        hcs_no_keepalive(req);
    if (f && f->delay_ms) {
        if (!deferred)
            evhtp_request_pause(req);
        c->status = status;
        hcs_schedule(c, req, HCS_PENDING_REPLY, f->delay_ms);
        return;
    }
    if (c && c->fault) {
        hcs_fault_free(c->fault);
        c->fault = NULL;
    }
    hcs_send_now(s, req, status);
    if (deferred)
        evhtp_request_resume(req);
}

/* Extracts the decoded room key of /v2/room/{id_or_name}/notification; FBR_OK or FBR_ERROR. */
static int notification_room(const char *path, char *key, size_t keylen)
{
    static const char prefix[] = "/v2/room/", suffix[] = "/notification";
    size_t plen = strlen(path);
    if (plen <= sizeof(prefix) - 1 + sizeof(suffix) - 1 ||
        strncmp(path, prefix, sizeof(prefix) - 1) != 0 ||
        strcmp(path + plen - (sizeof(suffix) - 1), suffix) != 0)
        return FBR_ERROR;
    const char *seg = path + sizeof(prefix) - 1;
    size_t seglen = plen - (sizeof(prefix) - 1) - (sizeof(suffix) - 1);
    if (memchr(seg, '/', seglen))
        return FBR_ERROR;
    return hcs_pct_decode(seg, seglen, key, keylen, 0);
}

static void handle_notification(struct hcs *s, evhtp_request_t *req, const char *key)
{
    struct hcs_conn *c = hcs_conn_of(req);
    s->stats.notifications++;
    struct hcs_fault *f = hcs_fault_take(s, hcs_room_find(s, key), key);
    if (!c) {
        hcs_fault_free(f), f = NULL;
    } else {
        hcs_conn_cancel(c);
        c->fault = f;
    }
    if (f && f->stall_ms) {
        evhtp_request_pause(req);
        hcs_schedule(c, req, HCS_PENDING_PROCESS, f->stall_ms);
        return;
    }
    notification_finish(s, c, req, key, 0);
}

void hcs_notification_resume(struct hcs_conn *c, evhtp_request_t *req)
{
    char key[HCS_MAX_ROOM_KEY];
    if (notification_room(hcs_req_path(req), key, sizeof(key)) < 0)
        key[0] = '\0';
    notification_finish(c->srv, c, req, key, 1);
}

void hcs_api_handle(struct hcs *s, evhtp_request_t *req, const char *path, htp_method m)
{
    char key[HCS_MAX_ROOM_KEY];
    int bad = notification_room(path, key, sizeof(key)) < 0;
    if (!bad && m == htp_method_POST) {
        handle_notification(s, req, key);
        return;
    }
    /* Every API response carries the rate headers; nothing is counted for these. */
    uint64_t now = hcs_now_s();
    add_rate_headers(req, hcs_window_peek(NULL, s->token_rate, now),
                     hcs_window_peek(NULL, s->room_rate, now));
    hcs_reply_error(s, req, bad ? 404 : 405, bad ? "Not found" : "use POST");
}
