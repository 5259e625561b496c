/*
 * addon_store.h - the HipChat add-on's installations and their OAuth2 tokens (hipchat-api.md
 * §4).  An installation is one room that installed the add-on for one routing key: its oauthId
 * (the tenant key), oauthSecret, room, group, API base and token URL.  The set is kept in
 * <data_dir>/hipchat-installations.json (mode 0600, written to a temporary file, fsynced, renamed,
 * directory fsynced) so it survives restarts.  Each installation owns one token: fetched with
 * the client-credentials grant, one request at a time, renewed ahead of expiry
 * (fbr_addon_token_renew_ms()), and lent to the delivery engine as a credential provider
 * (fbr_delivery_submit_auth), so a room notification that waits carries the token that is
 * current when it is finally sent.  A 401 or 400 from the token endpoint marks the installation
 * revoked: deliveries waiting on it go to the dead letters with that reason.
 *
 * Token states (one transition function, token_transition() in addon_store.c):
 *   empty -> fetching -> valid | empty (transient failure: retried with backoff) | revoked
 *   valid -> renewing (renewal due, the old token still used) -> valid | valid (failure; retried)
 *         | revoked
 *   valid -> fetching (the token expired, or the API refused it with 401)
 * Single-threaded: call from the event loop only.
 */
#ifndef FIREBRIDGE_ADDON_STORE_H
#define FIREBRIDGE_ADDON_STORE_H

#include <event2/event.h>
#include <stdint.h>

#include "firebridge/client.h"
#include "firebridge/common.h"
#include "firebridge/delivery.h"

#define FBR_TOKEN_STATE_MAP(X)                                                                     \
    X(EMPTY, "empty")                                                                              \
    X(FETCHING, "fetching")                                                                        \
    X(VALID, "valid")                                                                              \
    X(RENEWING, "renewing")                                                                        \
    X(REVOKED, "revoked")

enum fbr_token_state {
#define FBR_X(name, text) FBR_TOKEN_##name,
    FBR_TOKEN_STATE_MAP(FBR_X)
#undef FBR_X
        FBR_TOKEN_STATE_COUNT
};
const char *fbr_token_state_name(enum fbr_token_state s);

/* Bounds on what an install POST may carry. */
#define FBR_ADDON_MAX_INSTALLS 1000
#define FBR_ADDON_FIELD_MAX 512

/*
 * When a token that lives expires_in seconds is renewed: after expires_in minus a margin of a
 * quarter of its life, at most 5 minutes (3600 s -> after 3300 s; 8 h -> 28500 s; 4 s -> 3 s).
 * And when it stops being sent at all: expires_in minus a tenth of its life, at most 30 s.  In
 * ms from when it was issued.
 */
uint64_t fbr_addon_token_renew_ms(uint64_t expires_in_s);
uint64_t fbr_addon_token_usable_ms(uint64_t expires_in_s);

/* One installation.  Strings owned; reference counted (deliveries hold one). */
struct fbr_install {
    unsigned refs;
    struct fbr_addon_store *store; /* NULL once removed from the store */
    char *oauth_id, *oauth_secret, *routing_key, *capabilities_url, *api_base, *token_url;
    int64_t room_id, group_id;
    uint64_t installed_wall_ms;
    /* the token */
    enum fbr_token_state tstate;
    char *token; /* NULL unless valid or renewing */
    uint64_t renew_mono, usable_mono;
    unsigned failures;       /* transient token failures in a row */
    struct event *retry;     /* backoff timer after a transient failure */
    uint64_t token_requests; /* token requests started */
    char last_error[160];    /* why the last token request failed ("" after a success) */
};

struct fbr_addon_store_stats {
    uint64_t token_requests, token_failures, revoked, deliveries_dead_revoked, persist_errors;
};

struct fbr_addon_store;

/* Opens (and reads) <data_dir>/hipchat-installations.json.  base, client and engine are
 * borrowed and must outlive the store.  Returns FBR_OK, or FBR_ERROR with a reason in err (an
 * unreadable or corrupt file: firebridge refuses to start rather than forget installations). */
int fbr_addon_store_open(const char *data_dir, struct event_base *base, struct fbr_client *client,
                         struct fbr_delivery_engine *engine, struct fbr_addon_store **out,
                         char *err, size_t errlen);
void fbr_addon_store_free(struct fbr_addon_store **s);

/* The installation with this oauthId (borrowed), or NULL. */
struct fbr_install *fbr_addon_store_find(struct fbr_addon_store *s, struct fbr_slice oauth_id);
/* Every installation, in installation order (borrowed array of n). */
struct fbr_install *const *fbr_addon_store_list(struct fbr_addon_store *s, size_t *n);

/*
 * Adds an installation (copied from the fields of tmpl; its token, if any, is taken over) and
 * persists the set.  An earlier installation into the same room for the same routing key is
 * replaced (removed first).  Returns FBR_OK, FBR_LIMIT (FBR_ADDON_MAX_INSTALLS), or FBR_ERROR
 * when the file could not be written (nothing changed then).
 */
int fbr_addon_store_add(struct fbr_addon_store *s, struct fbr_install *tmpl);
/* Removes the installation with this oauthId and persists; FBR_OK, FBR_NOTFOUND (nothing to
 * do: uninstall is idempotent) or FBR_ERROR (not written; still removed in memory). */
int fbr_addon_store_remove(struct fbr_addon_store *s, struct fbr_slice oauth_id);

/* A detached installation for an install in progress (not in the store; refs 1). */
struct fbr_install *fbr_install_new(void);
void fbr_install_ref(struct fbr_install *in);
void fbr_install_unref(struct fbr_install **in);

/*
 * Asks for a token now (the install's first token, to prove the secret); cb is called once
 * with FBR_OK, FBR_DECLINED (401/400: credentials refused) or FBR_ERROR (anything else), and a
 * reason.  The installation may be detached (during the install); store may then be NULL only
 * if client is given.  Returns FBR_OK or FBR_INVALID (bad token URL; cb not called).
 */
typedef void (*fbr_install_token_cb)(struct fbr_install *in, int rc, const char *reason, void *arg);
int fbr_install_fetch_token(struct fbr_install *in, struct fbr_client *client,
                            fbr_install_token_cb cb, void *arg);

/* The installation as a credential provider for fbr_delivery_submit_auth(): arg is the
 * installation; key must be its oauth_id. */
extern const struct fbr_delivery_auth fbr_install_auth;

const struct fbr_addon_store_stats *fbr_addon_store_stats(const struct fbr_addon_store *s);

#endif
