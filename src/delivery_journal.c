/*
 * delivery_journal.c - the delivery engine's side of the write-ahead journal (see
 * delivery_journal.h): encodes deliveries as journal records from the engine's transition hook,
 * replays them at start, and rewrites the pending ones at a checkpoint.
 *
 * Payloads (little-endian; str = u32 length + bytes):
 *   accepted: u8 version 2, u64 seq, u64 created_wall_ms, u32 attempts, u32 room n, u32 room secs,
 *             u32 token n, u32 token secs, str id, str method, str dest_key, str url, str head,
 *             str body, str auth_key (the credentials provider's key, empty: none; version 1
 *             records end after the body)
 *   attempt:  u32 attempts, str id        (an attempt starts; not held: the count is a hint)
 * An accepted record counts the first attempt as started (its attempts field is at least 1), and
 * no attempt record is written for the first attempt: one record less per alert on the hot path
 * (issue 12).  The count can only come back one too high (a delivery restored before its first
 * attempt started), never too low, which is the safe side of at-least-once.
 *   finished: u8 outcome (1 delivered, 2 dead, 3 cancelled), str id
 * A delivered outcome is appended lazily (fbr_journal_append_lazy: with the next write, within
 * 10 ms): a crash before it is written makes recovery send that delivery once more, with its id.
 * A pending delivery keeps a hold on its latest accepted record (the ref lives in the engine's
 * hook word); a finish releases it.
 *
 * Write-ahead: the engine holds every new delivery (fbr_delivery_set_held) until the journal has
 * committed its accepted record as --fsync says; the journal's commit notification releases
 * them in order.  So nothing is sent before it is safe, and the deliveries of a request whose
 * records could not be committed (answered 503) are still unsent when the intake cancels them:
 * their cancelled record follows the accepted one, and recovery does not send them either.
 */
#include "firebridge/delivery_journal.h"

#include <stdlib.h>
#include <string.h>

#include "firebridge/log.h"

#define VERSION 2
#define OUTCOME_DELIVERED 1
#define OUTCOME_DEAD 2
#define OUTCOME_CANCELLED 3

/* A delivery seen during replay: its latest accepted record, until a finished record. */
struct pending {
    uint64_t seq;
    unsigned attempts;
    int live; /* 0 once finished */
    struct fbr_journal_ref ref;
    struct fbr_slice id, payload; /* borrowed from the journal's mapping until replay_done */
};

/*
 * During recovery only: the deliveries seen, in one array in order of first acceptance, and an
 * open-addressing index by id (slot = array position + 1, 0 empty; a finished delivery stays
 * in place with live 0).  No allocation per record: at a start with 100,000 pending, per-record
 * allocations and frees interleaved with the engine's were most of the restore time.
 */
struct replay_state {
    struct pending *v;
    size_t n, cap;
    uint32_t *slots;
    size_t nslots; /* power of two, at least twice n */
};

struct fbr_delivery_journal {
    struct fbr_delivery_engine *engine;
    struct fbr_journal *journal;
    unsigned char *buf; /* encoding scratch */
    size_t len, cap;
    struct iovec *iov; /* an accepted record's pieces */
    size_t iov_cap;
    struct replay_state replay;
    /* Held deliveries in creation order: the journal position after each one's accepted record
     * and its seq, released once the commit level passes the position (a ring). */
    struct held {
        uint64_t pos, seq;
    } *held;
    size_t hhead, hcount, hcap;
    size_t restored, unreadable;
    struct auth_cell *auth; /* where restored deliveries find their credentials provider */
};

/* ---- encoding ---- */

static void put(struct fbr_delivery_journal *dj, const void *p, size_t n)
{
    if (dj->len + n > dj->cap) {
        dj->cap = (dj->len + n) * 2 + 1024;
        dj->buf = fbr_xrealloc(dj->buf, dj->cap);
    }
    memcpy(dj->buf + dj->len, p, n);
    dj->len += n;
}

static void put_u32(struct fbr_delivery_journal *dj, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    put(dj, b, 4);
}

