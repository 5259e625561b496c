/*
 * addons.c - hipchat-server as the host of Connect add-ons (hipchat-api.md sections 3 to 5),
 * driven by test-only control endpoints: install an add-on into a room from its descriptor URL
 * (fetch and check the descriptor, create credentials, store the installation, then POST the
 * install callback, so that the add-on can ask for a token from inside it, as with HipChat),
 * list, uninstall (DELETE {callbackUrl}/{oauthId}), revoke, and "say" a message in a room: store
 * it and POST a JWT-signed room_message webhook to every installation there whose webhook
 * pattern matches, posting each add-on's reply into the room when it is a notification.  All
 * outbound requests run on the loop (outbound.h) while the server keeps answering.
 */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hcs.h"

#define MAX_SAY_DELIVERIES 64
#define MAX_REPLY_ECHO 4096 /* bytes of an add-on's reply body shown back to the test */

struct hcs_addon *hcs_addon_find(const struct hcs *s, const char *oauth_id)
{
    return fbr_strmap_get(&s->addons, oauth_id, strlen(oauth_id));
}

json_t *hcs_room_id_json(const struct hcs_room *r)
{
    size_t n = strlen(r->id);
    int digits = n > 0 && n < 16;
    for (size_t i = 0; digits && i < n; i++)
        digits = isdigit((unsigned char)r->id[i]);
    return digits ? json_integer(strtoll(r->id, NULL, 10)) : json_string(r->id);
}

static void addon_free(struct hcs_addon *a)
{
    for (size_t i = 0; i < a->nscopes; i++)
        free(a->scopes[i]);
    free(a->scopes);
    for (size_t i = 0; i < a->nwebhooks; i++) {
        struct hcs_webhook *w = &a->webhooks[i];
        hcs_pattern_free(w->re);
        free(w->pattern);
        free(w->event);
        free(w->url);
        free(w->name);
        free(w->authentication);
    }
    free(a->webhooks);
    free(a->key);
    free(a->from_name);
    free(a->descriptor_url);
    free(a->callback_url);
    free(a);
}

/* Forgets an installation: its tokens stop working at once. */
static void addon_remove(struct hcs *s, struct hcs_addon *a)
{
    hcs_oauth_forget(s, a);
    fbr_strmap_del(&s->addons, a->oauth_id, strlen(a->oauth_id));
    if (a->prev)
        a->prev->next = a->next;
    else
        s->addons_head = a->next;
    if (a->next)
        a->next->prev = a->prev;
    else
        s->addons_tail = a->prev;
    addon_free(a);
}

void hcs_addons_free(struct hcs *s)
{
    while (s->addons_head)
        addon_remove(s, s->addons_head);
    fbr_strmap_clear(&s->addons);
}

static json_t *addon_json(const struct hcs_addon *a)
{
    json_t *hooks = json_array(), *scopes = json_array();
    for (size_t i = 0; i < a->nwebhooks; i++) {
        const struct hcs_webhook *w = &a->webhooks[i];
        json_array_append_new(hooks, json_pack("{s:I,s:s,s:s,s:o,s:o,s:s}", "webhook_id",
                                               (json_int_t)w->id, "event", w->event, "url", w->url,
                                               "pattern",
                                               w->pattern ? json_string(w->pattern) : json_null(),
                                               "name", w->name ? json_string(w->name) : json_null(),
                                               "authentication", w->authentication));
    }
    for (size_t i = 0; i < a->nscopes; i++)
        json_array_append_new(scopes, json_string(a->scopes[i]));
    return json_pack("{s:s,s:s,s:o,s:I,s:s,s:s,s:s,s:o,s:o,s:b,s:s,s:I}", "oauth_id", a->oauth_id,
                     "room", a->room->id, "room_id", hcs_room_id_json(a->room), "group_id",
                     (json_int_t)a->group_id, "key", a->key, "descriptor_url", a->descriptor_url,
                     "callback_url", a->callback_url, "scopes", scopes, "webhooks", hooks,
                     "revoked", a->revoked, "state",
                     a->state == HCS_ADDON_INSTALLED ? "installed" : "installing", "tokens_issued",
                     (json_int_t)a->tokens_issued);
}

