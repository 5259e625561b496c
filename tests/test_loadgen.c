/*
 * test_loadgen.c - unit tests of firebridge-loadgen's parts (tools/loadgen): the log-linear
 * histogram against exact order statistics of the same values (the 1 % bound), the ledger's
 * matching of crafted deliveries (lost, duplicate with the same and with another delivery id,
 * order violation per room, unknown alert), and the message the sender writes being the one the
 * sink parses back.
 */
#include <check.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hist.h"
#include "loadgen.h"
#include "testsupport.h"
#include "track.h"

static uint64_t rng_state = 88172645463325252ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v (n values). */
static uint64_t exact(const uint64_t *v, size_t n, double p)
{
    double r = ceil(p / 100.0 * (double)n);
    size_t rank = r < 1 ? 1 : r > (double)n ? n : (size_t)r;
    return v[rank - 1];
}

static void check_against_exact(uint64_t *v, size_t n)
{
    static struct lg_hist h;
    lg_hist_reset(&h);
    for (size_t i = 0; i < n; i++)
        lg_hist_add(&h, v[i]);
    qsort(v, n, sizeof(*v), cmp_u64);
    static const double ps[] = {0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100};
    for (size_t i = 0; i < sizeof(ps) / sizeof(ps[0]); i++) {
        uint64_t want = exact(v, n, ps[i]), got = lg_hist_percentile(&h, ps[i]);
        double err = fabs((double)got - (double)want) / (double)(want ? want : 1);
        ck_assert_msg(err <= 0.01, "p%g: histogram %" PRIu64 ", exact %" PRIu64 " (%.4f)", ps[i],
                      got, want, err);
    }
    ck_assert_uint_eq(h.n, n);
    ck_assert_uint_eq(h.min, v[0]);
    ck_assert_uint_eq(h.max, v[n - 1]);
}

