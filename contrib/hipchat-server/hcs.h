/*
 * hcs.h - what the files of contrib/hipchat-server share: the server object, rooms, messages,
 * rate windows, fault rules and the connection record, and the functions each file offers the
 * others.  The server is the far end of firebridge's data path (delivery -> client -> HERE) and
 * plays HipChat for the tests, the benchmarks and the quick start.  Its protocol checks are its
 * own (written from hipchat-api.md, not from firebridge's code), so that it can catch firebridge
 * getting the protocol wrong; only containers and small helpers come from the library.
 *
 * Files: main.c (flags, config file, start and stop), http.c (connections, replies, request
 * parsing), api.c (POST /v2/room/{id}/notification: auth, validation, limits, storage), limits.c
 * (fixed rate windows and per-token state), faults.c (fault rules and their deferred effects),
 * store.c (rooms and kept messages), control.c (routing and the test-only control endpoints).
 * The Connect add-on side (hipchat-api.md sections 3 to 5): oauth.c (/v2/capabilities, the
 * client-credentials token endpoint, issued tokens), addons.c (install, uninstall, revoke, and
 * "say": room_message webhooks), jwt.c (signing and encodings), outbound.c (the HTTP client
 * towards add-ons, outbound.h), pattern.c (webhook patterns, pattern.h).
 *
 * Everything runs on one libevent loop; nothing here is thread-safe.  "Borrowed" and "owned"
 * have their usual meaning; strings handed to a store function are copied unless it says it
 * takes ownership.
 */
#ifndef HCS_H
#define HCS_H

#include <evhtp.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "firebridge/common.h"
#include "firebridge/strmap.h"
#include "outbound.h"
#include "pattern.h"

#define HCS_MAX_ROOM_KEY 256
#define HCS_MAX_TOKEN 512
#define HCS_MAX_MESSAGE_CHARS 10000
#define HCS_MAX_FROM_CHARS 64
#define HCS_MAX_ATTACH_TO_CHARS 36
#define HCS_LIFTED_LIMIT 1000000000u
/* Every access token /v2/oauth/token issues starts with this; a Bearer token that does and is
 * not a live grant is refused even under --any-token (an expired grant must not pass). */
#define HCS_GRANT_PREFIX "hcs-oauth2-"
#define HCS_MAX_WEBHOOKS 20 /* per descriptor */
#define HCS_MAX_SCOPES 16   /* per descriptor */

/* ---------------------------------------------------------------------------------------------
 * Rate windows (limits.c).  A window opens at the Unix second of the first counted request and
 * closes `period_s` seconds later; Reset is that closing second.
 */
struct hcs_rate {
    uint32_t limit;
    uint32_t period_s;
};

struct hcs_window {
    uint64_t end_s; /* 0: no open window */
    uint32_t used;
};

struct hcs_window_view {
    uint32_t limit, remaining;
    uint64_t reset_s;
};

struct hcs_token_state {
    struct hcs_window window;
    int configured; /* listed in the configuration (never evicted) */
};

/* ---------------------------------------------------------------------------------------------
 * Rooms and messages (store.c).
 */
struct hcs_message {
    struct hcs_message *room_next;   /* FIFO inside its room */
    struct hcs_message *global_next; /* FIFO over all rooms, oldest first: what the cap drops */
    struct hcs_room *room;
    uint64_t seq;
    size_t size; /* bytes of the record as JSON: what --max-stored-bytes counts */
    char *json;  /* owned: the stored record as compact JSON (a jansson tree costs 6x more) */
};

struct hcs_room {
    char *id;
    char *name; /* may be NULL */
    char **tokens;
    size_t ntokens;
    struct hcs_window window;
    struct hcs_message *head, *tail;
    size_t nmessages;
};

/* ---------------------------------------------------------------------------------------------
 * Connect add-on installations (addons.c) and the tokens issued to them (oauth.c).
 */
struct hcs_webhook {
    long id; /* webhook_id, unique over the server's life */
    char *event, *url, *name, *authentication;
    char *pattern;          /* NULL: every message */
    struct hcs_pattern *re; /* compiled pattern when pattern is set */
};

enum hcs_addon_state { HCS_ADDON_INSTALLING, HCS_ADDON_INSTALLED };

struct hcs_addon {
    char oauth_id[37];     /* a UUID: the tenant key */
    char oauth_secret[41]; /* 40 hex characters */
    struct hcs_room *room; /* borrowed: rooms live as long as the server */
    long group_id;
    char *key, *from_name, *descriptor_url, *callback_url;
    char **scopes;
    size_t nscopes;
    struct hcs_webhook *webhooks;
    size_t nwebhooks;
    enum hcs_addon_state state;
    int revoked;
    uint64_t tokens_issued;
    struct hcs_addon *prev, *next; /* installation order */
};