/* A response body as a JSON string for the test to read (bounded, NULs and invalid UTF-8
 * replaced). */
static json_t *body_json(const struct hcs_out_resp *r)
{
    size_t n = r->body_len < MAX_REPLY_ECHO ? r->body_len : MAX_REPLY_ECHO;
    json_t *j = json_stringn(r->body, n);
    if (!j) {
        char *copy = fbr_xstrndup(r->body, n);
        for (size_t i = 0; i < n; i++) {
            if ((unsigned char)copy[i] >= 0x80 || copy[i] == '\0')
                copy[i] = '?';
        }
        j = json_stringn(copy, n);
        free(copy);
    }
    return j;
}

/* ---------------------------------------------------------------------------------------------
 * The descriptor (hipchat-api.md sections 3 and 7), checked as far as installing needs.
 */
static const char *str_at(json_t *o, const char *key)
{
    const char *v = json_string_value(json_object_get(o, key));
    return v && *v ? v : NULL;
}

static int is_http_url(const char *u)
{
    return u && (strncmp(u, "http://", 7) == 0 || strncmp(u, "https://", 8) == 0);
}

/* Builds an installation (not stored) from a descriptor; NULL with err filled when the
 * descriptor cannot be installed into a room. */
static struct hcs_addon *addon_from_descriptor(struct hcs *s, json_t *d, char *err, size_t errlen)
{
    json_t *caps = json_object_get(d, "capabilities");
    json_t *inst = json_object_get(caps, "installable");
    json_t *consumer = json_object_get(caps, "hipchatApiConsumer");
    json_t *scopes = json_object_get(consumer, "scopes");
    json_t *hooks = json_object_get(caps, "webhook");
    const char *key = str_at(d, "key");
    const char *callback = str_at(inst, "callbackUrl");
    if (!json_is_object(d) || !key) {
        snprintf(err, errlen, "descriptor: 'key' is required");
        return NULL;
    }
    if (!str_at(json_object_get(d, "links"), "self")) {
        snprintf(err, errlen, "descriptor: 'links.self' is required");
        return NULL;
    }
    if (!is_http_url(callback)) {
        snprintf(err, errlen,
                 "descriptor: 'capabilities.installable.callbackUrl' must be an "
                 "http(s) URL");
        return NULL;
    }
    if (json_is_false(json_object_get(inst, "allowRoom"))) {
        snprintf(err, errlen, "descriptor: allowRoom is false: it cannot be installed in a room");
        return NULL;
    }
    if (!json_is_array(scopes) || json_array_size(scopes) == 0 ||
        json_array_size(scopes) > HCS_MAX_SCOPES) {
        snprintf(err, errlen,
                 "descriptor: 'capabilities.hipchatApiConsumer.scopes' must be an "
                 "array of 1 to %d scopes",
                 HCS_MAX_SCOPES);
        return NULL;
    }
    if (hooks && (!json_is_array(hooks) || json_array_size(hooks) > HCS_MAX_WEBHOOKS)) {
        snprintf(err, errlen, "descriptor: 'capabilities.webhook' must be an array of at most %d",
                 HCS_MAX_WEBHOOKS);
        return NULL;
    }
    struct hcs_addon *a = fbr_xcalloc(1, sizeof(*a));
    a->key = fbr_xstrdup(key);
    a->callback_url = fbr_xstrdup(callback);
    const char *from = str_at(consumer, "fromName");
    a->from_name = fbr_xstrdup(from ? from : str_at(d, "name") ? str_at(d, "name") : key);
    a->scopes = fbr_xcalloc(json_array_size(scopes), sizeof(*a->scopes));
    size_t i;
    json_t *v;
    json_array_foreach(scopes, i, v)
    {
        if (!json_string_value(v)) {
            snprintf(err, errlen, "descriptor: scopes[%zu] must be a string", i);
            goto fail;
        }
        a->scopes[a->nscopes++] = fbr_xstrdup(json_string_value(v));
    }
    a->webhooks = fbr_xcalloc(json_array_size(hooks) + 1, sizeof(*a->webhooks));
    json_array_foreach(hooks, i, v)
    {
        const char *url = str_at(v, "url"), *event = str_at(v, "event");
        const char *pattern = str_at(v, "pattern"), *name = str_at(v, "name");
        const char *authn = str_at(v, "authentication");
        if (!is_http_url(url) || !event) {
            snprintf(err, errlen, "descriptor: webhook[%zu] needs an http(s) 'url' and an 'event'",
                     i);
            goto fail;
        }
        struct hcs_webhook *w = &a->webhooks[a->nwebhooks];
        if (pattern) {
            char why[96];
            if (!(w->re = hcs_pattern_new(pattern, why, sizeof(why)))) {
                snprintf(err, errlen, "descriptor: webhook[%zu].pattern: %s", i, why);
                goto fail;
            }
            w->pattern = fbr_xstrdup(pattern);
        }
        w->id = ++s->next_webhook_id;
        w->url = fbr_xstrdup(url);
        w->event = fbr_xstrdup(event);
        w->name = name ? fbr_xstrdup(name) : NULL;
        w->authentication = fbr_xstrdup(authn ? authn : "none");
        a->nwebhooks++;
    }
    return a;
fail:
    addon_free(a);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * POST /addons/install
 */
struct install_op {
    struct hcs *s;
    evhtp_request_t *req; /* held; NULL when gone */
    struct hcs_room *room;
    long group_id;
    char *descriptor_url;
    char oauth_id[37]; /* once stored */
};

static void install_op_free(struct install_op *op)
{
    evhtp_request_t *req = hcs_release(&op->req);
    if (req)
        hcs_resume(req); /* only at shutdown: nothing is sent */
    free(op->descriptor_url);
    free(op);
}

/* Answers the held request (if still there) and frees op. */
static void install_reply(struct install_op *op, int status, json_t *body)
{
    evhtp_request_t *req = hcs_release(&op->req);
    if (req) {
        hcs_reply_json(op->s, req, status, body);
        hcs_resume(req);
    } else {
        json_decref(body);
    }
    install_op_free(op);
}

static json_t *error_body(int status, const char *msg)
{
    return json_pack("{s:{s:i,s:s,s:s}}", "error", "code", status, "message", msg, "type",
                     hcs_reason_phrase(status));
}

static void on_install_callback(const struct hcs_out_resp *r, void *arg)
{
    struct install_op *op = arg;
    struct hcs *s = op->s;
    if (r->cancelled) {
        install_op_free(op);
        return;
    }
    struct hcs_addon *a = hcs_addon_find(s, op->oauth_id);
    int ok = r->status >= 200 && r->status < 300;
    if (a && ok) {
        a->state = HCS_ADDON_INSTALLED;
        fprintf(stderr, "hipchat-server: installed %s (%s) in room %s\n", a->oauth_id, a->key,
                a->room->id);
        install_reply(op, 200,
                      json_pack("{s:s,s:s,s:o,s:s,s:i}", "oauth_id", a->oauth_id, "oauth_secret",
                                a->oauth_secret, "room_id", hcs_room_id_json(a->room), "room",
                                a->room->id, "callback_status", r->status));
        return;
    }
    char msg[300];
    if (!a)
        snprintf(msg, sizeof(msg), "the installation was removed while its callback ran");
    else if (r->status)
        snprintf(msg, sizeof(msg), "the add-on's install callback answered %d", r->status);
    else
        snprintf(msg, sizeof(msg), "the add-on's install callback failed: %s", r->error);
    fprintf(stderr, "hipchat-server: install of %s failed: %s\n", op->oauth_id, msg);
    if (a)
        addon_remove(s, a);
    json_t *body = error_body(502, msg);
    json_object_set_new(body, "callback_status", json_integer(r->status));
    json_object_set_new(body, "callback_body", body_json(r));
    install_reply(op, 502, body);
}

static void on_descriptor(const struct hcs_out_resp *r, void *arg)
{
    struct install_op *op = arg;
    struct hcs *s = op->s;
    if (r->cancelled) {
        install_op_free(op);
        return;
    }
    char err[300];
    json_t *d = NULL;
    struct hcs_addon *a = NULL;
    if (r->status < 200 || r->status >= 300) {
        if (r->status)
            snprintf(err, sizeof(err), "fetching the descriptor answered %d", r->status);
        else
            snprintf(err, sizeof(err), "fetching the descriptor failed: %s", r->error);
    } else {
        json_error_t jerr;
        d = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &jerr);
        if (!d)
            snprintf(err, sizeof(err), "descriptor: not JSON: %s", jerr.text);
        else
            a = addon_from_descriptor(s, d, err, sizeof(err));
    }
    json_decref(d);
    if (a && s->addons.count >= s->max_addons) {
        addon_free(a);
        a = NULL;
        snprintf(err, sizeof(err), "too many installations (--max-addons %zu)", s->max_addons);
    }
    if (!a) {
        json_t *body = error_body(502, err);
        json_object_set_new(body, "descriptor_status", json_integer(r->status));
        install_reply(op, 502, body);
        return;
    }
    /* Stored before the callback: the add-on may ask for a token from inside it. */
    hcs_random_uuid(a->oauth_id);
    hcs_random_hex(a->oauth_secret, 20);
    a->room = op->room;
    a->group_id = op->group_id;
    a->descriptor_url = fbr_xstrdup(op->descriptor_url);
    a->state = HCS_ADDON_INSTALLING;
    fbr_strmap_put(&s->addons, a->oauth_id, strlen(a->oauth_id), a);
    a->prev = s->addons_tail;
    if (s->addons_tail)
        s->addons_tail->next = a;
    else
        s->addons_head = a;
    s->addons_tail = a;
    memcpy(op->oauth_id, a->oauth_id, sizeof(op->oauth_id));

