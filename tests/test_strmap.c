/*
 * test_strmap.c - the string-keyed hash map (src/strmap.c) that the delivery side of the data
 * path keys its connection pools, destinations and token buckets by: put, replace, get and
 * delete against a model under random operations across many growths, keys compared by length
 * (a prefix or an embedded NUL is another key), the walk visiting each entry once, and clear.
 */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/strmap.h"
#include "testsupport.h"

START_TEST(put_get_replace_del)
{
    struct fbr_strmap m;
    fbr_strmap_init(&m);
    int a = 1, b = 2, c = 3;
    ck_assert_ptr_null(fbr_strmap_get(&m, "x", 1)); /* empty map, no buckets yet */
    ck_assert_ptr_null(fbr_strmap_del(&m, "x", 1));
    fbr_strmap_put(&m, "room/1", 6, &a);
    fbr_strmap_put(&m, "room/10", 7, &b);
    ck_assert_uint_eq(m.count, 2);
    ck_assert_ptr_eq(fbr_strmap_get(&m, "room/1", 6), &a);
    ck_assert_ptr_eq(fbr_strmap_get(&m, "room/10", 7), &b);
    ck_assert_ptr_eq(fbr_strmap_get(&m, "room/10", 6), &a); /* the length decides */
    ck_assert_ptr_null(fbr_strmap_get(&m, "room/", 5));
    fbr_strmap_put(&m, "room/1", 6, &c); /* replaces, no second entry */
    ck_assert_uint_eq(m.count, 2);
    ck_assert_ptr_eq(fbr_strmap_get(&m, "room/1", 6), &c);
    ck_assert_ptr_eq(fbr_strmap_del(&m, "room/1", 6), &c);
    ck_assert_ptr_null(fbr_strmap_del(&m, "room/1", 6));
    ck_assert_ptr_null(fbr_strmap_get(&m, "room/1", 6));
    ck_assert_ptr_eq(fbr_strmap_get(&m, "room/10", 7), &b);
    ck_assert_uint_eq(m.count, 1);
    /* keys with a NUL inside are kept whole */
    fbr_strmap_put(&m, "a\0b", 3, &a);
    fbr_strmap_put(&m, "a\0c", 3, &b);
    ck_assert_ptr_eq(fbr_strmap_get(&m, "a\0b", 3), &a);
    ck_assert_ptr_eq(fbr_strmap_get(&m, "a\0c", 3), &b);
    ck_assert_ptr_null(fbr_strmap_get(&m, "a", 1));
    fbr_strmap_clear(&m);
    ck_assert_uint_eq(m.count, 0);
    ck_assert_ptr_null(fbr_strmap_get(&m, "room/10", 7));
    fbr_strmap_put(&m, "again", 5, &a); /* usable after clear */
    ck_assert_ptr_eq(fbr_strmap_get(&m, "again", 5), &a);
    fbr_strmap_clear(&m);
}
END_TEST

struct seen {
    size_t n;
    unsigned char *hit; /* per model slot */
    size_t nslots;
    int twice;
};

static void visit(const char *key, void *value, void *arg)
{
    (void)key, (void)value;
    ((struct seen *)arg)->n++;
}

#define SLOTS 5000
static uintptr_t vals[SLOTS];

static void visit_slots(const char *key, void *value, void *arg)
{
    struct seen *s = arg;
    size_t slot = (size_t)((uintptr_t *)value - vals);
    ck_assert_uint_lt(slot, SLOTS);
    char want[32];
    snprintf(want, sizeof(want), "k%zu", slot);
    ck_assert_str_eq(key, want); /* the stored key, NUL-terminated */
    if (s->hit[slot])
        s->twice = 1;
    s->hit[slot] = 1;
    s->n++;
}

/* Random puts and deletes over 5,000 keys (the table grows many times) against an array model;
 * after every 1,000 steps every key answers as the model says and the walk sees each live entry
 * exactly once. */