static void put_u64(struct fbr_delivery_journal *dj, uint64_t v)
{
    put_u32(dj, (uint32_t)v);
    put_u32(dj, (uint32_t)(v >> 32));
}

static void put_str(struct fbr_delivery_journal *dj, const char *p, size_t n)
{
    put_u32(dj, (uint32_t)n);
    put(dj, p, n);
}

/*
 * Appends d's accepted record: the fixed fields and the length prefixes are encoded into the
 * scratch buffer, the strings and the body's slices are handed to the journal as they are (one
 * copy, into the journal's buffer, instead of encoding the whole record first).
 */
static struct fbr_journal_ref append_accepted(struct fbr_delivery_journal *dj,
                                              const struct fbr_delivery_info *d)
{
    size_t blen = 0;
    for (size_t i = 0; i < d->nbody; i++)
        blen += d->body[i].iov_len;
    struct fbr_slice strs[5] = {{d->id, strlen(d->id)},
                                {d->method, strlen(d->method)},
                                {d->dest_key, strlen(d->dest_key)},
                                d->url,
                                d->head};
    dj->len = 0;
    unsigned char v = VERSION;
    put(dj, &v, 1);
    put_u64(dj, d->seq);
    put_u64(dj, d->created_wall_ms);
    put_u32(dj, d->attempts ? d->attempts : 1); /* the first attempt counts as started */
    put_u32(dj, d->room_rate.n);
    put_u32(dj, d->room_rate.secs);
    put_u32(dj, d->token_rate.n);
    put_u32(dj, d->token_rate.secs);
    size_t fixed = dj->len;
    for (size_t i = 0; i < FBR_ARRAY_LEN(strs); i++)
        put_u32(dj, (uint32_t)strs[i].len);
    put_u32(dj, (uint32_t)blen);
    size_t klen = d->auth_key ? strlen(d->auth_key) : 0;
    put_u32(dj, (uint32_t)klen);
    /* iov: fixed fields, then (length, bytes) per string, then the body's length and slices */
    size_t need = 4 + 2 * FBR_ARRAY_LEN(strs) + d->nbody;
    if (need > dj->iov_cap) {
        dj->iov_cap = need * 2;
        dj->iov = fbr_xrealloc(dj->iov, dj->iov_cap * sizeof(*dj->iov));
    }
    struct iovec *iov = dj->iov;
    int n = 0;
    iov[n++] = (struct iovec){dj->buf, fixed};
    for (size_t i = 0; i < FBR_ARRAY_LEN(strs); i++) {
        iov[n++] = (struct iovec){dj->buf + fixed + 4 * i, 4};
        iov[n++] = (struct iovec){(void *)strs[i].ptr, strs[i].len};
    }
    iov[n++] = (struct iovec){dj->buf + fixed + 4 * FBR_ARRAY_LEN(strs), 4};
    for (size_t i = 0; i < d->nbody; i++)
        iov[n++] = d->body[i];
    iov[n++] = (struct iovec){dj->buf + fixed + 4 * FBR_ARRAY_LEN(strs) + 4, 4};
    iov[n++] = (struct iovec){(void *)(d->auth_key ? d->auth_key : ""), klen};
    return fbr_journal_appendv(dj->journal, FBR_JR_DELIVERY_ACCEPTED, iov, n);
}

/* ---- decoding ---- */

struct reader {
    const unsigned char *p, *end;
    int bad;
};

static uint32_t get_u32(struct reader *r)
{
    if (r->end - r->p < 4) {
        r->bad = 1;
        return 0;
    }
    uint32_t v = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 |
                 (uint32_t)r->p[3] << 24;
    r->p += 4;
    return v;
}

static uint64_t get_u64(struct reader *r)
{
    uint64_t lo = get_u32(r);
    return lo | (uint64_t)get_u32(r) << 32;
}

static struct fbr_slice get_str(struct reader *r)
{
    uint32_t n = get_u32(r);
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        return (struct fbr_slice){"", 0};
    }
    struct fbr_slice s = {(const char *)r->p, n};
    r->p += n;
    return s;
}

struct accepted {
    uint64_t seq, created;
    unsigned attempts;
    struct fbr_rate room, token;
    struct fbr_slice id, method, dest, url, head, body, auth_key;
};

