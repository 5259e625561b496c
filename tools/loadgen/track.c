/*
 * track.c - the load generator's ledger of sent alerts and seen deliveries (contract in track.h).
 * The sender side writes only `sent`, the sink side only `seen`, `ids` and `room_hi`.
 */
#include "track.h"

#include <stdlib.h>
#include <string.h>

int lg_track_init(struct lg_track *t, uint64_t cap, uint32_t nrooms)
{
    memset(t, 0, sizeof(*t));
    t->cap = cap;
    t->nrooms = nrooms ? nrooms : 1;
    t->sent = calloc(cap, 1);
    t->seen = calloc(cap, 1);
    t->ids = calloc(cap, sizeof(*t->ids));
    t->room_hi = calloc(t->nrooms, sizeof(*t->room_hi));
    if (!t->sent || !t->seen || !t->ids || !t->room_hi) {
        lg_track_free(t);
        return -1;
    }
    lg_hist_reset(&t->e2e);
    return 0;
}

void lg_track_free(struct lg_track *t)
{
    free(t->sent);
    free(t->seen);
    free(t->ids);
    free(t->room_hi);
    t->sent = t->seen = NULL;
    t->ids = t->room_hi = NULL;
}

void lg_track_sent(struct lg_track *t, uint64_t seq, int expects)
{
    if (seq < t->cap)
        t->sent[seq] = (uint8_t)(LG_SENT_SENT | (expects ? LG_SENT_EXPECTS : 0));
}

void lg_track_answered(struct lg_track *t, uint64_t seq, int status)
{
    if (seq >= t->cap || status < 200 || status > 299)
        return;
    t->sent[seq] |= LG_SENT_ACCEPTED;
    if (t->sent[seq] & LG_SENT_EXPECTS)
        t->expected++;
}

/* FNV-1a, never 0 (0 means "no id"). */
static uint64_t id_hash(const char *id, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)id[i]) * 1099511628211ull;
    return h ? h : 1;
}

enum lg_match lg_track_delivered(struct lg_track *t, uint64_t seq, uint32_t room, const char *id,
                                 size_t idlen, uint64_t now_ns, uint64_t sent_ns)
{
    if (seq >= t->cap || room >= t->nrooms || !(t->sent[seq] & LG_SENT_SENT)) {
        t->unknown++;
        return LG_MATCH_UNKNOWN;
    }
    uint64_t h = id ? id_hash(id, idlen) : 0;
    if (t->seen[seq]) {
        if (t->seen[seq] < 255)
            t->seen[seq]++;
        t->duplicates++;
        if (h && h == t->ids[seq])
            t->dup_same_id++;
        return LG_MATCH_DUPLICATE;
    }
    t->seen[seq] = 1;
    t->ids[seq] = h;
    t->delivered++;
    if (seq + 1 < t->room_hi[room])
        t->order_violations++;
    else
        t->room_hi[room] = seq + 1;
    if (sent_ns >= t->measure_from_ns && now_ns >= sent_ns)
        lg_hist_add(&t->e2e, now_ns - sent_ns);
    return LG_MATCH_FIRST;
}

uint64_t lg_track_lost(const struct lg_track *t, uint64_t upto)
{
    uint64_t lost = 0;
    const uint8_t want = LG_SENT_EXPECTS | LG_SENT_ACCEPTED;
    for (uint64_t s = 0; s < upto && s < t->cap; s++)
        if ((t->sent[s] & want) == want && !t->seen[s])
            lost++;
    return lost;
}
