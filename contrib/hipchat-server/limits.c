/*
 * limits.c - hipchat-server's rate limits (hipchat-api.md section 2): fixed windows per token
 * (X-Ratelimit-*) and per room (X-FloodControl-*), the "N/SECONDS" rate values of the flags and
 * config file, and the bounded table of per-token state.  api.c asks here before it stores.
 */
#include <stdlib.h>
#include <string.h>

#include "firebridge/ratelimit.h"
#include "hcs.h"

uint64_t hcs_now_s(void)
{
    return fbr_wall_ms() / 1000u;
}

struct hcs_window_view hcs_window_peek(const struct hcs_window *w, struct hcs_rate r, uint64_t now)
{
    struct hcs_window_view v = {r.limit, r.limit, now + r.period_s};
    if (w && w->end_s > now) {
        v.remaining = w->used >= r.limit ? 0 : r.limit - w->used;
        v.reset_s = w->end_s;
    }
    return v;
}

int hcs_window_hit(struct hcs_window *w, struct hcs_rate r, uint64_t now)
{
    if (w->end_s <= now) {
        w->end_s = now + r.period_s;
        w->used = 0;
    }
    if (w->used >= r.limit)
        return FBR_LIMIT;
    w->used++;
    return FBR_OK;
}

int hcs_rate_parse(const char *s, struct hcs_rate *out)
{
    if (strcmp(s, "off") == 0) {
        *out = (struct hcs_rate){HCS_LIFTED_LIMIT, 1};
        return FBR_OK;
    }
    /* The library's parser reads "0" as "no limit"; this server wants "off" for that. */
    uint32_t n, secs;
    if (fbr_ratelimit_parse(s, &n, &secs) != FBR_OK || n == 0 || n > HCS_LIFTED_LIMIT ||
        secs == 0 || secs > 86400)
        return FBR_ERROR;
    *out = (struct hcs_rate){n, secs};
    return FBR_OK;
}

struct hcs_token_state *hcs_token_get(struct hcs *s, const char *token, int create)
{
    size_t len = strlen(token);
    struct hcs_token_state *t = fbr_strmap_get(&s->tokens, token, len);
    if (t || !create)
        return t;
    t = fbr_xcalloc(1, sizeof(*t));
    fbr_strmap_put(&s->tokens, token, len, t);
    return t;
}

struct expired {
    uint64_t now;
    char **keys;
    size_t n;
};

static void collect_expired(const char *key, void *value, void *arg)
{
    const struct hcs_token_state *t = value;
    struct expired *x = arg;
    if (t->configured || t->window.end_s > x->now)
        return;
    x->keys = fbr_xrealloc(x->keys, (x->n + 1) * sizeof(*x->keys));
    x->keys[x->n++] = fbr_xstrdup(key);
}

/* Forgets tokens that are not configured and whose window has closed. */
static void drop_expired_tokens(struct hcs *s, uint64_t now)
{
    struct expired x = {now, NULL, 0};
    fbr_strmap_each(&s->tokens, collect_expired, &x);
    for (size_t i = 0; i < x.n; i++) {
        free(fbr_strmap_del(&s->tokens, x.keys[i], strlen(x.keys[i])));
        free(x.keys[i]);
    }
    free(x.keys);
}

struct hcs_token_state *hcs_token_track(struct hcs *s, const char *token, uint64_t now)
{
    /* Only --any-token (and issued add-on tokens) get here with unbounded token strings: past
     * max_tokens live ones, the newcomers share one window so that memory stays bounded. */
    if (s->tokens.count >= s->max_tokens)
        drop_expired_tokens(s, now);
    return s->tokens.count >= s->max_tokens ? &s->overflow_token : hcs_token_get(s, token, 1);
}

static void reset_window(const char *key, void *value, void *arg)
{
    struct hcs_token_state *t = value;
    t->window = (struct hcs_window){0, 0};
}

void hcs_limits_reset(struct hcs *s)
{
    fbr_strmap_each(&s->tokens, reset_window, NULL);
    s->overflow_token.window = (struct hcs_window){0, 0};
    for (size_t i = 0; i < s->nrooms; i++)
        s->room_list[i]->window = (struct hcs_window){0, 0};
}

static void free_value(const char *key, void *value, void *arg)
{
    free(value);
}

void hcs_tokens_free(struct hcs *s)
{
    fbr_strmap_each(&s->tokens, free_value, NULL);
    fbr_strmap_clear(&s->tokens);
    for (size_t i = 0; i < s->nglobal_tokens; i++)
        free(s->global_tokens[i]);
    free(s->global_tokens);
    s->global_tokens = NULL;
    s->nglobal_tokens = 0;
}