static int decode_accepted(struct fbr_slice p, struct accepted *a)
{
    struct reader r = {(const unsigned char *)p.ptr, (const unsigned char *)p.ptr + p.len, 0};
    if (p.len < 1 || (r.p[0] != 1 && r.p[0] != VERSION))
        return -1;
    unsigned version = r.p[0];
    r.p++;
    a->seq = get_u64(&r);
    a->created = get_u64(&r);
    a->attempts = get_u32(&r);
    a->room.n = get_u32(&r);
    a->room.secs = get_u32(&r);
    a->token.n = get_u32(&r);
    a->token.secs = get_u32(&r);
    a->id = get_str(&r);
    a->method = get_str(&r);
    a->dest = get_str(&r);
    a->url = get_str(&r);
    a->head = get_str(&r);
    a->body = get_str(&r);
    a->auth_key = version >= 2 ? get_str(&r) : (struct fbr_slice){"", 0};
    return r.bad || !a->id.len || a->id.len > 64 || a->method.len > 15 ? -1 : 0;
}

/* ---- holding new deliveries until their record is committed ---- */

static void held_push(struct fbr_delivery_journal *dj, uint64_t pos, uint64_t seq)
{
    if (dj->hcount == dj->hcap) {
        size_t ncap = dj->hcap ? dj->hcap * 2 : 256;
        struct held *nv = fbr_xmalloc(ncap * sizeof(*nv));
        for (size_t i = 0; i < dj->hcount; i++)
            nv[i] = dj->held[(dj->hhead + i) % dj->hcap];
        free(dj->held);
        dj->held = nv;
        dj->hcap = ncap;
        dj->hhead = 0;
    }
    dj->held[(dj->hhead + dj->hcount) % dj->hcap] = (struct held){pos, seq};
    dj->hcount++;
}

/* The journal's commit level reached pos: the deliveries whose records lie below go. */
static void on_committed(void *arg, uint64_t pos)
{
    struct fbr_delivery_journal *dj = arg;
    uint64_t seq = 0;
    while (dj->hcount && dj->held[dj->hhead].pos <= pos) {
        seq = dj->held[dj->hhead].seq;
        dj->hhead = (dj->hhead + 1) % dj->hcap;
        dj->hcount--;
    }
    if (seq)
        fbr_delivery_release(dj->engine, seq);
}

/* ---- the transition hook ---- */

static void on_transition(const struct fbr_delivery_info *d, enum fbr_delivery_state from,
                          enum fbr_delivery_state to, void *arg)
{
    struct fbr_delivery_journal *dj = arg;
    struct fbr_journal *j = dj->journal;
    if (from == FBR_DS_QUEUED && to == FBR_DS_QUEUED) { /* creation */
        if (d->restored)
            return; /* its record is in the journal already, held by the replay */
        *d->hook_word = fbr_journal_ref_pack(append_accepted(dj, d));
        held_push(dj, fbr_journal_position(j), d->seq);
        return;
    }
    if (to == FBR_DS_IN_FLIGHT) {
        if (!d->attempts)
            return; /* the first attempt: its accepted record counts it */
        dj->len = 0;
        put_u32(dj, d->attempts + 1);
        put_str(dj, d->id, strlen(d->id));
        fbr_journal_release(j, fbr_journal_append(j, FBR_JR_DELIVERY_ATTEMPT, dj->buf, dj->len));
        return;
    }
    if (to == FBR_DS_DELIVERED || to == FBR_DS_DEAD || to == FBR_DS_CANCELLED) {
        dj->len = 0;
        unsigned char outcome = to == FBR_DS_DELIVERED ? OUTCOME_DELIVERED
                                : to == FBR_DS_DEAD    ? OUTCOME_DEAD
                                                       : OUTCOME_CANCELLED;
        put(dj, &outcome, 1);
        put_str(dj, d->id, strlen(d->id));
        /* delivered: lazy (lost with a crash, the delivery is sent once more, with its id);
         * dead and cancelled: at once (lost, a dead delivery would be tried again) */
        fbr_journal_release(
            j, to == FBR_DS_DELIVERED
                   ? fbr_journal_append_lazy(j, FBR_JR_DELIVERY_FINISHED, dj->buf, dj->len)
                   : fbr_journal_append(j, FBR_JR_DELIVERY_FINISHED, dj->buf, dj->len));
        fbr_journal_release(j, fbr_journal_ref_unpack(*d->hook_word));
        *d->hook_word = 0;
    }
}