/* One issued access token. */
struct hcs_grant {
    struct hcs_addon *addon; /* borrowed: grants go with their installation */
    uint64_t expires_ms;     /* wall clock */
    char *scope;             /* granted scopes, space-separated */
};

/* ---------------------------------------------------------------------------------------------
 * Fault rules (faults.c).
 */
struct hcs_fault {
    char *room; /* NULL: any room */
    long count; /* remaining uses; -1: until cleared */
    int status;
    int reset;
    int close;
    long stall_ms;
    long delay_ms;
    long reset_in;       /* 429: seconds until the advertised reset; -1: counters as they are */
    char *retry_after;   /* NULL: reset_in when set, else none; "" : never */
    char *reset_headers; /* "flood" (default), "rate", "both" */
    struct hcs_fault *next;
};

/* ---------------------------------------------------------------------------------------------
 * Connections (http.c).  libevhtp 1.2.18 never calls on_conn_error, so a connection is tracked
 * from the post-accept callback to its on_connection_fini hook; deferred work (stalls, delays,
 * resets) hangs off it so that a connection that goes away cancels its own timers.
 */
enum hcs_pending { HCS_PENDING_NONE, HCS_PENDING_PROCESS, HCS_PENDING_REPLY, HCS_PENDING_RESET };

struct hcs_conn {
    struct hcs *srv;
    evhtp_connection_t *ec;
    struct hcs_conn *prev, *next; /* every open connection, so that shutdown can free them */
    uint64_t body_bytes;
    int too_large;
    struct event *timer;
    enum hcs_pending pending;
    evhtp_request_t *req;
    struct hcs_fault *fault; /* owned: settings of the fault being applied */
    int status;              /* HCS_PENDING_REPLY: the status to send */
};

struct hcs_stats {
    uint64_t requests;
    uint64_t notifications;
    uint64_t accepted;
    uint64_t faults_injected;
    uint64_t abandoned; /* stalled requests whose client had gone away */
    uint64_t by_status[600];
    uint64_t conn_open, conn_max, conn_total;
    uint64_t messages_dropped;
    uint64_t tokens_issued;
    uint64_t webhooks_sent;
};

struct hcs {
    struct event_base *base;
    evhtp_t *htp;
    struct fbr_strmap rooms; /* id and name -> struct hcs_room (borrowed; owned by room_list) */
    struct hcs_room **room_list;
    size_t nrooms;
    struct fbr_strmap tokens; /* token -> struct hcs_token_state (owned) */
    char **global_tokens;
    size_t nglobal_tokens;
    int any_token, any_room, strict_keys;
    struct hcs_rate room_rate, token_rate;
    size_t max_messages, nmessages, max_tokens, max_rooms;
    size_t max_stored_bytes, stored_bytes;
    size_t max_body;
    int quiet;
    struct hcs_token_state overflow_token; /* shared by tokens seen past max_tokens */
    struct hcs_message *oldest, *newest;
    uint64_t next_seq;
    struct hcs_fault *faults;
    struct hcs_conn *conns;
    struct hcs_stats stats;
    /* The Connect add-on side. */
    char *public_url;         /* owned: scheme://host:port of this server, no trailing slash */
    long token_ttl_s;         /* expires_in of issued tokens */
    struct hcs_outbound *out; /* requests to add-ons */
    struct fbr_strmap addons; /* oauth_id -> struct hcs_addon (owned, listed below) */
    struct hcs_addon *addons_head, *addons_tail;
    size_t max_addons;
    struct fbr_strmap grants; /* access token -> struct hcs_grant (owned) */
    long next_webhook_id;
};

/* ---------------------------------------------------------------------------------------------
 * limits.c
 */
uint64_t hcs_now_s(void);
/* The window as a client would see it now (a fresh one when w is NULL or closed). */
struct hcs_window_view hcs_window_peek(const struct hcs_window *w, struct hcs_rate r, uint64_t now);
/* Counts one request; returns FBR_OK, or FBR_LIMIT (nothing counted) when the window is full. */
int hcs_window_hit(struct hcs_window *w, struct hcs_rate r, uint64_t now);
/* Parses "N/SECONDS" (1..1000000000 per 1..86400 s) or "off" (lifted).  FBR_OK or FBR_ERROR. */
int hcs_rate_parse(const char *s, struct hcs_rate *out);
/* The state of a token (borrowed), created when create is set; NULL when unknown. */
struct hcs_token_state *hcs_token_get(struct hcs *s, const char *token, int create);
/* The window a request with this (valid, not configured) token counts against: its own, or,
 * once max_tokens are tracked and none has expired, the shared overflow window. */
