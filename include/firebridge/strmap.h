/*
 * strmap.h - a small string-keyed hash map (open addressing with linear probing over a power-of-two
 * slot array that keeps each key's hash beside its entry, FNV-1a) used by the
 * delivery side of the data path: the client's connection pools by origin, the delivery engine's
 * destinations by key and its token buckets by token.  Keys are copied; values are borrowed
 * pointers whose lifetime the caller manages.
 */
#ifndef FIREBRIDGE_STRMAP_H
#define FIREBRIDGE_STRMAP_H

#include <stddef.h>
#include <stdint.h>

struct fbr_strmap_entry {
    void *value;
    size_t klen;
    char key[]; /* klen bytes, NUL-terminated */
};

/* A slot: the entry (NULL: empty) and its key's hash, compared before the entry is touched (a
 * probe past another key costs no cache miss on that key's entry). */
struct fbr_strmap_slot {
    uint64_t hash;
    struct fbr_strmap_entry *e;
};

struct fbr_strmap {
    struct fbr_strmap_slot *slots;
    size_t nslots; /* power of two, 0 until the first insert; at most half of them used, and
                      (above 16) at least an eighth after a deletion */
    size_t count;
};

void fbr_strmap_init(struct fbr_strmap *m);
/* Frees the entries (not the values). */
void fbr_strmap_clear(struct fbr_strmap *m);
/* Returns the value stored for key (borrowed) or NULL. */
void *fbr_strmap_get(const struct fbr_strmap *m, const char *key, size_t klen);
/* Stores value under a copy of key, replacing any previous value. */
void fbr_strmap_put(struct fbr_strmap *m, const char *key, size_t klen, void *value);
/* Removes key; returns its value or NULL. */
void *fbr_strmap_del(struct fbr_strmap *m, const char *key, size_t klen);
/* Calls fn for every entry; fn must not modify the map. */
void fbr_strmap_each(const struct fbr_strmap *m,
                     void (*fn)(const char *key, void *value, void *arg), void *arg);

#endif