    char caps[600];
    snprintf(caps, sizeof(caps), "%s/v2/capabilities", s->public_url);
    json_t *cb = json_pack("{s:s,s:s,s:s,s:I,s:o}", "capabilitiesUrl", caps, "oauthId", a->oauth_id,
                           "oauthSecret", a->oauth_secret, "groupId", (json_int_t)a->group_id,
                           "roomId", hcs_room_id_json(a->room));
    char *text = json_dumps(cb, JSON_COMPACT);
    json_decref(cb);
    static const char *const hdrs[] = {"Content-Type", "application/json", NULL};
    int rc = hcs_out_request(s->out, "POST", a->callback_url, hdrs, text, strlen(text),
                             on_install_callback, op, err, sizeof(err));
    free(text);
    if (rc != 0) {
        addon_remove(s, a);
        install_reply(op, 502, error_body(502, err));
    }
}

static void handle_install(struct hcs *s, evhtp_request_t *req)
{
    size_t blen;
    const char *btext = hcs_req_body(req, &blen);
    json_error_t jerr;
    json_t *j = json_loadb(btext, blen, JSON_REJECT_DUPLICATES, &jerr);
    json_t *room = json_object_get(j, "room"), *group = json_object_get(j, "group_id");
    const char *url = str_at(j, "descriptor_url");
    char key[HCS_MAX_ROOM_KEY], err[300];
    const char *bad = NULL, *k;
    json_t *v;
    json_object_foreach(j, k, v)
    {
        if (strcmp(k, "room") && strcmp(k, "descriptor_url") && strcmp(k, "group_id"))
            bad = "unknown key (room, descriptor_url, group_id)";
    }
    if (json_is_integer(room))
        snprintf(key, sizeof(key), "%" JSON_INTEGER_FORMAT, json_integer_value(room));
    else if (json_is_string(room) && json_string_length(room) < sizeof(key))
        snprintf(key, sizeof(key), "%s", json_string_value(room));
    else
        bad = "'room' (an id or a name) is required";
    if (!json_is_object(j))
        bad = "the body must be a JSON object";
    else if (!is_http_url(url))
        bad = "'descriptor_url' must be an http(s) URL";
    else if (group && (!json_is_integer(group) || json_integer_value(group) < 1))
        bad = "'group_id' must be a positive integer";
    if (bad) {
        json_decref(j);
        hcs_reply_error(s, req, 400, bad);
        return;
    }
    struct hcs_room *r = hcs_room_find(s, key);
    if (!r && s->any_room && s->nrooms < s->max_rooms)
        r = hcs_room_add(s, key, NULL);
    if (!r) {
        json_decref(j);
        hcs_reply_error(s, req, 404, "Room not found");
        return;
    }
    struct install_op *op = fbr_xcalloc(1, sizeof(*op));
    op->s = s;
    op->room = r;
    op->group_id = group ? (long)json_integer_value(group) : 1;
    op->descriptor_url = fbr_xstrdup(url);
    json_decref(j);
    static const char *const hdrs[] = {"Accept", "application/json", NULL};
    if (hcs_out_request(s->out, "GET", op->descriptor_url, hdrs, NULL, 0, on_descriptor, op, err,
                        sizeof(err)) != 0) {
        install_op_free(op);
        hcs_reply_error(s, req, 400, err);
        return;
    }
    hcs_hold(req, &op->req);
}

