/*
 * test_slab.c - the size classes under jansson (src/slab.c): a round trip in every class, freed
 * blocks handed out again, big sizes and foreign pointers through malloc/free, the region's
 * bound (a full region falls back to malloc and nothing fails), and jansson trees read, dumped
 * and freed through it exactly as they are without it, every block given back.  In the ASan
 * build (test_slab under build-asan) also: blocks on a list are poisoned, a live block only up
 * to the bytes asked for, and a second free aborts.  LeakSanitizer checks the malloc side.
 */
#include <check.h>
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/common.h"
#include "firebridge/json.h"
#include "firebridge/slab.h"
#include "testsupport.h"

#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_ASAN
#include <sanitizer/asan_interface.h>
#endif

static struct fbr_slab_stats stats(void)
{
    struct fbr_slab_stats st;
    fbr_slab_stats(&st);
    return st;
}

/* The region's first block: allocated and freed at once, it marks where the region starts
 * (the first slab given out is the region's first). */
static char *region_start(void)
{
    char *p = fbr_slab_alloc(1);
    fbr_slab_free(p);
    return p;
}

static int in_region(const void *p, const char *start, size_t slabs)
{
    return (const char *)p >= start && (const char *)p < start + slabs * FBR_SLAB_SIZE;
}

START_TEST(round_trip_every_class)
{
    ck_assert_int_eq(fbr_slab_init(64 * FBR_SLAB_SIZE), FBR_OK);
    ck_assert_int_eq(fbr_slab_init(FBR_SLAB_SIZE), FBR_ERROR); /* one region at a time */
    char *start = region_start();
    void *held[FBR_SLAB_MAX + 1];
    for (size_t n = 1; n <= FBR_SLAB_MAX; n++) {
        unsigned char *p = fbr_slab_alloc(n);
        ck_assert_msg(in_region(p, start, 64), "size %zu outside the region", n);
        ck_assert_uint_eq((uintptr_t)p % 16, 0);
        memset(p, (int)(n & 0xff), n);
        held[n] = p;
    }
    /* every block keeps its bytes: none overlaps another */
    for (size_t n = 1; n <= FBR_SLAB_MAX; n++) {
        const unsigned char *p = held[n];
        for (size_t i = 0; i < n; i++)
            ck_assert_uint_eq(p[i], n & 0xff);
    }
    /* one slab per class of 16 bytes, 32 classes */
    ck_assert_uint_eq(stats().slabs_used, FBR_SLAB_MAX / 16);
    ck_assert_uint_eq(stats().blocks_live, FBR_SLAB_MAX);
    /* sizes of one class share its slab, consecutive blocks one class size apart */
    ck_assert_ptr_eq((char *)held[18], (char *)held[17] + 32);
    ck_assert_uint_eq(((char *)held[300] - start) / FBR_SLAB_SIZE,
                      ((char *)held[289] - start) / FBR_SLAB_SIZE);
    ck_assert_uint_ne(((char *)held[16] - start) / FBR_SLAB_SIZE,
                      ((char *)held[17] - start) / FBR_SLAB_SIZE);
    for (size_t n = 1; n <= FBR_SLAB_MAX; n++)
        fbr_slab_free(held[n]);
    struct fbr_slab_stats st = stats();
    ck_assert_uint_eq(st.blocks_live, 0);
    ck_assert_uint_eq(st.blocks_free, FBR_SLAB_MAX); /* region_start's block was held[1] */
    ck_assert_uint_eq(st.fallbacks, 0);
    fbr_slab_release();
}
END_TEST

