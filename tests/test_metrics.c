/*
 * test_metrics.c - unit tests for metrics.c, the registry every module of the data path bumps
 * and GET /metrics renders: identity of series, label escaping, the bound on label sets, and the
 * Prometheus text format of counters, gauges and histograms.
 */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/common.h"
#include "firebridge/metrics.h"
#include "testsupport.h"

START_TEST(counters_and_gauges)
{
    struct fbr_metrics *m = fbr_metrics_new();
    uint64_t *a = fbr_metrics_counter(m, "x_total", "Xs", "k", "a");
    uint64_t *b = fbr_metrics_counter(m, "x_total", NULL, "k", "b");
    ck_assert_ptr_ne(a, b);
    ck_assert_ptr_eq(a, fbr_metrics_counter(m, "x_total", NULL, "k", "a"));
    *a += 3;
    (*b)++;
    int64_t *g = fbr_metrics_gauge(m, "g", "a gauge", NULL, NULL);
    *g = -2;
    (*fbr_metrics_counter2(m, "y_total", "Ys", "e", "q\"\\\n", "s", "200"))++;
    size_t len;
    char *text = fbr_metrics_render(m, &len);
    ck_assert_uint_eq(len, strlen(text));
    ck_assert_ptr_nonnull(strstr(text, "# HELP x_total Xs\n# TYPE x_total counter\n"));
    ck_assert_ptr_nonnull(strstr(text, "x_total{k=\"a\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(text, "x_total{k=\"b\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "# TYPE g gauge\ng -2\n"));
    ck_assert_ptr_nonnull(strstr(text, "y_total{e=\"q\\\"\\\\\\n\",s=\"200\"} 1\n"));
    free(text);
    fbr_metrics_free(&m);
    ck_assert_ptr_null(m);
}
END_TEST

START_TEST(label_sets_are_bounded)
{
    struct fbr_metrics *m = fbr_metrics_new();
    char v[16];
    uint64_t *last = NULL;
    for (int i = 0; i < FBR_METRICS_MAX_SERIES + 50; i++) {
        snprintf(v, sizeof(v), "v%d", i);
        uint64_t *p = fbr_metrics_counter(m, "c_total", "c", "k", v);
        (*p)++;
        if (i >= FBR_METRICS_MAX_SERIES) {
            if (last)
                ck_assert_ptr_eq(p, last);
            last = p;
        }
    }
    ck_assert_uint_eq(*last, 50);
    size_t len;
    char *text = fbr_metrics_render(m, &len);
    ck_assert_ptr_nonnull(strstr(text, "c_total{k=\"_other_\"} 50\n"));
    ck_assert_ptr_null(strstr(text, "v100"));
    free(text);
    fbr_metrics_free(&m);
}
END_TEST

START_TEST(histogram)
{
    struct fbr_metrics *m = fbr_metrics_new();
    static const double bounds[] = {0.1, 1};
    struct fbr_histogram *h = fbr_metrics_histogram(m, "d_seconds", "d", "ep", "x", bounds, 2);
    fbr_histogram_observe(h, 0.05);
    fbr_histogram_observe(h, 0.5);
    fbr_histogram_observe(h, 7);
    size_t len;
    char *text = fbr_metrics_render(m, &len);
    ck_assert_ptr_nonnull(strstr(text, "# TYPE d_seconds histogram\n"));
    ck_assert_ptr_nonnull(strstr(text, "d_seconds_bucket{ep=\"x\",le=\"0.1\"} 1\n"));
    ck_assert_ptr_nonnull(strstr(text, "d_seconds_bucket{ep=\"x\",le=\"1\"} 2\n"));
    ck_assert_ptr_nonnull(strstr(text, "d_seconds_bucket{ep=\"x\",le=\"+Inf\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(text, "d_seconds_count{ep=\"x\"} 3\n"));
    ck_assert_ptr_nonnull(strstr(text, "d_seconds_sum{ep=\"x\"} 7.5"));
    free(text);
    fbr_metrics_free(&m);
}
END_TEST

/* A collector reports numbers; the registry writes the format, one # HELP / # TYPE per family. */
static void collect(struct fbr_metrics_samples *s, void *arg)
{
    const uint64_t *v = arg;
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "c_total", "C things", "k", "a\"b", v[0]);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, "c_total", "C things", "k", "c", v[1]);
    fbr_metrics_sample(s, FBR_METRIC_GAUGE, "g", NULL, NULL, NULL, v[2]);
    static const double bounds[] = {0.5, 2};
    static const uint64_t buckets[] = {1, 0, 2};
    fbr_metrics_sample_histogram(s, "h_seconds", "H", bounds, 2, buckets, 9.5, 3);
}

START_TEST(collectors_report_numbers)
{
    struct fbr_metrics *m = fbr_metrics_new();
    *fbr_metrics_counter(m, "first_total", "registered before", NULL, NULL) = 1;
    uint64_t v[3] = {7, 8, 9};
    fbr_metrics_add_collector(m, collect, v);
    size_t len;
    char *text = fbr_metrics_render(m, &len);
    const char *want = "# HELP first_total registered before\n# TYPE first_total counter\n"
                       "first_total 1\n"
                       "# HELP c_total C things\n# TYPE c_total counter\n"
                       "c_total{k=\"a\\\"b\"} 7\nc_total{k=\"c\"} 8\n"
                       "# HELP g g\n# TYPE g gauge\ng 9\n"
                       "# HELP h_seconds H\n# TYPE h_seconds histogram\n"
                       "h_seconds_bucket{le=\"0.5\"} 1\nh_seconds_bucket{le=\"2\"} 1\n"
                       "h_seconds_bucket{le=\"+Inf\"} 3\nh_seconds_sum 9.5\nh_seconds_count 3\n";
    ck_assert_str_eq(text, want);
    ck_assert_uint_eq(len, strlen(want));
    free(text);
    fbr_metrics_remove_collector(m, collect, v);
    text = fbr_metrics_render(m, &len);
    ck_assert_ptr_null(strstr(text, "c_total"));
    free(text);
    fbr_metrics_free(&m);
}
END_TEST

/* Only metrics.c writes the exposition format: no other source file of the library or the
 * daemon spells a # TYPE line (modules report numbers through the registry). */
START_TEST(one_writer_of_the_format)
{
    const char *root = getenv("FBR_SOURCE_ROOT");
    ck_assert_ptr_nonnull(root);
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/src", root);
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *de;
    int files = 0;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n < 3 || strcmp(de->d_name + n - 2, ".c") != 0 || strcmp(de->d_name, "metrics.c") == 0)
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        FILE *f = fopen(path, "r");
        ck_assert_ptr_nonnull(f);
        char line[4096];
        unsigned no = 0;
        while (fgets(line, sizeof(line), f)) {
            no++;
            ck_assert_msg(!strstr(line, "# TYPE ") && !strstr(line, "# HELP "),
                          "%s:%u writes exposition text itself", de->d_name, no);
        }
        fclose(f);
        files++;
    }
    closedir(d);
    ck_assert_int_gt(files, 10);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, counters_and_gauges);
    tcase_add_test(tc, label_sets_are_bounded);
    tcase_add_test(tc, histogram);
    tcase_add_test(tc, collectors_report_numbers);
    tcase_add_test(tc, one_writer_of_the_format);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
