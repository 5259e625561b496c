/*
 * control.c - hipchat-server's request routing and its test-only control endpoints: health,
 * counters (/stats), kept messages (/rooms), rate windows (/limits) and fault rules (/faults).
 * The room API (/v2/room/...) is api.c's, the OAuth endpoints (/v2/capabilities,
 * /v2/oauth/token) oauth.c's, the add-on controls (/addons..., /rooms/{id}/say) addons.c's.
 */
#include <stdlib.h>
#include <string.h>

#include "hcs.h"

static json_t *stats_json(const struct hcs *s)
{
    json_t *by = json_object();
    uint64_t rejected = 0;
    for (int i = 100; i < 600; i++) {
        if (!s->stats.by_status[i])
            continue;
        char k[8];
        snprintf(k, sizeof(k), "%d", i);
        json_object_set_new(by, k, json_integer((json_int_t)s->stats.by_status[i]));
        if (i >= 300)
            rejected += s->stats.by_status[i];
    }
    json_t *by_client = json_object();
    for (const struct hcs_addon *a = s->addons_head; a; a = a->next)
        json_object_set_new(by_client, a->oauth_id, json_integer((json_int_t)a->tokens_issued));
    return json_pack(
        "{s:I,s:I,s:I,s:I,s:o,s:I,s:I,s:I,s:{s:I,s:I,s:I},s:I,s:I,s:I,s:o,s:I}", "requests",
        (json_int_t)s->stats.requests, "notifications", (json_int_t)s->stats.notifications,
        "accepted", (json_int_t)s->stats.accepted, "rejected", (json_int_t)rejected, "by_status",
        by, "resets", (json_int_t)s->stats.by_status[0], "abandoned",
        (json_int_t)s->stats.abandoned, "faults_injected", (json_int_t)s->stats.faults_injected,
        "connections", "open", (json_int_t)s->stats.conn_open, "max_open",
        (json_int_t)s->stats.conn_max, "total", (json_int_t)s->stats.conn_total, "messages_stored",
        (json_int_t)s->nmessages, "messages_dropped", (json_int_t)s->stats.messages_dropped,
        "tokens_issued", (json_int_t)s->stats.tokens_issued, "tokens_issued_by_client", by_client,
        "webhooks_sent", (json_int_t)s->stats.webhooks_sent);
}

/* Decodes the room key of /rooms/{id_or_name}/{suffix}; FBR_OK or FBR_ERROR. */
static int room_path(const char *path, const char *suffix, char *key, size_t keylen)
{
    size_t plen = strlen(path), slen = strlen(suffix);
    if (plen <= 7 + slen + 1 || strncmp(path, "/rooms/", 7) != 0 || path[plen - slen - 1] != '/' ||
        strcmp(path + plen - slen, suffix) != 0)
        return FBR_ERROR;
    const char *seg = path + 7;
    size_t seglen = plen - 7 - slen - 1;
    if (memchr(seg, '/', seglen))
        return FBR_ERROR;
    return hcs_pct_decode(seg, seglen, key, keylen, 0);
}

static void handle_control(struct hcs *s, evhtp_request_t *req, const char *path, htp_method m)
{
    char key[HCS_MAX_ROOM_KEY];
    if (strcmp(path, "/healthz") == 0 && m == htp_method_HEAD) {
        hcs_send_now(s, req, 200);
    } else if (strcmp(path, "/healthz") == 0 && m == htp_method_GET) {
        hcs_reply_json(s, req, 200, json_pack("{s:s}", "status", "ok"));
    } else if (strcmp(path, "/stats") == 0 && m == htp_method_GET) {
        hcs_reply_json(s, req, 200, stats_json(s));
    } else if (strcmp(path, "/stats") == 0 && m == htp_method_DELETE) {
        uint64_t open = s->stats.conn_open;
        memset(&s->stats, 0, sizeof(s->stats));
        s->stats.conn_open = s->stats.conn_max = open;
        for (struct hcs_addon *a = s->addons_head; a; a = a->next)
            a->tokens_issued = 0;
        hcs_reply_json(s, req, 200, stats_json(s));
    } else if (strcmp(path, "/faults") == 0) {
        hcs_faults_handle(s, req, m);
    } else if (strcmp(path, "/rooms") == 0 && m == htp_method_DELETE) {
        hcs_store_clear(s);
        hcs_reply_json(s, req, 200,
                       json_pack("{s:I}", "messages_stored", (json_int_t)s->nmessages));
    } else if (strcmp(path, "/rooms") == 0 && m == htp_method_GET) {
        hcs_reply_json(s, req, 200, hcs_rooms_json(s));
    } else if (strcmp(path, "/limits") == 0 && m == htp_method_DELETE) {
        hcs_limits_reset(s);
        hcs_reply_json(s, req, 200, json_pack("{s:s}", "status", "ok"));
    } else if (strcmp(path, "/addons") == 0 || strncmp(path, "/addons/", 8) == 0) {
        hcs_addons_handle(s, req, path, m);
    } else if (room_path(path, "say", key, sizeof(key)) == FBR_OK) {
        struct hcs_room *r = hcs_room_find(s, key);
        if (!r)
            hcs_reply_error(s, req, 404, "Room not found");
        else if (m != htp_method_POST)
            hcs_reply_error(s, req, 405, "use POST");
        else
            hcs_addons_say(s, req, r);
    } else if (room_path(path, "messages", key, sizeof(key)) == FBR_OK) {
        struct hcs_room *r = hcs_room_find(s, key);
        if (!r) {
            hcs_reply_error(s, req, 404, "Room not found");
        } else if (m == htp_method_GET) {
            char since_s[24];
            uint64_t since = 0;
            if (hcs_query_param(hcs_req_query(req), "since", since_s, sizeof(since_s)) == 1)
                since = strtoull(since_s, NULL, 10);
            hcs_store_room_json(r, since, req->buffer_out);
            hcs_add_header(req, "Content-Type", "application/json");
            hcs_send_now(s, req, 200);
        } else {
            hcs_reply_error(s, req, 405, "use GET");
        }
    } else {
        hcs_reply_error(s, req, 404, "no such endpoint");
    }
}

void hcs_on_request(evhtp_request_t *req, void *arg)
{
    struct hcs *s = arg;
    struct hcs_conn *c = hcs_conn_of(req);
    s->stats.requests++;
    if (c && c->too_large) {
        char msg[96];
        snprintf(msg, sizeof(msg), "request body larger than %zu bytes", s->max_body);
        hcs_no_keepalive(req);
        hcs_reply_error(s, req, 413, msg);
        return;
    }
    const char *path = hcs_req_path(req);
    htp_method m = evhtp_request_get_method(req);
    if (strncmp(path, "/v2/room/", 9) == 0)
        hcs_api_handle(s, req, path, m);
    else if (strcmp(path, "/v2/capabilities") == 0)
        hcs_oauth_capabilities(s, req, m);
    else if (strcmp(path, "/v2/oauth/token") == 0)
        hcs_oauth_token(s, req, m);
    else
        handle_control(s, req, path, m);
}