struct hcs_token_state *hcs_token_track(struct hcs *s, const char *token, uint64_t now);
/* Closes every token and room window (DELETE /limits). */
void hcs_limits_reset(struct hcs *s);
void hcs_tokens_free(struct hcs *s);

/* ---------------------------------------------------------------------------------------------
 * store.c
 */
/* The room reachable by id or name key (borrowed), or NULL. */
struct hcs_room *hcs_room_find(const struct hcs *s, const char *key);
/* The room with this id, created (with name, when set and free) if absent. */
struct hcs_room *hcs_room_add(struct hcs *s, const char *id, const char *name);
void hcs_room_add_token(struct hcs *s, struct hcs_room *r, const char *token);
int hcs_room_has_token(const struct hcs_room *r, const char *token);
/* Stores a record (steals rec): its compact JSON is kept and, unless --quiet, printed as one
 * line on stdout.  The record's "seq" must be s->next_seq + 1. */
void hcs_store_record(struct hcs *s, struct hcs_room *r, json_t *rec);
/* Appends the room's records later than `since` to out as a JSON array. */
void hcs_store_room_json(const struct hcs_room *r, uint64_t since, struct evbuffer *out);
/* Rooms with id, name and number of kept messages (new reference). */
json_t *hcs_rooms_json(const struct hcs *s);
void hcs_store_clear(struct hcs *s);
void hcs_rooms_free(struct hcs *s);

/* ---------------------------------------------------------------------------------------------
 * faults.c
 */
void hcs_fault_free(struct hcs_fault *f);
void hcs_faults_clear(struct hcs *s);
/* Parses a fault object or an array of them and appends them all, or none; returns FBR_OK or
 * FBR_ERROR with err filled. */
int hcs_faults_add_json(struct hcs *s, json_t *j, char *err, size_t errlen);
/* Finds the first fault for this room, consumes one use of it and returns a copy of its
 * settings (caller frees with hcs_fault_free), or NULL. */
struct hcs_fault *hcs_fault_take(struct hcs *s, const struct hcs_room *r, const char *key);
/* GET, POST, DELETE /faults. */
void hcs_faults_handle(struct hcs *s, evhtp_request_t *req, htp_method m);
/* Runs `kind` on c after ms milliseconds (c's previous timer, if any, is dropped). */
void hcs_schedule(struct hcs_conn *c, evhtp_request_t *req, enum hcs_pending kind, long ms);

/* ---------------------------------------------------------------------------------------------
 * http.c
 */
evhtp_res hcs_on_accept(evhtp_connection_t *ec, void *arg);
/* The connection record of req (borrowed), or NULL. */
struct hcs_conn *hcs_conn_of(evhtp_request_t *req);
/* Drops c's timer and fault. */
void hcs_conn_cancel(struct hcs_conn *c);
const char *hcs_reason_phrase(int status);
void hcs_add_header(evhtp_request_t *req, const char *name, const char *value);
void hcs_add_header_u64(evhtp_request_t *req, const char *name, uint64_t value);
/* Sets a JSON body (steals the reference). */
void hcs_set_json_body(evhtp_request_t *req, json_t *body);
/* Sets the API's error body {"error":{"code","message","type"}}. */
void hcs_set_error_body(evhtp_request_t *req, int status, const char *msg);
/* Closes the connection after this reply. */
void hcs_no_keepalive(evhtp_request_t *req);
/* Sends the reply now and counts its status. */
void hcs_send_now(struct hcs *s, evhtp_request_t *req, int status);
void hcs_reply_json(struct hcs *s, evhtp_request_t *req, int status, json_t *body);
void hcs_reply_error(struct hcs *s, evhtp_request_t *req, int status, const char *msg);
/* Percent-decodes src[0..len) into out (NUL-terminated); plus_space turns '+' into ' ' (query
 * strings only).  Returns FBR_OK, or FBR_ERROR on bad escapes, NUL bytes or overflow. */
int hcs_pct_decode(const char *src, size_t len, char *out, size_t outlen, int plus_space);
/* Finds parameter `name` in a raw query or form and decodes its value into out.  Returns 1 when
 * found, 0 when absent, -1 when malformed. */
