/*
 * test_ratelimit.c - unit tests for ratelimit.c (the delivery engine's send limiter) and the
 * engine's pure helpers: the "never more than n in any window" guarantee under random arrivals,
 * holds from server headers, the rate parser and the full-jitter backoff (Retry-After parsing
 * is the client's: test_client).
 */
#include <check.h>
#include <stdlib.h>

#include "firebridge/delivery.h"
#include "firebridge/ratelimit.h"
#include "testsupport.h"

static const struct {
    uint32_t n;
    uint64_t window;
} window_cases[] = {{1, 1000}, {5, 2000}, {30, 60000}, {500, 300000}, {3, 7}};

/* Greedy sender under random arrivals: every send happens at the earliest allowed time; then no
 * half-open window (t - T, t] may hold more than n sends, */
START_TEST(window_guarantee)
{
    uint32_t n = window_cases[_i].n;
    uint64_t T = window_cases[_i].window;
    struct fbr_ratelimit rl;
    fbr_ratelimit_init(&rl, n, T);
    enum { SENDS = 3000 };
    uint64_t *sent = malloc(sizeof(uint64_t) * SENDS);
    uint64_t now = 1000;
    srand(42 + _i);
    for (int i = 0; i < SENDS; i++) {
        now += (uint64_t)(rand() % 3 == 0 ? rand() % (T / n + 2) : 0);
        uint64_t t = fbr_ratelimit_next(&rl, now);
        ck_assert_uint_ge(t, now);
        ck_assert_uint_eq(fbr_ratelimit_next(&rl, t), t);
        fbr_ratelimit_record(&rl, t);
        sent[i] = now = t;
    }
    for (int i = 0; i + (int)n < SENDS; i++)
        ck_assert_msg(sent[i + n] - sent[i] >= T, "%u sends within %llu ms at %d", n + 1,
                      (unsigned long long)T, i);
    free(sent);
    fbr_ratelimit_free(&rl);
}
END_TEST

START_TEST(burst_then_wait)
{
    struct fbr_ratelimit rl;
    fbr_ratelimit_init(&rl, 5, 2000);
    for (int i = 0; i < 5; i++) {
        ck_assert_uint_eq(fbr_ratelimit_next(&rl, 100), 100);
        fbr_ratelimit_record(&rl, 100);
    }
    ck_assert_uint_eq(fbr_ratelimit_next(&rl, 100), 2100);
    ck_assert_uint_eq(fbr_ratelimit_next(&rl, 2099), 2100);
    ck_assert_uint_eq(fbr_ratelimit_next(&rl, 2100), 2100);
    /* a hold from the server wins over the log, and only extends */
    fbr_ratelimit_hold(&rl, 5000);
    fbr_ratelimit_hold(&rl, 3000);
    ck_assert_uint_eq(fbr_ratelimit_next(&rl, 2100), 5000);
    /* shrinking the limit keeps the newest sends */
    fbr_ratelimit_set(&rl, 2, 2000);
    ck_assert_uint_eq(fbr_ratelimit_next(&rl, 5000), 5000);
    fbr_ratelimit_free(&rl);

    fbr_ratelimit_init(&rl, 0, 0); /* unlimited */
    for (int i = 0; i < 1000; i++) {
        ck_assert_uint_eq(fbr_ratelimit_next(&rl, 7), 7);
        fbr_ratelimit_record(&rl, 7);
    }
    ck_assert_ptr_null(rl.ring);
    fbr_ratelimit_free(&rl);
}
END_TEST

static const struct {
    const char *in;
    int rc;
    uint32_t n, secs;
} parse_cases[] = {
    {"30/60", 0, 30, 60}, {"5/2", 0, 5, 2},  {"0", 0, 0, 0},     {"0/0", 0, 0, 0}, {"5", -5, 0, 0},
    {"5/0", -5, 0, 0},    {"a/2", -5, 0, 0}, {"5/2x", -5, 0, 0}, {"", -5, 0, 0},   {"/3", -5, 0, 0},
};