/* ---- credentials of restored deliveries ---- */

/*
 * A delivery that asked a provider for its Authorization at send time (the HipChat add-on's
 * installations) was journaled with the provider's key only.  Restored, it gets a stand-in
 * provider holding that key, which asks the lookup that fbr_delivery_journal_set_auth_lookup()
 * installs for the real provider at every attempt and hands the call over: the token is the
 * one the installation has at that moment, never a stored one.  The lookup lives in a cell
 * shared by the journal and the stand-ins (the engine may outlive the journal's side).
 */
struct auth_cell {
    unsigned refs;
    fbr_delivery_auth_lookup_fn fn; /* NULL: not set yet, or detached */
    void *arg;
};

struct restored_auth {
    unsigned refs;
    struct auth_cell *cell;
    char key[];
};

static void cell_unref(struct auth_cell *c)
{
    if (c && !--c->refs)
        free(c);
}

static int restored_get(void *arg, char *value, size_t cap, char *reason, size_t rcap)
{
    struct restored_auth *ra = arg;
    if (!ra->cell->fn)
        return FBR_AGAIN; /* the add-on is not up yet: fbr_delivery_auth_ready() wakes it */
    struct fbr_delivery_auth_ref real;
    if (ra->cell->fn(ra->cell->arg, ra->key, &real) != FBR_OK) {
        snprintf(reason, rcap, "restored from the journal: its credentials provider %s (a HipChat "
                 "installation) is gone", ra->key);
        return FBR_ERROR;
    }
    return real.ops->get(real.arg, value, cap, reason, rcap);
}

static void restored_rejected(void *arg, const char *value)
{
    struct restored_auth *ra = arg;
    struct fbr_delivery_auth_ref real;
    if (ra->cell->fn && ra->cell->fn(ra->cell->arg, ra->key, &real) == FBR_OK)
        real.ops->rejected(real.arg, value);
}

static void restored_ref(void *arg)
{
    struct restored_auth *ra = arg;
    ra->refs++;
}

static void restored_unref(void *arg)
{
    struct restored_auth *ra = arg;
    if (--ra->refs)
        return;
    cell_unref(ra->cell);
    free(ra);
}

static const struct fbr_delivery_auth restored_auth_ops = {restored_get, restored_rejected,
                                                           restored_ref, restored_unref};

void fbr_delivery_journal_set_auth_lookup(struct fbr_delivery_journal *dj,
                                          fbr_delivery_auth_lookup_fn fn, void *arg)
{
    dj->auth->fn = fn;
    dj->auth->arg = arg;
}

/* ---- the journal owner ---- */

static uint64_t id_hash(struct fbr_slice id)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < id.len; i++)
        h = (h ^ (unsigned char)id.ptr[i]) * 1099511628211ull;
    return h;
}

/* The slot of id in the index: where it is, or the empty one where it would go. */
static uint32_t *index_slot(struct replay_state *rs, struct fbr_slice id)
{
    size_t mask = rs->nslots - 1;
    for (size_t i = id_hash(id) & mask;; i = (i + 1) & mask) {
        uint32_t *sl = &rs->slots[i];
        if (!*sl)
            return sl;
        struct pending *p = &rs->v[*sl - 1];
        if (p->id.len == id.len && memcmp(p->id.ptr, id.ptr, id.len) == 0)
            return sl;
    }
}

static struct pending *find_pending(struct replay_state *rs, struct fbr_slice id)
{
    if (!rs->nslots)
        return NULL;
    uint32_t sl = *index_slot(rs, id);
    return sl ? &rs->v[sl - 1] : NULL;
}