/* ---------------------------------------------------------------------------------------------
 * DELETE /addons/{oauth_id}
 */
struct uninstall_op {
    struct hcs *s;
    evhtp_request_t *req;
    char oauth_id[37];
};

static void on_uninstall(const struct hcs_out_resp *r, void *arg)
{
    struct uninstall_op *op = arg;
    evhtp_request_t *req = hcs_release(&op->req);
    if (req && !r->cancelled) {
        json_t *body = json_pack("{s:s,s:i,s:o}", "oauth_id", op->oauth_id, "callback_status",
                                 r->status, "callback_body", body_json(r));
        if (!r->status)
            json_object_set_new(body, "callback_error", json_string(r->error));
        hcs_reply_json(op->s, req, 200, body);
    }
    if (req)
        hcs_resume(req);
    free(op);
}

static void handle_uninstall(struct hcs *s, evhtp_request_t *req, struct hcs_addon *a)
{
    char url[2048], err[300];
    struct uninstall_op *op = fbr_xcalloc(1, sizeof(*op));
    op->s = s;
    memcpy(op->oauth_id, a->oauth_id, sizeof(op->oauth_id));
    size_t n = strlen(a->callback_url);
    snprintf(url, sizeof(url), "%s%s%s", a->callback_url,
             n && a->callback_url[n - 1] == '/' ? "" : "/", a->oauth_id);
    fprintf(stderr, "hipchat-server: uninstalling %s (%s) from room %s\n", a->oauth_id, a->key,
            a->room->id);
    /* Forgotten first: HipChat may refuse the credentials before the add-on hears of it. */
    addon_remove(s, a);
    if (hcs_out_request(s->out, "DELETE", url, NULL, NULL, 0, on_uninstall, op, err, sizeof(err)) !=
        0) {
        hcs_reply_json(s, req, 200,
                       json_pack("{s:s,s:i,s:s}", "oauth_id", op->oauth_id, "callback_status", 0,
                                 "callback_error", err));
        free(op);
        return;
    }
    hcs_hold(req, &op->req);
}