START_TEST(freed_blocks_handed_out_again)
{
    ck_assert_int_eq(fbr_slab_init(8 * FBR_SLAB_SIZE), FBR_OK);
    void *a = fbr_slab_alloc(40), *b = fbr_slab_alloc(40);
    ck_assert_ptr_ne(a, b);
    fbr_slab_free(a);
    ck_assert_ptr_eq(fbr_slab_alloc(33), a); /* 33..48: the same class, the last freed first */
    fbr_slab_free(b);
    fbr_slab_free(a);
    ck_assert_ptr_eq(fbr_slab_alloc(48), a);
    ck_assert_ptr_eq(fbr_slab_alloc(48), b);
    void *c = fbr_slab_alloc(64); /* another class never takes them */
    ck_assert_ptr_ne(c, a);
    ck_assert_ptr_ne(c, b);
    fbr_slab_free(a);
    ck_assert_ptr_ne(fbr_slab_alloc(32), a);
    /* a steady churn uses no more blocks than are live at once */
    void *ring[50];
    for (int i = 0; i < 50; i++)
        ring[i] = fbr_slab_alloc(100);
    size_t used = stats().slabs_used;
    for (int round = 0; round < 20000; round++) {
        fbr_slab_free(ring[round % 50]);
        ring[round % 50] = fbr_slab_alloc(97 + round % 16);
    }
    ck_assert_uint_eq(stats().slabs_used, used);
    ck_assert_uint_eq(stats().blocks_free, 1); /* a, on the 48-byte list */
    fbr_slab_release();
}
END_TEST

START_TEST(big_sizes_and_foreign_pointers_through_malloc)
{
    ck_assert_int_eq(fbr_slab_init(4 * FBR_SLAB_SIZE), FBR_OK);
    char *start = region_start();
    size_t sizes[] = {FBR_SLAB_MAX + 1, 1000, 4096, FBR_SLAB_SIZE, (size_t)1 << 22};
    for (size_t i = 0; i < FBR_ARRAY_LEN(sizes); i++) {
        char *p = fbr_slab_alloc(sizes[i]);
        ck_assert_ptr_nonnull(p);
        ck_assert(!in_region(p, start, 4));
        memset(p, 'x', sizes[i]); /* ASan: the whole size is there */
        fbr_slab_free(p);         /* LeakSanitizer: it went back to free() */
    }
    ck_assert_uint_eq(stats().fallbacks, 0); /* big is not a fallback */
    /* what malloc gave, of any size, goes back to free */
    for (size_t n = 1; n <= 4096; n *= 2) {
        void *p = fbr_xmalloc(n);
        fbr_slab_free(p);
    }
    fbr_slab_free(NULL);
    ck_assert_uint_eq(stats().blocks_live, 0);
    fbr_slab_release();
    /* without a region everything is malloc's */
    void *p = fbr_slab_alloc(16);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq(stats().slabs, 0);
    fbr_slab_free(p);
}
END_TEST

START_TEST(full_region_falls_back_to_malloc)
{
    enum { SLABS = 2, PER = FBR_SLAB_SIZE / 16 };
    ck_assert_int_eq(fbr_slab_init(SLABS * FBR_SLAB_SIZE - 100), FBR_OK); /* rounded up */
    ck_assert_uint_eq(stats().slabs, SLABS);
    char *start = region_start();
    static void *small[2 * PER];
    for (size_t i = 0; i < 2 * PER; i++) { /* the 16-byte class takes both slabs */
        small[i] = fbr_slab_alloc(16);
        ck_assert(in_region(small[i], start, SLABS));
    }
    ck_assert_uint_eq(stats().slabs_used, SLABS);
    ck_assert_uint_eq(stats().fallbacks, 0);
    void *big = fbr_slab_alloc(16); /* its list is empty too */
    ck_assert(!in_region(big, start, SLABS));
    void *other = fbr_slab_alloc(200); /* no slab for a new class */
    ck_assert(!in_region(other, start, SLABS));
    ck_assert_uint_eq(stats().fallbacks, 2);
    memset(other, 'y', 200);
    fbr_slab_free(small[7]);
    ck_assert_ptr_eq(fbr_slab_alloc(9), small[7]); /* the list still serves its class */
    void *still = fbr_slab_alloc(200); /* a freed 16-byte block is not another class's */
    ck_assert(!in_region(still, start, SLABS));
    ck_assert_uint_eq(stats().fallbacks, 3);
    fbr_slab_free(big);
    fbr_slab_free(other);
    fbr_slab_free(still);
    for (size_t i = 0; i < 2 * PER; i++)
        fbr_slab_free(small[i]);
    ck_assert_uint_eq(stats().blocks_live, 0);
    ck_assert_uint_eq(stats().blocks_free, 2 * PER);
    fbr_slab_release();
}
END_TEST

/* Inputs for the jansson round trip: the JSON corpus's seeds, plus generated documents with
 * objects past several rehashes, long keys and strings (pairs and strings above the biggest
 * class) and a dump far bigger than any class. */