static struct pending *add_pending(struct replay_state *rs, struct fbr_slice id)
{
    if (2 * (rs->n + 1) > rs->nslots) {
        size_t ns = rs->nslots ? rs->nslots * 2 : 1024;
        free(rs->slots);
        rs->slots = fbr_xcalloc(ns, sizeof(*rs->slots));
        rs->nslots = ns;
        for (size_t i = 0; i < rs->n; i++)
            *index_slot(rs, rs->v[i].id) = (uint32_t)(i + 1);
    }
    if (rs->n == rs->cap) {
        rs->cap = rs->cap ? rs->cap * 2 : 1024;
        rs->v = fbr_xrealloc(rs->v, rs->cap * sizeof(*rs->v));
    }
    struct pending *p = &rs->v[rs->n++];
    *p = (struct pending){.id = id};
    *index_slot(rs, id) = (uint32_t)rs->n;
    return p;
}

static void replay_free(struct replay_state *rs)
{
    free(rs->v);
    free(rs->slots);
    *rs = (struct replay_state){0};
}

static void replay(void *arg, unsigned type, struct fbr_slice payload, struct fbr_journal_ref ref)
{
    struct fbr_delivery_journal *dj = arg;
    struct reader r = {(const unsigned char *)payload.ptr,
                       (const unsigned char *)payload.ptr + payload.len, 0};
    if (type == FBR_JR_DELIVERY_ACCEPTED) {
        struct accepted a;
        if (decode_accepted(payload, &a) != 0) {
            dj->unreadable++;
            return;
        }
        struct pending *p = find_pending(&dj->replay, a.id);
        if (p && p->live) { /* a checkpoint's copy: it replaces the older record, same order */
            fbr_journal_release(dj->journal, p->ref);
            if (a.attempts < p->attempts)
                a.attempts = p->attempts;
        } else {
            if (!p)
                p = add_pending(&dj->replay, a.id);
            p->seq = a.seq;
            p->live = 1;
        }
        p->attempts = a.attempts;
        p->ref = ref;
        p->payload = payload;
        fbr_journal_hold(dj->journal, ref);
        return;
    }
    if (type == FBR_JR_DELIVERY_ATTEMPT) {
        unsigned attempts = get_u32(&r);
        struct fbr_slice id = get_str(&r);
        struct pending *p = r.bad ? NULL : find_pending(&dj->replay, id);
        if (p && p->live && attempts > p->attempts)
            p->attempts = attempts;
        return;
    }
    if (type == FBR_JR_DELIVERY_FINISHED) {
        r.p++;
        struct fbr_slice id = get_str(&r);
        struct pending *p = r.bad ? NULL : find_pending(&dj->replay, id);
        if (p && p->live) {
            fbr_journal_release(dj->journal, p->ref);
            p->live = 0;
        }
    }
}