void hcs_addons_handle(struct hcs *s, evhtp_request_t *req, const char *path, htp_method m)
{
    if (strcmp(path, "/addons") == 0) {
        if (m != htp_method_GET) {
            hcs_reply_error(s, req, 405, "use GET");
            return;
        }
        json_t *list = json_array();
        for (const struct hcs_addon *a = s->addons_head; a; a = a->next)
            json_array_append_new(list, addon_json(a));
        hcs_reply_json(s, req, 200, list);
        return;
    }
    if (strcmp(path, "/addons/install") == 0) {
        if (m != htp_method_POST)
            hcs_reply_error(s, req, 405, "use POST");
        else
            handle_install(s, req);
        return;
    }
    /* /addons/{oauth_id} and /addons/{oauth_id}/revoke */
    const char *id = path + strlen("/addons/");
    const char *slash = strchr(id, '/');
    size_t idlen = slash ? (size_t)(slash - id) : strlen(id);
    char oauth_id[64];
    if (idlen == 0 || idlen >= sizeof(oauth_id) || (slash && strcmp(slash, "/revoke") != 0)) {
        hcs_reply_error(s, req, 404, "no such endpoint");
        return;
    }
    memcpy(oauth_id, id, idlen);
    oauth_id[idlen] = '\0';
    struct hcs_addon *a = hcs_addon_find(s, oauth_id);
    if (!a) {
        hcs_reply_error(s, req, 404, "no such installation");
    } else if (slash && m == htp_method_POST) {
        a->revoked = 1;
        fprintf(stderr, "hipchat-server: revoked %s (%s)\n", a->oauth_id, a->key);
        hcs_reply_json(s, req, 200, json_pack("{s:s,s:b}", "oauth_id", a->oauth_id, "revoked", 1));
    } else if (!slash && m == htp_method_GET) {
        hcs_reply_json(s, req, 200, addon_json(a));
    } else if (!slash && m == htp_method_DELETE) {
        handle_uninstall(s, req, a);
    } else {
        hcs_reply_error(s, req, 405, slash ? "use POST" : "use GET or DELETE");
    }
}