START_TEST(hist_log_uniform_within_one_percent)
{
    /* latencies from 1 us to 100 s in ns, spread evenly over the decades */
    size_t n = 200000;
    uint64_t *v = malloc(n * sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = (uint64_t)pow(10, 3 + 8 * ((double)(rnd() >> 11) * 0x1.0p-53));
    check_against_exact(v, n);
    free(v);
}
END_TEST

START_TEST(hist_narrow_and_heavy_tail)
{
    /* most values in a narrow band (a loopback p50 near 60 us), a few huge outliers */
    size_t n = 100000;
    uint64_t *v = malloc(n * sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = i % 1000 == 0 ? 1000000000ull + rnd() % 5000000000ull : 55000 + rnd() % 10000;
    check_against_exact(v, n);
    free(v);
}
END_TEST

START_TEST(hist_small_values_exact_and_extremes)
{
    uint64_t v[300];
    for (size_t i = 0; i < 300; i++)
        v[i] = i; /* below 256 every value has its own bucket */
    static struct lg_hist h;
    lg_hist_reset(&h);
    for (size_t i = 0; i < 256; i++)
        lg_hist_add(&h, v[i]);
    for (uint64_t k = 1; k <= 256; k++)
        ck_assert_uint_eq(lg_hist_percentile(&h, 100.0 * (double)k / 256), k - 1);
    lg_hist_reset(&h);
    ck_assert_uint_eq(lg_hist_percentile(&h, 99), 0);
    lg_hist_add(&h, UINT64_MAX);
    ck_assert_uint_eq(lg_hist_percentile(&h, 50), UINT64_MAX);
    static struct lg_hist a, b;
    lg_hist_reset(&a);
    lg_hist_reset(&b);
    lg_hist_add(&a, 10);
    lg_hist_add(&b, 1000000);
    lg_hist_merge(&a, &b);
    ck_assert_uint_eq(a.n, 2);
    ck_assert_uint_eq(a.min, 10);
    ck_assert_uint_eq(lg_hist_percentile(&a, 100), 1000000);
}
END_TEST

/* The ledger, fed as the sender and the sink feed it. */
START_TEST(track_lost_duplicate_order)
{
    struct lg_track t;
    ck_assert_int_eq(lg_track_init(&t, 100, 3), 0);
    t.measure_from_ns = 1000;
    for (uint64_t s = 0; s < 12; s++)
        lg_track_sent(&t, s, s != 10); /* 10: a RECOVERY, no delivery expected */
    for (uint64_t s = 0; s < 12; s++)
        lg_track_answered(&t, s, s == 9 ? 503 : 200); /* 9 refused: never counted lost */
    ck_assert_uint_eq(t.expected, 10);

    /* room 0 gets 0, 2, then 1: one order violation; room 1 gets 3 then 5 in order */
    ck_assert_int_eq(lg_track_delivered(&t, 0, 0, "d0", 2, 5000, 2000), LG_MATCH_FIRST);
    ck_assert_int_eq(lg_track_delivered(&t, 2, 0, "d2", 2, 5000, 2000), LG_MATCH_FIRST);
    ck_assert_int_eq(lg_track_delivered(&t, 1, 0, "d1", 2, 5000, 2000), LG_MATCH_FIRST);
    ck_assert_int_eq(lg_track_delivered(&t, 3, 1, "d3", 2, 5000, 2000), LG_MATCH_FIRST);
    ck_assert_int_eq(lg_track_delivered(&t, 5, 1, "d5", 2, 5000, 2000), LG_MATCH_FIRST);
    ck_assert_uint_eq(t.order_violations, 1);
    /* 3 again with the same delivery id (a resend), 5 again with another (two deliveries) */
    ck_assert_int_eq(lg_track_delivered(&t, 3, 1, "d3", 2, 6000, 2000), LG_MATCH_DUPLICATE);
    ck_assert_int_eq(lg_track_delivered(&t, 5, 1, "x5", 2, 6000, 2000), LG_MATCH_DUPLICATE);
    ck_assert_uint_eq(t.duplicates, 2);
    ck_assert_uint_eq(t.dup_same_id, 1);
    /* a duplicate never counts as an order violation nor as delivered twice */
    ck_assert_uint_eq(t.order_violations, 1);
    /* never sent, and a room out of range */
    ck_assert_int_eq(lg_track_delivered(&t, 50, 0, NULL, 0, 6000, 2000), LG_MATCH_UNKNOWN);
    ck_assert_int_eq(lg_track_delivered(&t, 4, 3, NULL, 0, 6000, 2000), LG_MATCH_UNKNOWN);
    ck_assert_uint_eq(t.unknown, 2);
    /* 4, 6, 7 arrive (4 sent before the measurement: delivered, no latency recorded) */
    ck_assert_int_eq(lg_track_delivered(&t, 4, 2, NULL, 0, 6000, 500), LG_MATCH_FIRST);
    ck_assert_int_eq(lg_track_delivered(&t, 6, 2, NULL, 0, 6000, 2000), LG_MATCH_FIRST);
    ck_assert_int_eq(lg_track_delivered(&t, 7, 2, NULL, 0, 9000, 2000), LG_MATCH_FIRST);
    ck_assert_uint_eq(t.delivered, 8);
    ck_assert_uint_eq(t.e2e.n, 7);
    ck_assert_uint_eq(t.e2e.max, 7000);
    /* 8 and 11 accepted and expected but never delivered; 9 refused, 10 expects nothing */
    ck_assert_uint_eq(lg_track_lost(&t, 12), 2);
    ck_assert_uint_eq(lg_track_lost(&t, 9), 1); /* only alerts below the bound */
    ck_assert_int_eq(lg_track_delivered(&t, 11, 2, NULL, 0, 9000, 2000), LG_MATCH_FIRST);
    ck_assert_uint_eq(lg_track_lost(&t, 12), 1);
    lg_track_free(&t);
}
END_TEST

/* The requests byte for byte (the sender assembles them piece by piece), and no partial request
 * when the buffer is short. */
START_TEST(request_bytes)
{
    static char k0[] = "rk0";
    static char *keys[] = {k0};
    struct lg_opts o = {.rooms = 1000,
                        .routing_keys = keys,
                        .nrouting_keys = 1,
                        .connections = 1,
                        .api_key = "KEY",
                        .auth_token = "tok"};
    snprintf(o.host, sizeof(o.host), "h:1");
    char req[2048];
    int expects;
    const char *alert = "POST /integrations/generic/20131114/alert/KEY/rk0 HTTP/1.1\r\n"
                        "Host: h:1\r\nContent-Type: application/json\r\nContent-Length: 142\r\n\r\n"
                        "{\"message_type\":\"CRITICAL\",\"entity_id\":\"lg-abc-1234\","
                        "\"entity_display_name\":\"lg 1234 18446744073709551615\","
                        "\"room_id\":\"r234\",\"auth_token\":\"tok\"}";
    ck_assert_uint_eq(lg_request_build(&o, 0xabc, 1234, UINT64_MAX, req, sizeof(req), &expects),
                      strlen(alert));
    ck_assert_str_eq(req, alert);
    ck_assert_int_eq(expects, 1);
    /* a run id of 0 is one hex digit, as %x writes it */
    ck_assert_uint_gt(lg_request_build(&o, 0, 0, 0, req, sizeof(req), &expects), 0);
    ck_assert_ptr_nonnull(strstr(req, "\"entity_id\":\"lg-0-0\""));
    ck_assert_uint_gt(lg_request_build(&o, UINT64_MAX, 7, 0, req, sizeof(req), &expects), 0);
    ck_assert_ptr_nonnull(strstr(req, "\"entity_id\":\"lg-ffffffffffffffff-7\""));
    o.format = LG_FORMAT_NOTIFICATION;
    const char *note = "POST /v2/room/r5/notification?auth_token=tok HTTP/1.1\r\n"
                       "Host: h:1\r\nContent-Type: application/json\r\nContent-Length: 73\r\n\r\n"
                       "{\"color\":\"red\",\"message\":\"lg 5 99\",\"notify\":true,"
                       "\"message_format\":\"text\"}";
    ck_assert_uint_eq(lg_request_build(&o, 1, 5, 99, req, sizeof(req), &expects), strlen(note));
    ck_assert_str_eq(req, note);
    o.format = LG_FORMAT_ALERT;
    o.scenario = LG_SCENARIO_MIXED;
    const char *item = "POST /v1/events HTTP/1.1\r\nHost: h:1\r\nAuthorization: Bearer KEY\r\n"
                       "Content-Type: application/json\r\nContent-Length: 126\r\n\r\n"
                       "{\"event\":\"Incident-Triggered\",\"ALERT\":{\"entity_id\":\"lg-f-3\","
                       "\"entity_display_name\":\"lg 3 4\",\"room_id\":\"r3\","
                       "\"auth_token\":\"tok\"}}";
    ck_assert_uint_eq(lg_request_build(&o, 15, 3, 4, req, sizeof(req), &expects), strlen(item));
    ck_assert_str_eq(req, item);
    /* every length short of the whole request gives 0, never a cut request */
    size_t whole = strlen(item);
    for (size_t cap = 0; cap <= whole; cap++)
        ck_assert_uint_eq(lg_request_build(&o, 15, 3, 4, req, cap, &expects), 0);
    ck_assert_uint_eq(lg_request_build(&o, 15, 3, 4, req, whole + 1, &expects), whole);
}
END_TEST

/* What the sender writes is what the sink reads back, for every scenario and format. */
START_TEST(request_round_trip)
{
    static char ka[] = "a", kb[] = "b";
    static char *keys[] = {ka, kb};
    struct lg_opts o = {.rooms = 7,
                        .routing_keys = keys,
                        .nrouting_keys = 2,
                        .connections = 2,
                        .api_key = "KEY",
                        .auth_token = "tok"};
    snprintf(o.host, sizeof(o.host), "127.0.0.1");
    for (int sc = 0; sc < LG_NSCENARIOS; sc++) {
        for (int fmt = 0; fmt < 2; fmt++) {
            o.scenario = (enum lg_scenario)sc;
            o.format = (enum lg_format)fmt;
            for (uint64_t seq = 0; seq < 200; seq++) {
                char req[2048];
                int expects;
                size_t n =
                    lg_request_build(&o, 0xabc, seq, 123456789 + seq, req, sizeof(req), &expects);
                ck_assert_uint_gt(n, 0);
                const char *body = strstr(req, "\r\n\r\n") + 4;
                uint64_t s, t;
                uint32_t room;
                char path[128] = "/v2/room/r3/notification";
                ck_assert_int_eq(lg_sink_parse(path, strlen(path), body, n - (size_t)(body - req),
                                               7, &s, &t, &room),
                                 0);
                ck_assert_uint_eq(s, seq);
                ck_assert_uint_eq(t, 123456789 + seq);
                ck_assert_uint_eq(room, 3);
                if (fmt == LG_FORMAT_NOTIFICATION || sc != LG_SCENARIO_MIXED)
                    ck_assert_int_eq(expects, 1);
                else
                    ck_assert_int_eq(expects, seq % 4 == 0 || seq % 4 == 3);
            }
        }
    }
    uint64_t s, t;
    uint32_t room;
    ck_assert_int_eq(lg_sink_parse("/v2/room/r9/notification", 24, "{\"message\":\"lg 5 6\"}", 20,
                                   7, &s, &t, &room),
                     0);
    ck_assert_uint_eq(room, 7); /* r9 is beyond --rooms 7: the catch-all room */
    ck_assert_int_eq(lg_sink_parse("/v2/room/r1/notification", 24, "{\"message\":\"hello\"}", 19, 7,
                                   &s, &t, &room),
                     -1);
    ck_assert_int_eq(lg_sink_parse("/v2/room/r1/notification", 24, "lg 5", 4, 7, &s, &t, &room),
                     -1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("loadgen");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, hist_log_uniform_within_one_percent);
    tcase_add_test(tc, hist_narrow_and_heavy_tail);
    tcase_add_test(tc, hist_small_values_exact_and_extremes);
    tcase_add_test(tc, track_lost_duplicate_order);
    tcase_add_test(tc, request_bytes);
    tcase_add_test(tc, request_round_trip);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