static int by_seq(const void *a, const void *b)
{
    const struct pending *x = *(struct pending *const *)a, *y = *(struct pending *const *)b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static void replay_done(void *arg)
{
    struct fbr_delivery_journal *dj = arg;
    struct replay_state *rs = &dj->replay;
    /* In submission order: first acceptance is that order unless a checkpoint's copy came
     * first (a delivery first seen in a later segment), so sort only when needed. */
    struct pending **order = fbr_xcalloc(rs->n ? rs->n : 1, sizeof(*order));
    size_t n = 0;
    int sorted = 1;
    for (size_t i = 0; i < rs->n; i++) {
        if (!rs->v[i].live)
            continue;
        if (n && rs->v[i].seq < order[n - 1]->seq)
            sorted = 0;
        order[n++] = &rs->v[i];
    }
    if (!sorted)
        qsort(order, n, sizeof(*order), by_seq);
    for (size_t i = 0; i < n; i++) {
        struct pending *p = order[i];
        struct accepted a;
        decode_accepted(p->payload, &a);
        char id[65], method[16];
        memcpy(id, a.id.ptr, a.id.len);
        id[a.id.len] = '\0';
        memcpy(method, a.method.ptr, a.method.len);
        method[a.method.len] = '\0';
        struct fbr_delivery_saved s = {
            .id = id,
            .method = method,
            .url = a.url,
            .head = a.head,
            .body = a.body,
            .dest_key = a.dest,
            .created_wall_ms = a.created,
            .attempts = p->attempts,
            .seq = a.seq,
            .room_rate = a.room,
            .token_rate = a.token,
            .hook_word = fbr_journal_ref_pack(p->ref),
        };
        struct restored_auth *ra = NULL;
        struct fbr_delivery_auth_ref aref;
        if (a.auth_key.len) {
            ra = fbr_xmalloc(sizeof(*ra) + a.auth_key.len + 1);
            ra->refs = 1;
            ra->cell = dj->auth;
            ra->cell->refs++;
            memcpy(ra->key, a.auth_key.ptr, a.auth_key.len);
            ra->key[a.auth_key.len] = '\0';
            aref = (struct fbr_delivery_auth_ref){&restored_auth_ops, ra, ra->key};
            s.auth = &aref;
        }
        int rc = fbr_delivery_restore(dj->engine, &s);
        if (ra)
            restored_unref(ra); /* the delivery holds its own reference */
        if (rc == FBR_OK) {
            dj->restored++;
        } else {
            dj->unreadable++;
            fbr_log(FBR_LOG_ERROR, id, "restoring deliveries from the journal",
                    "the engine refused it (bad method, id or URL): dropped");
            fbr_journal_release(dj->journal, p->ref);
        }
    }
    free(order);
    replay_free(rs);
    if (dj->restored)
        fbr_log_info("journal: %zu pending deliver%s restored in their original order",
                     dj->restored, dj->restored == 1 ? "y" : "ies");
}

struct cp {
    struct fbr_delivery_journal *dj;
    uint32_t upto;
};

static void checkpoint_one(const struct fbr_delivery_info *d, enum fbr_delivery_state s, void *arg)
{
    struct cp *c = arg;
    struct fbr_journal_ref old = fbr_journal_ref_unpack(*d->hook_word);
    if (!old.seg || old.seg > c->upto)
        return;
    *d->hook_word = fbr_journal_ref_pack(append_accepted(c->dj, d));
    fbr_journal_release(c->dj->journal, old);
}

static void checkpoint(void *arg, uint32_t upto)
{
    struct cp c = {arg, upto};
    fbr_delivery_each(c.dj->engine, checkpoint_one, &c);
}

/* ---- lifecycle ---- */

struct fbr_delivery_journal *fbr_delivery_journal_new(struct fbr_delivery_engine *engine,
                                                      struct fbr_journal *journal)
{
    struct fbr_delivery_journal *dj = fbr_xcalloc(1, sizeof(*dj));
    dj->engine = engine;
    dj->journal = journal;
    dj->auth = fbr_xcalloc(1, sizeof(*dj->auth));
    dj->auth->refs = 1;
    fbr_delivery_set_transition_hook(engine, on_transition, dj);
    struct fbr_journal_owner o = {
        .name = "deliveries",
        .types = 1u << FBR_JR_DELIVERY_ACCEPTED | 1u << FBR_JR_DELIVERY_ATTEMPT |
                 1u << FBR_JR_DELIVERY_FINISHED,
        .replay = replay,
        .replay_done = replay_done,
        .checkpoint = checkpoint,
        .committed = on_committed,
        .arg = dj,
    };
    fbr_journal_add_owner(journal, &o);
    fbr_delivery_set_held(engine, 1);
    return dj;
}

void fbr_delivery_journal_free(struct fbr_delivery_journal **djp)
{
    struct fbr_delivery_journal *dj = *djp;
    if (!dj)
        return;
    fbr_delivery_set_transition_hook(dj->engine, NULL, NULL);
    fbr_journal_remove_owner(dj->journal, dj);
    replay_free(&dj->replay);
    dj->auth->fn = NULL; /* restored deliveries still queued wait, or die at expiry */
    cell_unref(dj->auth);
    free(dj->buf);
    free(dj->iov);
    free(dj->held);
    free(dj);
    *djp = NULL;
}

size_t fbr_delivery_journal_restored(const struct fbr_delivery_journal *dj)
{
    return dj->restored;
}

size_t fbr_delivery_journal_unreadable(const struct fbr_delivery_journal *dj)
{
    return dj->unreadable;
}