struct docs {
    char *text[64];
    size_t len[64], n;
};

static void add_doc(struct docs *d, char *text, size_t len)
{
    ck_assert_uint_lt(d->n, FBR_ARRAY_LEN(d->text));
    d->text[d->n] = text;
    d->len[d->n++] = len;
}

static void load_docs(struct docs *d)
{
    const char *root = getenv("FBR_SOURCE_ROOT");
    ck_assert_ptr_nonnull(root);
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/tests/fuzz/corpus/fuzz_json", root);
    DIR *dh = opendir(dir);
    ck_assert_ptr_nonnull(dh);
    for (struct dirent *e; (e = readdir(dh));) {
        if (e->d_name[0] == '.')
            continue;
        char path[8192];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        ck_assert_ptr_nonnull(f);
        char *buf = fbr_xmalloc(1 << 16);
        size_t n = fread(buf, 1, (1 << 16) - 1, f);
        fclose(f);
        add_doc(d, buf, n);
    }
    closedir(dh);
    ck_assert_uint_ge(d->n, 10);
    /* 3,000 members, keys of 1 to 600 bytes, values nested and up to 899 bytes long */
    static char filler[900];
    memset(filler, 'z', sizeof(filler) - 1);
    size_t cap = 8 << 20, n = 0;
    char *big = fbr_xmalloc(cap);
    n += (size_t)snprintf(big + n, cap - n, "{");
    for (int i = 0; i < 3000; i++) {
        int klen = 1 + (i * 37) % 600;
        n += (size_t)snprintf(big + n, cap - n, "%s\"k%d_", i ? "," : "", i);
        memset(big + n, 'a' + i % 26, (size_t)klen);
        n += (size_t)klen;
        n += (size_t)snprintf(big + n, cap - n,
                              "\":{\"i\":%d,\"r\":%d.5,\"s\":\"%.*s\",\"a\":[%d,true,null,\"\"]}",
                              i, i, (i * 13) % 900, filler, i);
    }
    n += (size_t)snprintf(big + n, cap - n, "}");
    add_doc(d, big, n);
    char *arr = fbr_xmalloc(1 << 16);
    size_t m = (size_t)snprintf(arr, 1 << 16, "[");
    for (int i = 0; i < 2000; i++)
        m += (size_t)snprintf(arr + m, (1 << 16) - m, "%s%d", i ? "," : "", i);
    m += (size_t)snprintf(arr + m, (1 << 16) - m, "]");
    add_doc(d, arr, m);
}

/* What one pass makes of each document, in malloc's memory: jansson's dump, fbr_json_loadb's
 * dump (sorted, indented), and a copy built by hand with json_object_set/json_array_append. */
struct outputs {
    char *dump[64], *ours[64], *copied[64];
};

static json_t *deep_copy_by_hand(json_t *v)
{
    if (json_is_object(v)) {
        json_t *o = json_object();
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m) json_object_set_new(o, k, deep_copy_by_hand(m));
        return o;
    }
    if (json_is_array(v)) {
        json_t *a = json_array();
        size_t i;
        json_t *m;
        json_array_foreach(v, i, m) json_array_append_new(a, deep_copy_by_hand(m));
        return a;
    }
    if (json_is_string(v))
        return json_stringn(json_string_value(v), json_string_length(v));
    return json_deep_copy(v);
}

static void one_pass(const struct docs *d, struct outputs *out, int jansson_frees_dumps)
{
    for (size_t i = 0; i < d->n; i++) {
        json_t *a = json_loadb(d->text[i], d->len[i], JSON_REJECT_DUPLICATES, NULL);
        json_t *b = fbr_json_loadb(d->text[i], d->len[i], NULL);
        out->dump[i] = out->ours[i] = out->copied[i] = NULL;
        if (!a) {
            ck_assert_ptr_null(b);
            continue;
        }
        ck_assert_ptr_nonnull(b);
        /* json_dumps's own text is a block of jansson's functions */
        char *s = json_dumps(a, JSON_COMPACT);
        out->dump[i] = fbr_xstrdup(s);
        if (jansson_frees_dumps)
            fbr_slab_free(s);
        else
            free(s);
        out->ours[i] = fbr_json_dumps(b, JSON_INDENT(2) | JSON_SORT_KEYS); /* for free() */
        json_t *c = deep_copy_by_hand(b);
        ck_assert(json_equal(a, c));
        out->copied[i] = fbr_json_dumps(c, JSON_COMPACT);
        json_decref(a);
        json_decref(b);
        json_decref(c);
    }
}

