/*
 * slab.c - size classes for jansson's small blocks, beside the data path rather than on it: the
 * daemon installs it under jansson at start-up (main.c), and from then on every json_t, pair,
 * string and bucket array the intake, rules, events and templates make or drop is a pop or a
 * push on one free list, not a trip through the general malloc.  The layout, the bound and the
 * single-thread rule are in slab.h.
 */
#include "firebridge/slab.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <jansson.h>

#include "firebridge/common.h"

#if defined(__SANITIZE_ADDRESS__)
#define SLAB_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_ASAN 1
#endif
#endif

#ifdef SLAB_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

enum {
    SLAB_SHIFT = 16, /* FBR_SLAB_SIZE */
    GRAIN_SHIFT = 4, /* classes every 16 bytes */
    NCLASS = FBR_SLAB_MAX >> GRAIN_SHIFT,
};
_Static_assert(((size_t)1 << SLAB_SHIFT) == FBR_SLAB_SIZE, "slab shift and size agree");

struct block {
    struct block *next;
};

/* Class c (1..NCLASS) holds blocks of c << GRAIN_SHIFT bytes; index 0 is unused. */
static struct {
    char *base; /* NULL: no region */
    size_t size;
    size_t nslabs, used;
    unsigned char *slab_class; /* per slab: its class, 0 while not given out */
    struct block *free[NCLASS + 1];
    char *bump[NCLASS + 1], *bump_end[NCLASS + 1]; /* the class's newest slab, not yet carved */
    size_t carved[NCLASS + 1];
    size_t fallbacks;
} S;

int fbr_slab_init(size_t region_bytes)
{
    if (S.base)
        return FBR_ERROR;
    size_t nslabs = (region_bytes + FBR_SLAB_SIZE - 1) >> SLAB_SHIFT;
    if (nslabs == 0)
        nslabs = 1;
    size_t size = nslabs << SLAB_SHIFT;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED)
        return FBR_ERROR;
    S.slab_class = fbr_xcalloc(nslabs, 1);
    S.base = p;
    S.size = size;
    S.nslabs = nslabs;
    S.used = 0;
    S.fallbacks = 0;
    POISON(S.base, S.size); /* nothing of it is handed out yet */
    return FBR_OK;
}

/* Carves a block of class c from the class's newest slab or a new one; NULL at the bound. */
static void *carve(size_t c)
{
    size_t bsize = c << GRAIN_SHIFT;
    if (S.bump_end[c] - S.bump[c] < (ptrdiff_t)bsize) {
        if (S.used == S.nslabs)
            return NULL;
        size_t i = S.used++;
        S.slab_class[i] = (unsigned char)c;
        S.bump[c] = S.base + (i << SLAB_SHIFT);
        S.bump_end[c] = S.bump[c] + FBR_SLAB_SIZE;
    }
    void *b = S.bump[c];
    S.bump[c] += bsize;
    S.carved[c]++;
    return b;
}

void *fbr_slab_alloc(size_t n)
{
    size_t c = (n + ((size_t)1 << GRAIN_SHIFT) - 1) >> GRAIN_SHIFT;
    if (c > NCLASS)
        return malloc(n);
    if (c == 0)
        c = 1;
    struct block *b = S.free[c];
    if (b) {
        UNPOISON(b, sizeof(*b));
        S.free[c] = b->next;
    } else {
        if (!S.base || !(b = carve(c))) {
            if (S.base)
                S.fallbacks++;
            return malloc(n);
        }
    }
    UNPOISON(b, n ? n : 1); /* a live block's first byte is never poisoned */
    return b;
}

void fbr_slab_free(void *p)
{
    /* unsigned: a pointer below the region wraps to a large offset and fails the test too */
    uintptr_t off = (uintptr_t)p - (uintptr_t)S.base;
    if (off >= S.size) {
        free(p);
        return;
    }
    size_t c = S.slab_class[off >> SLAB_SHIFT];
#ifdef SLAB_ASAN
    /* A block on a list is poisoned from its first byte, a live one never is: a second free, or
     * a pointer into a slab that no allocation returned, is a bug ASan would report for malloc. */
    if (c == 0 || __asan_address_is_poisoned(p) ||
        (off & (FBR_SLAB_SIZE - 1)) % ((size_t)c << GRAIN_SHIFT) != 0) {
        fprintf(stderr, "fbr_slab_free: %p is not a live block (double free?)\n", p);
        abort();
    }
    UNPOISON(p, (size_t)c << GRAIN_SHIFT);
#endif
    struct block *b = p;
    b->next = S.free[c];
    S.free[c] = b;
    POISON(b, (size_t)c << GRAIN_SHIFT);
}

int fbr_slab_install_json(size_t region_bytes)
{
    if (!S.base && fbr_slab_init(region_bytes) != FBR_OK)
        return FBR_ERROR;
    json_set_alloc_funcs(fbr_slab_alloc, fbr_slab_free);
    return FBR_OK;
}

void fbr_slab_stats(struct fbr_slab_stats *st)
{
    *st =
        (struct fbr_slab_stats){.slabs = S.nslabs, .slabs_used = S.used, .fallbacks = S.fallbacks};
    for (size_t c = 1; c <= NCLASS; c++) {
        size_t n = 0;
        for (struct block *b = S.free[c]; b;) {
            n++;
            UNPOISON(b, sizeof(*b));
            struct block *next = b->next;
            POISON(b, sizeof(*b));
            b = next;
        }
        st->blocks_free += n;
        st->blocks_live += S.carved[c] - n;
    }
}

void fbr_slab_release(void)
{
    if (!S.base)
        return;
    UNPOISON(S.base, S.size);
    munmap(S.base, S.size);
    free(S.slab_class);
    memset(&S, 0, sizeof(S));
}
