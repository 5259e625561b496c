/*
 * slab.h - the daemon's allocator for jansson's small blocks (issue 12).  Every alert makes and
 * frees about thirty jansson blocks (hashtable pairs, strings, objects and their bucket arrays),
 * all on the event loop's thread; fbr_slab_install_json() hands jansson fbr_slab_alloc and
 * fbr_slab_free (json_set_alloc_funcs), so those blocks come from free lists of one size class
 * each instead of the general malloc.
 *
 * Layout: one virtual region reserved at init (mmap, MAP_NORESERVE: a page costs memory once it
 * is touched) and cut into 64 KiB slabs.  A slab serves one class, the sizes rounded up to 16
 * bytes from 16 to 512 (32 classes); which class a slab serves is in a table indexed by
 * (address - region start) >> 16, so a block carries no header and a free finds its class from
 * its address alone.  A freed block goes on its class's list (linked through the block itself)
 * and is the next one handed out for that class.
 *
 * Contract:
 *   - single thread: every call on one thread (the loop's; the journal's syncer thread never
 *     touches jansson).  Nothing is locked.
 *   - fbr_slab_alloc(n): n above 512, or no slab left for n's class and nothing on its list, is
 *     served by malloc().  A block is aligned to 16 bytes; the memory is not cleared.
 *   - fbr_slab_free(p): p may be NULL, a block of fbr_slab_alloc, or any pointer malloc() gave
 *     (it goes to free()).  A block of the region must never be handed to free() itself: text
 *     jansson writes with json_dumps() is such a block when it is short, so the daemon's modules
 *     dump through fbr_json_dumps() (json.h), which returns memory for free().
 *   - the bound: memory kept is at most the region (FBR_SLAB_REGION for the daemon, 64 MiB).  A
 *     slab, once given to a class, stays with it and freed blocks stay on their class's list;
 *     nothing is returned to the system until fbr_slab_release().  At the bound (every slab
 *     given out) a class whose list is empty takes its blocks from malloc(), which frees them as
 *     usual, and fbr_slab_stats() counts them (fallbacks); nothing fails.
 *   - jansson must get its functions before it allocates anything, and every value made with
 *     them must be freed while they are installed (jansson's own rule for json_set_alloc_funcs):
 *     the daemon installs them first thing in main() and never uninstalls them.
 *   - AddressSanitizer builds keep working: a block is poisoned while on a list and unpoisoned
 *     for exactly the bytes asked for, so overruns into the class's rounding, uses after free
 *     and double frees (reported, then abort) are caught.  LeakSanitizer does not see the
 *     region, so the daemon leaves jansson on malloc in sanitizer builds (src/meson.build).
 */
#ifndef FIREBRIDGE_SLAB_H
#define FIREBRIDGE_SLAB_H

#include <stddef.h>

#define FBR_SLAB_REGION ((size_t)64 << 20) /* the daemon's region */
#define FBR_SLAB_SIZE ((size_t)64 << 10)   /* bytes per slab */
#define FBR_SLAB_MAX 512                   /* the biggest size class; larger goes to malloc */

/* Reserves the region: region_bytes rounded up to whole slabs, at least one.  FBR_OK, or
 * FBR_ERROR when the reservation fails (then every allocation goes to malloc) or when the
 * region already exists. */
int fbr_slab_init(size_t region_bytes);

/* A block of at least n bytes (new, for fbr_slab_free), or NULL only when malloc fails. */
void *fbr_slab_alloc(size_t n);

/* Frees p (a block of fbr_slab_alloc, a pointer of malloc, or NULL). */
void fbr_slab_free(void *p);

/* Reserves the region if needed and makes jansson allocate through it; FBR_OK, or FBR_ERROR
 * (jansson left on malloc) when the region cannot be reserved. */
int fbr_slab_install_json(size_t region_bytes);

struct fbr_slab_stats {
    size_t slabs, slabs_used; /* in the region; given to a class */
    size_t blocks_live;       /* blocks of the region handed out and not freed */
    size_t blocks_free;       /* on the free lists */
    size_t fallbacks;         /* small requests served by malloc because the region was full */
};
/* Walks the lists (for tests and reports, not the hot path). */
void fbr_slab_stats(struct fbr_slab_stats *st);

/* Gives the region back to the system (tests).  Only when nothing of it is in use any more and
 * jansson is not using it; afterwards fbr_slab_init may reserve a new one. */
void fbr_slab_release(void);

#endif
