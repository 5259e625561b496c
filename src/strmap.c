/*
 * strmap.c - the string-keyed hash map behind the delivery engine's destination, token-bucket
 * and connection-pool lookups.  Open addressing with linear probing over slots that keep each
 * key's hash beside its entry, doubled when more than half are used, halved when a deletion leaves
 * fewer than an eighth used (a map that once held 200,000 rooms gives their slots back), deletion
 * by backward shift:
 * a lookup compares hashes in one contiguous array and touches only the matching entry (the
 * chained buckets before it touched every entry on the chain, a cache miss each under load).
 */
#include "firebridge/strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/common.h"

static uint64_t hash(const char *k, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)k[i];
        h *= 1099511628211ull;
    }
    return h;
}

void fbr_strmap_init(struct fbr_strmap *m)
{
    m->slots = NULL;
    m->nslots = 0;
    m->count = 0;
}

void fbr_strmap_clear(struct fbr_strmap *m)
{
    for (size_t i = 0; i < m->nslots; i++)
        free(m->slots[i].e);
    free(m->slots);
    fbr_strmap_init(m);
}

/* The slot holding key, or the empty slot where it would go (NULL before the first insert). */
static struct fbr_strmap_slot *find(const struct fbr_strmap *m, const char *key, size_t klen,
                                    uint64_t h)
{
    if (!m->nslots)
        return NULL;
    size_t mask = m->nslots - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        struct fbr_strmap_slot *s = &m->slots[i];
        if (!s->e || (s->hash == h && s->e->klen == klen && memcmp(s->e->key, key, klen) == 0))
            return s;
    }
}

void *fbr_strmap_get(const struct fbr_strmap *m, const char *key, size_t klen)
{
    struct fbr_strmap_slot *s = find(m, key, klen, hash(key, klen));
    return s && s->e ? s->e->value : NULL;
}

#define MIN_SLOTS 16

/* Moves every entry into a fresh array of n slots (a power of two, more than twice the count). */
static void resize(struct fbr_strmap *m, size_t n)
{
    struct fbr_strmap_slot *b = fbr_xcalloc(n, sizeof(*b));
    for (size_t i = 0; i < m->nslots; i++) {
        if (!m->slots[i].e)
            continue;
        size_t j = (size_t)m->slots[i].hash & (n - 1);
        while (b[j].e)
            j = (j + 1) & (n - 1);
        b[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = b;
    m->nslots = n;
}

void fbr_strmap_put(struct fbr_strmap *m, const char *key, size_t klen, void *value)
{
    if (2 * (m->count + 1) > m->nslots)
        resize(m, m->nslots ? m->nslots * 2 : MIN_SLOTS);
    uint64_t h = hash(key, klen);
    struct fbr_strmap_slot *s = find(m, key, klen, h);
    if (s->e) {
        s->e->value = value;
        return;
    }
    struct fbr_strmap_entry *e = fbr_xmalloc(sizeof(*e) + klen + 1);
    e->value = value;
    e->klen = klen;
    memcpy(e->key, key, klen);
    e->key[klen] = '\0';
    s->hash = h;
    s->e = e;
    m->count++;
}

void *fbr_strmap_del(struct fbr_strmap *m, const char *key, size_t klen)
{
    struct fbr_strmap_slot *s = find(m, key, klen, hash(key, klen));
    if (!s || !s->e)
        return NULL;
    void *v = s->e->value;
    free(s->e);
    m->count--;
    /* Backward shift: the keys after the hole that could sit in it move up, so that every key
     * stays reachable from its home slot without an empty slot on the way (no tombstones). */
    size_t mask = m->nslots - 1, hole = (size_t)(s - m->slots);
    for (size_t i = (hole + 1) & mask; m->slots[i].e; i = (i + 1) & mask) {
        size_t home = (size_t)m->slots[i].hash & mask;
        /* i's key may fill the hole when its home is not in the cyclic range (hole, i] */
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            m->slots[hole] = m->slots[i];
            hole = i;
        }
    }
    m->slots[hole].e = NULL;
    m->slots[hole].hash = 0;
    if (m->nslots > MIN_SLOTS && 8 * m->count < m->nslots)
        resize(m, m->nslots / 2); /* a quarter used at most after: no flapping with put */
    return v;
}

void fbr_strmap_each(const struct fbr_strmap *m,
                     void (*fn)(const char *key, void *value, void *arg), void *arg)
{
    for (size_t i = 0; i < m->nslots; i++)
        if (m->slots[i].e)
            fn(m->slots[i].e->key, m->slots[i].e->value, arg);
}