/* ---------------------------------------------------------------------------------------------
 * POST /rooms/{id_or_name}/say
 */
enum jwt_in { JWT_HEADER, JWT_HEADER_TOKEN, JWT_QUERY };

struct say_slot {
    char oauth_id[37];
    long webhook_id;
    char *url;
    int status;
    json_t *result; /* the delivery's JSON entry once answered */
};

struct say_op {
    struct hcs *s;
    evhtp_request_t *req;
    struct hcs_room *room;
    char message_id[37];
    size_t pending, n;
    struct say_slot slots[MAX_SAY_DELIVERIES];
};

struct say_call {
    struct say_op *op;
    size_t slot;
};

static void say_finish(struct say_op *op)
{
    evhtp_request_t *req = hcs_release(&op->req);
    json_t *list = json_array();
    for (size_t i = 0; i < op->n; i++) {
        json_array_append_new(list, op->slots[i].result ? op->slots[i].result : json_null());
        free(op->slots[i].url);
    }
    if (req) {
        hcs_reply_json(op->s, req, 200,
                       json_pack("{s:s,s:o}", "message_id", op->message_id, "deliveries", list));
        hcs_resume(req);
    } else {
        json_decref(list);
    }
    free(op);
}

/* An add-on's reply that is a room notification goes into the room, as HipChat posts it. */
static json_t *post_reply(struct say_op *op, const struct say_slot *slot,
                          const struct hcs_out_resp *r)
{
    json_t *body = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(body) || !json_object_get(body, "message")) {
        json_decref(body);
        return json_false();
    }
    char err[256];
    const char *bad = hcs_validate_body(op->s, body, err, sizeof(err));
    if (bad) {
        json_decref(body);
        return json_string(bad);
    }
    const struct hcs_addon *a = hcs_addon_find(op->s, slot->oauth_id);
    if (!json_object_get(body, "from") && a)
        json_object_set_new(body, "from", json_string(a->from_name));
    hcs_store_record(op->s, op->room,
                     hcs_notification_record(op->s, op->room, body, NULL, slot->oauth_id));
    json_decref(body);
    return json_true();
}

static void on_webhook_reply(const struct hcs_out_resp *r, void *arg)
{
    struct say_call *call = arg;
    struct say_op *op = call->op;
    struct say_slot *slot = &op->slots[call->slot];
    free(call);
    if (!r->cancelled) {
        json_t *res = json_pack("{s:s,s:I,s:s,s:i,s:o}", "oauth_id", slot->oauth_id, "webhook_id",
                                (json_int_t)slot->webhook_id, "url", slot->url, "status", r->status,
                                "body", body_json(r));
        if (!r->status) {
            json_object_set_new(res, "error", json_string(r->error));
        } else if (r->status >= 200 && r->status < 300) {
            json_t *posted = post_reply(op, slot, r);
            if (json_is_string(posted)) {
                json_object_set_new(res, "posted", json_false());
                json_object_set_new(res, "post_error", posted);
            } else {
                json_object_set_new(res, "posted", posted);
            }
        }
        slot->result = res;
    }
    if (--op->pending == 0)
        say_finish(op);
}

struct say_args {
    const char *from, *mention, *message, *secret, *alg;
    json_int_t user_id;
    enum jwt_in where;
};

