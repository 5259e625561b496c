/*
 * addon.h - Single Room mode: the HipChat Connect add-on, both directions (hipchat-api.md §3-§5,
 * oncall-platform.md §4-§5).  For each routing key firebridge serves a capabilities descriptor
 * at GET /hipchat/{routing_key}/capabilities (the "Add-on Capabilities URL" an operator pastes
 * into HipChat, printed by `firebridge --print-addon-url ROUTING_KEY`), takes the install POST
 * and the uninstall DELETE at its callbackUrl, and then
 *   timeline -> room: follows the intake (fbr_intake_set_observer) and posts every alert,
 *     incident change, chat, on-call and paging item of that routing key to the room as a room
 *     notification through the delivery engine (the installation's token lent per attempt);
 *   room -> timeline: takes the room_message webhook, verifies its JWT (jwt.h), turns the text
 *     into a timeline chat (Incident-Chats/All-Chats with CHAT.USER_NAME, CHAT.TEXT,
 *     CHAT.ROOM_ID, CHAT.ROUTING_KEY), posts it to the platform's public API when `oncall_api`
 *     is configured, and answers the commands /ack, /resolve, /incidents and /help in the
 *     webhook's reply body;
 *   and serves the descriptor's configuration page (GET /hipchat/{routing_key}/configure with
 *   ?signed_request=, verified like the webhook).
 * Installations and tokens live in addon_store.h.
 */
#ifndef FIREBRIDGE_ADDON_H
#define FIREBRIDGE_ADDON_H

#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>

#include "firebridge/cfgerr.h"
#include "firebridge/common.h"

struct fbr_server;
struct fbr_delivery_engine;
struct fbr_intake;
struct fbr_incidents;
struct fbr_metrics;

#define FBR_ADDON_PREFIX "/hipchat/"

/* The timeline items the add-on may post to a room (hipchat.notify, hipchat.templates keys). */
#define FBR_ADDON_ITEM_MAP(X)                                                                      \
    X(ALERT, "alert")                                                                              \
    X(INCIDENT, "incident")                                                                        \
    X(CHAT, "chat")                                                                                \
    X(ONCALL, "oncall")                                                                            \
    X(PAGING, "paging")

enum fbr_addon_item {
#define FBR_X(name, text) FBR_ADDON_ITEM_##name,
    FBR_ADDON_ITEM_MAP(FBR_X)
#undef FBR_X
        FBR_ADDON_ITEM_COUNT
};

/* The compiled `hipchat` and `oncall_api` sections (immutable, reference counted). */
struct fbr_addon_config;

/*
 * Compiles the sections (borrowed JSON objects; hipchat NULL: Single Room mode off, *out NULL).
 * public_url is required when hipchat is set.  Every mistake goes to errs with its path
 * ("hipchat.notify[1]: ...").  Returns FBR_OK or FBR_INVALID (*out NULL).
 */
int fbr_addon_config_compile(json_t *hipchat, json_t *oncall_api, const char *public_url,
                             struct fbr_addon_config **out, struct fbr_cfgerr *errs);
void fbr_addon_config_unref(struct fbr_addon_config **c);

/* Prints the Markdown reference of the `hipchat` and `oncall_api` keys (README.md). */
void fbr_addon_print_reference(FILE *out);

/*
 * The Add-on Capabilities URL of a routing key under public_url ("<public_url>/hipchat/<rk>/
 * capabilities", one '/' between the parts).  Returns FBR_OK, or FBR_INVALID when public_url is
 * not an absolute http(s) URL or rk is not a routing key (letters, digits, '-', '_').
 */
int fbr_addon_capabilities_url(const char *public_url, const char *routing_key, char *buf,
                               size_t len);

/* The descriptor for a routing key (new reference).  cfg is borrowed. */
json_t *fbr_addon_descriptor(const struct fbr_addon_config *cfg, struct fbr_slice routing_key);

/*
 * What a room_message webhook body says, read after its signature was verified.  Every pointer
 * is borrowed from body.  A message from a person (event room_message, `from` an object, a
 * string `message`) has from_person set; anything else (the add-on's own posts come back as
 * room_notification with a string `from`) is ignored by the add-on.  text skips leading spaces
 * and text_len is cut to FBR_ROOM_TEXT_MAX bytes on a UTF-8 boundary.
 */
#define FBR_ROOM_TEXT_MAX 10000
enum fbr_room_cmd {
    FBR_ROOM_CHAT,          /* anything that is not a command: a timeline chat */
    FBR_ROOM_ACK,           /* /ack <number> [note] */
    FBR_ROOM_RESOLVE,       /* /resolve <number> [note] */
    FBR_ROOM_INCIDENTS,     /* /incidents */
    FBR_ROOM_HELP,          /* /help */
    FBR_ROOM_USAGE_ACK,     /* /ack without a usable number */
    FBR_ROOM_USAGE_RESOLVE, /* /resolve without a usable number */
};
struct fbr_room_message {
    int has_room;
    int64_t room_id; /* item.room.id */
    int from_person;
    const char *user;    /* from.name, else mention_name, else "HipChat user" */
    const char *mention; /* from.mention_name or NULL */
    json_t *user_id;     /* from.id (integer or string) or NULL */
    const char *text;
    size_t text_len;
    enum fbr_room_cmd cmd;
    uint64_t number;  /* ACK, RESOLVE: the incident number ("#12" or "12") */
    const char *note; /* ACK, RESOLVE: the rest of the line, "" when none */
};
/* Never fails; body may be anything (NULL, not an object). */
void fbr_room_message_parse(json_t *body, struct fbr_room_message *out);

struct fbr_addon_opts {
    struct event_base *base;
    struct fbr_server *srv;             /* routes are registered here */
    struct fbr_delivery_engine *engine; /* room notifications and platform API calls */
    struct fbr_intake *intake;          /* chats and commands go in; the add-on observes it */
    struct fbr_incidents *incidents;    /* /incidents, /ack, /resolve (may be NULL) */
    struct fbr_metrics *metrics;        /* the add-on registers its series here */
    const char *data_dir;
    uint64_t (*clock_s)(void); /* wall clock for JWT checks; NULL: real time */
};

struct fbr_addon;
struct fbr_delivery_auth_ref;

/*
 * Creates the add-on (cfg: a reference is taken; may be NULL, then the routes answer 404 until a
 * reload brings a `hipchat` section), reads the installations and registers the routes and the
 * intake observer.  Everything in opts is borrowed and must outlive the add-on.  Returns FBR_OK,
 * or FBR_ERROR with a reason in err (an unreadable installations file).
 */
int fbr_addon_new(const struct fbr_addon_opts *opts, struct fbr_addon_config *cfg,
                  struct fbr_addon **out, char *err, size_t errlen);
/* Reload: replaces the configuration (a reference is taken; NULL turns the mode off). */
void fbr_addon_set_config(struct fbr_addon *a, struct fbr_addon_config *cfg);
void fbr_addon_free(struct fbr_addon **a);

/*
 * The credentials provider of the installation whose oauth_id is key, for notifications restored
 * from the journal (fbr_delivery_journal_set_auth_lookup(); arg is the add-on, may be NULL):
 * FBR_OK with *out naming the installation's token provider (borrowed, valid while the
 * installation is stored), or FBR_NOTFOUND when no such installation is stored any more.
 */
int fbr_addon_auth_lookup(void *arg, const char *key, struct fbr_delivery_auth_ref *out);

#endif