int hcs_query_param(const char *query, const char *name, char *out, size_t outlen);
const char *hcs_req_path(evhtp_request_t *req);
const char *hcs_req_query(evhtp_request_t *req);
/* The request body (borrowed, not NUL-terminated; "" when empty) and its length. */
const char *hcs_req_body(evhtp_request_t *req, size_t *len);
/* Holds req (paused) while outbound work runs; *slot is set to req and becomes NULL if the
 * request is freed first (its connection closed at shutdown). */
void hcs_hold(evhtp_request_t *req, evhtp_request_t **slot);
/* Ends a hold: returns the request to answer (NULL when it is gone) and clears *slot.  Answer it
 * with hcs_reply_*() and then hcs_resume(). */
evhtp_request_t *hcs_release(evhtp_request_t **slot);
void hcs_resume(evhtp_request_t *req);
/* A reply for the control endpoints with the API's error shape plus extra fields (steals). */
void hcs_reply_error_with(struct hcs *s, evhtp_request_t *req, int status, const char *msg,
                          json_t *extra);

/* ---------------------------------------------------------------------------------------------
 * api.c
 */
/* Handles every /v2/... request. */
void hcs_api_handle(struct hcs *s, evhtp_request_t *req, const char *path, htp_method m);
/* Finishes a notification after its stall (faults.c's timer). */
void hcs_notification_resume(struct hcs_conn *c, evhtp_request_t *req);

/* Validates a room-notification body (hipchat-api.md section 1): NULL when valid, else the
 * message for a 400 written into err.  Also used for add-ons' webhook replies. */
const char *hcs_validate_body(const struct hcs *s, json_t *body, char *err, size_t errlen);
/* The stored record of a valid notification body (new reference); oauth_id and delivery may be
 * NULL. */
json_t *hcs_notification_record(struct hcs *s, const struct hcs_room *r, json_t *body,
                                const char *delivery, const char *oauth_id);

/* ---------------------------------------------------------------------------------------------
 * oauth.c
 */
/* GET /v2/capabilities: the document add-ons read tokenUrl and the API base from. */
void hcs_oauth_capabilities(struct hcs *s, evhtp_request_t *req, htp_method m);
/* POST /v2/oauth/token: client credentials. */
void hcs_oauth_token(struct hcs *s, evhtp_request_t *req, htp_method m);
/* Checks a Bearer token against the issued grants for a notification to room (NULL: unknown
 * room).  FBR_DECLINED: not an issued token (the ordinary checks apply); FBR_OK: *addon may post
 * there; FBR_NOTFOUND: valid, but the room does not exist (404); FBR_INVALID: 401 with *msg. */
int hcs_oauth_check(struct hcs *s, const char *token, const struct hcs_room *room,
                    struct hcs_addon **addon, const char **msg);
/* Forgets every token issued to a (before it is freed). */
void hcs_oauth_forget(struct hcs *s, const struct hcs_addon *a);
void hcs_oauth_free(struct hcs *s);

/* ---------------------------------------------------------------------------------------------
 * addons.c
 */
struct hcs_addon *hcs_addon_find(const struct hcs *s, const char *oauth_id);
/* POST /addons/install, GET /addons, DELETE /addons/{id}, POST /addons/{id}/revoke. */
void hcs_addons_handle(struct hcs *s, evhtp_request_t *req, const char *path, htp_method m);
/* POST /rooms/{id_or_name}/say */
void hcs_addons_say(struct hcs *s, evhtp_request_t *req, struct hcs_room *r);
/* The room's id as HipChat shows it: a JSON integer when it is all digits (new reference). */
json_t *hcs_room_id_json(const struct hcs_room *r);
void hcs_addons_free(struct hcs *s);

/* ---------------------------------------------------------------------------------------------
 * jwt.c
 */
/* A compact JWS of claims with header {"alg": alg, "typ": "JWT"}: HMAC-SHA256/384/512 for
 * HS256/384/512, no signature for "none", HMAC-SHA256 under any other name (a forged header, for
 * negative tests).  Returns a new string. */
char *hcs_jwt_sign(const char *alg, const char *secret, json_t *claims);
/* Decodes standard, padded base64 in[0..n) into out (NUL-terminated); returns the length or -1
 * when malformed or too long for outlen. */
int hcs_b64_decode(const char *in, size_t n, char *out, size_t outlen);
/* 2 * nbytes random hex digits (nbytes <= 64) and a NUL into out. */
void hcs_random_hex(char *out, size_t nbytes);
/* A random (version 4) UUID. */
void hcs_random_uuid(char out[37]);

/* ---------------------------------------------------------------------------------------------
 * control.c
 */
/* The request callback: counts, enforces --max-body, routes. */
void hcs_on_request(evhtp_request_t *req, void *arg);

#endif