static const char *parse_say(json_t *j, struct say_args *a)
{
    static const char *const known[] = {"from",   "mention_name", "user_id", "message",
                                        "jwt_in", "secret",       "alg",     NULL};
    if (!json_is_object(j))
        return "the body must be a JSON object";
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v)
    {
        size_t i = 0;
        while (known[i] && strcmp(known[i], k) != 0)
            i++;
        if (!known[i])
            return "unknown key (from, mention_name, user_id, message, jwt_in, secret, alg)";
    }
    json_t *msg = json_object_get(j, "message");
    size_t chars = fbr_utf8_chars(json_string_value(msg), json_string_length(msg));
    if (!json_is_string(msg) || chars < 1 || chars > HCS_MAX_MESSAGE_CHARS)
        return "'message' must be a string of 1 to 10000 characters";
    a->message = json_string_value(msg);
    a->from = json_string_value(json_object_get(j, "from"));
    a->mention = json_string_value(json_object_get(j, "mention_name"));
    a->secret = json_string_value(json_object_get(j, "secret"));
    a->alg = json_string_value(json_object_get(j, "alg"));
    const char *where = json_string_value(json_object_get(j, "jwt_in"));
    json_t *uid = json_object_get(j, "user_id");
    if ((json_object_get(j, "from") && (!a->from || strlen(a->from) > 100)) ||
        (json_object_get(j, "mention_name") && (!a->mention || strlen(a->mention) > 100)))
        return "'from' and 'mention_name' must be strings of at most 100 bytes";
    if ((json_object_get(j, "secret") && !a->secret) ||
        (json_object_get(j, "alg") && (!a->alg || !*a->alg || strlen(a->alg) > 16)))
        return "'secret' and 'alg' must be strings ('alg' 1 to 16 bytes)";
    if (uid && (!json_is_integer(uid) || json_integer_value(uid) < 0))
        return "'user_id' must be a non-negative integer";
    a->user_id = uid ? json_integer_value(uid) : 1;
    if (!a->from)
        a->from = "Test User";
    if (!a->mention)
        a->mention = "TestUser";
    if (!a->alg)
        a->alg = "HS256";
    if (!where || strcmp(where, "header") == 0)
        a->where = JWT_HEADER;
    else if (strcmp(where, "header_token") == 0)
        a->where = JWT_HEADER_TOKEN;
    else if (strcmp(where, "query") == 0)
        a->where = JWT_QUERY;
    else
        return "'jwt_in' must be \"header\", \"header_token\" or \"query\"";
    if (json_object_get(j, "jwt_in") && !where)
        return "'jwt_in' must be a string";
    return NULL;
}

static void iso_date(uint64_t ms, char *out, size_t outlen)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char base[32];
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, outlen, "%s.%03u+00:00", base, (unsigned)(ms % 1000));
}

/* Sends the room_message webhook w of a; returns 0 or -1 with err filled. */
static int send_webhook(struct say_op *op, const struct hcs_addon *a, const struct hcs_webhook *w,
                        const struct say_args *sa, json_t *item, char *err, size_t errlen)
{
    struct hcs *s = op->s;
    uint64_t now = fbr_wall_ms();
    char jti[37];
    hcs_random_uuid(jti);
    char sub[32];
    snprintf(sub, sizeof(sub), "%" JSON_INTEGER_FORMAT, sa->user_id);
    json_t *claims =
        json_pack("{s:s,s:s,s:I,s:I,s:s,s:{s:o,s:s}}", "iss", a->oauth_id, "sub", sub, "iat",
                  (json_int_t)(now / 1000), "exp", (json_int_t)(now / 1000 + 300), "jti", jti,
                  "context", "room_id", hcs_room_id_json(a->room), "user_tz", "UTC");
    char *jwt = hcs_jwt_sign(sa->alg, sa->secret ? sa->secret : a->oauth_secret, claims);
    json_decref(claims);
    json_t *body = json_pack("{s:s,s:O,s:I,s:s}", "event", "room_message", "item", item,
                             "webhook_id", (json_int_t)w->id, "oauth_client_id", a->oauth_id);
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);

    size_t ulen = strlen(w->url) + strlen(jwt) + 32;
    char *url = fbr_xmalloc(ulen);
    char *auth = fbr_xmalloc(strlen(jwt) + 16);
    const char *hdrs[6] = {"Content-Type", "application/json", NULL, NULL, NULL, NULL};
    if (sa->where == JWT_QUERY) {
        snprintf(url, ulen, "%s%ssigned_request=%s", w->url, strchr(w->url, '?') ? "&" : "?", jwt);
    } else {
        snprintf(url, ulen, "%s", w->url);
        snprintf(auth, strlen(jwt) + 16, "JWT %s%s", sa->where == JWT_HEADER_TOKEN ? "token=" : "",
                 jwt);
        hdrs[2] = "Authorization";
        hdrs[3] = auth;
    }
    struct say_call *call = fbr_xcalloc(1, sizeof(*call));
    call->op = op;
    call->slot = op->n;
    int rc = hcs_out_request(s->out, "POST", url, hdrs, text, strlen(text), on_webhook_reply, call,
                             err, errlen);
    free(url);
    free(auth);
    free(jwt);
    free(text);
    if (rc != 0) {
        free(call);
        return -1;
    }
    struct say_slot *slot = &op->slots[op->n++];
    memcpy(slot->oauth_id, a->oauth_id, sizeof(slot->oauth_id));
    slot->webhook_id = w->id;
    slot->url = fbr_xstrdup(w->url);
    op->pending++;
    s->stats.webhooks_sent++;
    return 0;
}