START_TEST(rate_parse)
{
    uint32_t n = 99, secs = 99;
    int rc = fbr_ratelimit_parse(parse_cases[_i].in, &n, &secs);
    ck_assert_int_eq(rc, parse_cases[_i].rc);
    if (rc == 0) {
        ck_assert_uint_eq(n, parse_cases[_i].n);
        ck_assert_uint_eq(secs, parse_cases[_i].secs);
    }
}
END_TEST

/* The one "N/SECONDS" parser and its formatter (ratelimit.h): every accepted text formats back
 * to itself (canonical forms), and the 32-bit bounds hold. */
static const struct {
    const char *in;
    int rc;
    uint32_t n, secs;
} rate_cases[] = {
    {"30/60", 0, 30, 60},           {"0", 0, 0, 0},      {"0/0", 0, 0, 0},
    {"4294967295/1", 0, UINT32_MAX, 1}, {"4294967296/1", -5, 0, 0}, {"1/4294967296", -5, 0, 0},
    {"+5/2", -5, 0, 0},             {"5/-2", -5, 0, 0},  {" 5/2", -5, 0, 0},
    {"5/2 ", -5, 0, 0},             {"5//2", -5, 0, 0},  {"5/", -5, 0, 0},
};

START_TEST(rate_type)
{
    struct fbr_rate r = {99, 99};
    int rc = fbr_rate_parse(rate_cases[_i].in, &r);
    ck_assert_int_eq(rc, rate_cases[_i].rc);
    if (rc != FBR_OK) {
        ck_assert_uint_eq(r.n, 99); /* untouched */
        return;
    }
    ck_assert_uint_eq(r.n, rate_cases[_i].n);
    ck_assert_uint_eq(r.secs, rate_cases[_i].secs);
    char buf[32];
    struct fbr_rate back;
    ck_assert_int_eq(fbr_rate_parse(fbr_rate_format(r, buf, sizeof(buf)), &back), FBR_OK);
    ck_assert(back.n == r.n && back.secs == r.secs);
}
END_TEST

START_TEST(backoff)
{
    /* the cap doubles from the initial delay up to the maximum; draws stay inside [0, cap] */
    static const uint64_t caps[] = {500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000};
    for (unsigned f = 1; f <= FBR_ARRAY_LEN(caps); f++) {
        ck_assert_uint_eq(fbr_delivery_backoff_ms(500, 60000, f, caps[f - 1]), caps[f - 1]);
        ck_assert_uint_eq(fbr_delivery_backoff_ms(500, 60000, f, caps[f - 1] + 1), 0);
        ck_assert_uint_eq(fbr_delivery_backoff_ms(500, 60000, f, 0), 0);
        for (int k = 0; k < 200; k++) {
            uint64_t r = ((uint64_t)rand() << 32) ^ (uint64_t)rand();
            ck_assert_uint_le(fbr_delivery_backoff_ms(500, 60000, f, r), caps[f - 1]);
        }
    }
    ck_assert_uint_le(fbr_delivery_backoff_ms(500, 60000, 1000, UINT64_MAX), 60000);
}
END_TEST

START_TEST(state_names)
{
    ck_assert_str_eq(fbr_delivery_state_name(FBR_DS_QUEUED), "queued");
    ck_assert_str_eq(fbr_delivery_state_name(FBR_DS_WAITING_RATE), "waiting_rate");
    ck_assert_str_eq(fbr_delivery_state_name(FBR_DS_DEAD), "dead");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("ratelimit");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, window_guarantee, 0, FBR_ARRAY_LEN(window_cases));
    tcase_add_test(tc, burst_then_wait);
    tcase_add_loop_test(tc, rate_parse, 0, FBR_ARRAY_LEN(parse_cases));
    tcase_add_loop_test(tc, rate_type, 0, FBR_ARRAY_LEN(rate_cases));
    tcase_add_test(tc, backoff);
    tcase_add_test(tc, state_names);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