START_TEST(jansson_trees_same_through_it)
{
    struct docs d = {0};
    load_docs(&d);
    struct outputs plain, slab;
    one_pass(&d, &plain, 0); /* jansson on malloc */

    ck_assert_int_eq(fbr_slab_install_json(FBR_SLAB_REGION), FBR_OK);
    char *start = region_start();
    json_t *probe = json_object(); /* it is jansson's allocator now */
    json_object_set_new(probe, "key", json_string("value"));
    ck_assert(in_region(probe, start, FBR_SLAB_REGION / FBR_SLAB_SIZE));
    ck_assert_uint_ge(stats().blocks_live, 4); /* object, buckets, pair, string, its text */
    json_decref(probe);
    ck_assert_uint_eq(stats().blocks_live, 0);

    one_pass(&d, &slab, 1);
    struct fbr_slab_stats st = stats();
    ck_assert_uint_eq(st.blocks_live, 0); /* jansson gave every block back */
    ck_assert_uint_gt(st.blocks_free, 1000);
    ck_assert_uint_eq(st.fallbacks, 0);
    json_set_alloc_funcs(malloc, free);
    fbr_slab_release();

    for (size_t i = 0; i < d.n; i++) {
        ck_assert_msg((plain.dump[i] == NULL) == (slab.dump[i] == NULL), "doc %zu", i);
        if (!plain.dump[i])
            continue;
        ck_assert_str_eq(plain.dump[i], slab.dump[i]);
        ck_assert_str_eq(plain.ours[i], slab.ours[i]);
        ck_assert_str_eq(plain.copied[i], slab.copied[i]);
        ck_assert_str_eq(plain.copied[i], plain.dump[i]);
        free(plain.dump[i]);
        free(plain.ours[i]);
        free(plain.copied[i]);
        free(slab.dump[i]);
        free(slab.ours[i]);
        free(slab.copied[i]);
    }
    for (size_t i = 0; i < d.n; i++)
        free(d.text[i]);
}
END_TEST

#ifdef TEST_ASAN
START_TEST(asan_sees_the_blocks)
{
    ck_assert_int_eq(fbr_slab_init(4 * FBR_SLAB_SIZE), FBR_OK);
    char *p = fbr_slab_alloc(20); /* class 32 */
    ck_assert(!__asan_region_is_poisoned(p, 20));
    ck_assert(__asan_address_is_poisoned(p + 24)); /* past the request, inside the class */
    fbr_slab_free(p);
    ck_assert(__asan_address_is_poisoned(p));
    ck_assert(__asan_address_is_poisoned(p + 31));
    char *q = fbr_slab_alloc(32);
    ck_assert_ptr_eq(q, p);
    ck_assert(!__asan_region_is_poisoned(q, 32));
    char *r = fbr_slab_alloc(32); /* carved, never handed out before: was poisoned */
    ck_assert(!__asan_region_is_poisoned(r, 32));
    ck_assert(__asan_address_is_poisoned(r + 32));
    fbr_slab_free(q);
    fbr_slab_free(r);
    fbr_slab_release();
}
END_TEST

START_TEST(asan_second_free_aborts)
{
    ck_assert_int_eq(fbr_slab_init(4 * FBR_SLAB_SIZE), FBR_OK);
    void *p = fbr_slab_alloc(64);
    fbr_slab_free(p);
    fbr_slab_free(p);
}
END_TEST
#endif

int main(void)
{
    Suite *s = suite_create("slab");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, round_trip_every_class);
    tcase_add_test(tc, freed_blocks_handed_out_again);
    tcase_add_test(tc, big_sizes_and_foreign_pointers_through_malloc);
    tcase_add_test(tc, full_region_falls_back_to_malloc);
    tcase_add_test(tc, jansson_trees_same_through_it);
#ifdef TEST_ASAN
    tcase_add_test(tc, asan_sees_the_blocks);
    tcase_add_test_raise_signal(tc, asan_second_free_aborts, SIGABRT);
#endif
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