void hcs_addons_say(struct hcs *s, evhtp_request_t *req, struct hcs_room *r)
{
    size_t blen;
    const char *btext = hcs_req_body(req, &blen);
    json_error_t jerr;
    json_t *j = json_loadb(btext, blen, JSON_REJECT_DUPLICATES, &jerr);
    struct say_args sa;
    const char *bad = j ? parse_say(j, &sa) : "the body is not valid JSON";
    if (bad) {
        json_decref(j);
        hcs_reply_error(s, req, 400, bad);
        return;
    }
    struct say_op *op = fbr_xcalloc(1, sizeof(*op));
    op->s = s;
    op->room = r;
    hcs_random_uuid(op->message_id);
    uint64_t now = fbr_wall_ms();
    char date[48], link[700];
    iso_date(now, date, sizeof(date));

    json_t *rec = json_pack("{s:s,s:I,s:s,s:s,s:s,s:s,s:s,s:I,s:s,s:I}", "room", r->id, "seq",
                            (json_int_t)(s->next_seq + 1), "kind", "user", "id", op->message_id,
                            "message", sa.message, "from", sa.from, "mention_name", sa.mention,
                            "user_id", sa.user_id, "date", date, "received_ms", (json_int_t)now);
    hcs_store_record(s, r, rec);

    snprintf(link, sizeof(link), "%s/v2/user/%" JSON_INTEGER_FORMAT, s->public_url, sa.user_id);
    json_t *from = json_pack("{s:I,s:s,s:s,s:{s:s}}", "id", sa.user_id, "name", sa.from,
                             "mention_name", sa.mention, "links", "self", link);
    snprintf(link, sizeof(link), "%s/v2/room/%s", s->public_url, r->id);
    json_t *item = json_pack("{s:{s:s,s:s,s:s,s:s,s:o,s:[]},s:{s:o,s:s,s:{s:s}}}", "message", "id",
                             op->message_id, "date", date, "message", sa.message, "type", "message",
                             "from", from, "mentions", "room", "id", hcs_room_id_json(r), "name",
                             r->name ? r->name : r->id, "links", "self", link);

    for (const struct hcs_addon *a = s->addons_head; a; a = a->next) {
        if (a->room != r || a->state != HCS_ADDON_INSTALLED || a->revoked)
            continue;
        for (size_t i = 0; i < a->nwebhooks && op->n < MAX_SAY_DELIVERIES; i++) {
            const struct hcs_webhook *w = &a->webhooks[i];
            char err[300];
            if (strcmp(w->event, "room_message") != 0 ||
                (w->re && !hcs_pattern_match(w->re, sa.message)))
                continue;
            if (send_webhook(op, a, w, &sa, item, err, sizeof(err)) != 0)
                fprintf(stderr, "hipchat-server: webhook %ld of %s not sent: %s\n", w->id,
                        a->oauth_id, err);
        }
    }
    json_decref(item);
    json_decref(j);
    if (op->pending == 0) {
        hcs_reply_json(s, req, 200,
                       json_pack("{s:s,s:[]}", "message_id", op->message_id, "deliveries"));
        free(op);
        return;
    }
    hcs_hold(req, &op->req);
}
