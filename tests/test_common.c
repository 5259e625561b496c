/*
 * test_common.c - the loop's clock of src/common.c (fbr_clock_loop, fbr_clock_tick): with it on,
 * fbr_now_ms() and fbr_wall_ms() give one reading per tick; off, a reading per call; on for one
 * thread, another thread still reads the clocks.  Only lower bounds on time are asserted (a
 * sleep of 30 ms moves a clock by at least 29 whole milliseconds), so a slow machine cannot fail
 * them.
 */
#include <check.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include "firebridge/common.h"
#include "testsupport.h"

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

START_TEST(one_reading_per_tick)
{
    fbr_clock_loop(1);
    uint64_t m = fbr_now_ms(), w = fbr_wall_ms();
    sleep_ms(30);
    ck_assert_uint_eq(fbr_now_ms(), m); /* the same iteration: the same time */
    ck_assert_uint_eq(fbr_wall_ms(), w);
    fbr_clock_tick();
    uint64_t m2 = fbr_now_ms(), w2 = fbr_wall_ms();
    ck_assert_uint_ge(m2, m + 29);
    ck_assert_uint_ne(w2, w);
    sleep_ms(30);
    ck_assert_uint_eq(fbr_now_ms(), m2);
    fbr_clock_loop(0); /* off: every call reads */
    uint64_t m3 = fbr_now_ms();
    ck_assert_uint_ge(m3, m2 + 29);
    sleep_ms(30);
    ck_assert_uint_ge(fbr_now_ms(), m3 + 29);
}
END_TEST

static void *other_thread(void *arg)
{
    uint64_t *out = arg;
    out[0] = fbr_now_ms();
    sleep_ms(30);
    out[1] = fbr_now_ms();
    return NULL;
}

START_TEST(other_threads_read_the_clock)
{
    fbr_clock_loop(1);
    uint64_t m = fbr_now_ms();
    uint64_t seen[2];
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, other_thread, seen), 0);
    ck_assert_int_eq(pthread_join(t, NULL), 0);
    ck_assert_uint_ge(seen[1], seen[0] + 29); /* that thread's clock moved */
    ck_assert_uint_eq(fbr_now_ms(), m);       /* this one's did not: no tick */
    fbr_clock_loop(0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("common");
    TCase *tc = tcase_create("clock");
    tcase_add_test(tc, one_reading_per_tick);
    tcase_add_test(tc, other_threads_read_the_clock);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