START_TEST(random_against_model)
{
    struct fbr_strmap m;
    fbr_strmap_init(&m);
    static int live[SLOTS];
    memset(live, 0, sizeof(live));
    size_t count = 0;
    unsigned seed = 12345;
    unsigned char hit[SLOTS];
    for (int step = 1; step <= 40000; step++) {
        seed = seed * 1103515245u + 12345u;
        size_t slot = (seed >> 8) % SLOTS;
        char key[32];
        int klen = snprintf(key, sizeof(key), "k%zu", slot);
        if ((seed >> 4) % 3) {
            fbr_strmap_put(&m, key, (size_t)klen, &vals[slot]);
            count += !live[slot];
            live[slot] = 1;
        } else {
            void *v = fbr_strmap_del(&m, key, (size_t)klen);
            ck_assert_ptr_eq(v, live[slot] ? &vals[slot] : NULL);
            count -= live[slot] != 0;
            live[slot] = 0;
        }
        ck_assert_uint_eq(m.count, count);
        if (step > 5000 ? step % 1000 : step % 61) /* more often while the map is small */
            continue;
        size_t wrong = 0; /* one assertion per sweep: Check's cost per assertion is a write */
        for (size_t i = 0; i < SLOTS; i++) {
            klen = snprintf(key, sizeof(key), "k%zu", i);
            wrong += fbr_strmap_get(&m, key, (size_t)klen) != (live[i] ? &vals[i] : NULL);
        }
        ck_assert_msg(wrong == 0, "step %d: %zu keys read back wrong", step, wrong);
        memset(hit, 0, sizeof(hit));
        struct seen s = {0, hit, SLOTS, 0};
        fbr_strmap_each(&m, visit_slots, &s);
        ck_assert_uint_eq(s.n, count);
        ck_assert_int_eq(s.twice, 0);
    }
    ck_assert_uint_gt(m.nslots, 64); /* it did grow */
    ck_assert_int_eq(m.nslots & (m.nslots - 1), 0);
    struct seen s = {0};
    fbr_strmap_each(&m, visit, &s);
    ck_assert_uint_eq(s.n, count);
    fbr_strmap_clear(&m);
}
END_TEST

/* A map that held many keys gives its slots back as they are deleted (the delivery engine's
 * destinations after a burst of distinct rooms): the survivors still answer at every size. */
START_TEST(shrinks_after_deletes)
{
    enum { N = 20000, KEEP = 10 };
    struct fbr_strmap m;
    fbr_strmap_init(&m);
    static uintptr_t v[N];
    char key[32];
    for (size_t i = 0; i < N; i++) {
        int klen = snprintf(key, sizeof(key), "room/%zu", i);
        fbr_strmap_put(&m, key, (size_t)klen, &v[i]);
    }
    ck_assert_uint_ge(m.nslots, 2 * N);
    size_t wrong = 0;
    for (size_t i = KEEP; i < N; i++) {
        int klen = snprintf(key, sizeof(key), "room/%zu", i);
        wrong += fbr_strmap_del(&m, key, (size_t)klen) != &v[i];
        if (i % 997 == 0) /* the survivors across every halving */
            for (size_t k = 0; k < KEEP; k++) {
                klen = snprintf(key, sizeof(key), "room/%zu", k);
                wrong += fbr_strmap_get(&m, key, (size_t)klen) != &v[k];
            }
    }
    ck_assert_uint_eq(wrong, 0);
    ck_assert_uint_eq(m.count, KEEP);
    ck_assert_uint_le(m.nslots, 8 * KEEP); /* not the 32,768 slots of the peak */
    for (size_t k = 0; k < KEEP; k++) {
        int klen = snprintf(key, sizeof(key), "room/%zu", k);
        ck_assert_ptr_eq(fbr_strmap_get(&m, key, (size_t)klen), &v[k]);
        ck_assert_ptr_eq(fbr_strmap_del(&m, key, (size_t)klen), &v[k]);
    }
    ck_assert_uint_eq(m.nslots, 16);
    fbr_strmap_put(&m, "again", 5, &v[0]); /* and it grows again */
    ck_assert_ptr_eq(fbr_strmap_get(&m, "again", 5), &v[0]);
    fbr_strmap_clear(&m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("strmap");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60); /* the model sweeps: about 2 s here, more under valgrind */
    tcase_add_test(tc, put_get_replace_del);
    tcase_add_test(tc, random_against_model);
    tcase_add_test(tc, shrinks_after_deletes);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
