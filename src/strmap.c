/*
 * strmap.c - the string-keyed hash map behind the delivery engine's destination, token-bucket
 * and connection-pool lookups.  Chained buckets that double when the load passes 1.
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
    m->buckets = NULL;
    m->nbuckets = 0;
    m->count = 0;
}

void fbr_strmap_clear(struct fbr_strmap *m)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct fbr_strmap_entry *e = m->buckets[i];
        while (e) {
            struct fbr_strmap_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(m->buckets);
    fbr_strmap_init(m);
}

static struct fbr_strmap_entry **find(const struct fbr_strmap *m, const char *key, size_t klen)
{
    if (!m->nbuckets)
        return NULL;
    struct fbr_strmap_entry **pp = &m->buckets[hash(key, klen) & (m->nbuckets - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0)
            return pp;
    return pp;
}

void *fbr_strmap_get(const struct fbr_strmap *m, const char *key, size_t klen)
{
    struct fbr_strmap_entry **pp = find(m, key, klen);
    return pp && *pp ? (*pp)->value : NULL;
}

static void grow(struct fbr_strmap *m)
{
    size_t n = m->nbuckets ? m->nbuckets * 2 : 16;
    struct fbr_strmap_entry **b = fbr_xcalloc(n, sizeof(*b));
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct fbr_strmap_entry *e = m->buckets[i];
        while (e) {
            struct fbr_strmap_entry *next = e->next;
            size_t j = hash(e->key, e->klen) & (n - 1);
            e->next = b[j];
            b[j] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

void fbr_strmap_put(struct fbr_strmap *m, const char *key, size_t klen, void *value)
{
    if (m->count >= m->nbuckets)
        grow(m);
    struct fbr_strmap_entry **pp = find(m, key, klen);
    if (*pp) {
        (*pp)->value = value;
        return;
    }
    struct fbr_strmap_entry *e = fbr_xmalloc(sizeof(*e) + klen + 1);
    e->next = NULL;
    e->value = value;
    e->klen = klen;
    memcpy(e->key, key, klen);
    e->key[klen] = '\0';
    *pp = e;
    m->count++;
}

void *fbr_strmap_del(struct fbr_strmap *m, const char *key, size_t klen)
{
    struct fbr_strmap_entry **pp = find(m, key, klen);
    if (!pp || !*pp)
        return NULL;
    struct fbr_strmap_entry *e = *pp;
    void *v = e->value;
    *pp = e->next;
    free(e);
    m->count--;
    return v;
}

void fbr_strmap_each(const struct fbr_strmap *m,
                     void (*fn)(const char *key, void *value, void *arg), void *arg)
{
    for (size_t i = 0; i < m->nbuckets; i++)
        for (struct fbr_strmap_entry *e = m->buckets[i]; e; e = e->next)
            fn(e->key, e->value, arg);
}
