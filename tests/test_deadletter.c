/*
 * test_deadletter.c - deadletter.c: a dead letter written and read back gives the same request
 * (UTF-8 and binary bodies, headers without the engine's own), and fbr_delivery_queue(), the one
 * door for requests that did not come from a webhook, keeps the id and creation time it is given
 * when an unsendable request goes straight to the file.
 */
#include <check.h>
#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon_util.h"
#include "firebridge/deadletter.h"
#include "firebridge/delivery.h"
#include "firebridge/http.h"
#include "testsupport.h"

START_TEST(write_then_read)
{
    char dir[64], path[128], err[256];
    dutil_tmpdir(dir, sizeof(dir), "fbr-dl");
    snprintf(path, sizeof(path), "%s/dl.jsonl", dir);
    static const char head[] = "Authorization: Bearer x\r\nContent-Type: text/plain\r\n"
                               "X-Firebridge-Delivery: abc\r\n";
    static const char bin[] = {'a', (char)0xff, 0, 'b'};
    struct iovec body[2] = {{(void *)"hello ", 6}, {(void *)"world", 5}};
    struct iovec bbody[1] = {{(void *)bin, sizeof(bin)}};
    struct fbr_dead_letter dl = {.id = "abc", .method = "PUT", .url = "http://h/x", .url_len = 10,
                                 .head = head, .head_len = sizeof(head) - 1, .body = body,
                                 .nbody = 2, .reason = "http 400", .destination = "d",
                                 .attempts = 3, .created_ms = 1234};
    ck_assert_int_eq(fbr_dead_letter_append(path, &dl, err, sizeof(err)), FBR_OK);
    dl.body = bbody;
    dl.nbody = 1;
    ck_assert_int_eq(fbr_dead_letter_append(path, &dl, err, sizeof(err)), FBR_OK);
    json_t *lines = dutil_read_jsonl(path);
    ck_assert_uint_eq(json_array_size(lines), 2);
    ck_assert_str_eq(dutil_jstr(lines, 0, "body"), "hello world");
    ck_assert_ptr_nonnull(dutil_jstr(lines, 1, "body_base64"));
    for (size_t i = 0; i < 2; i++) {
        struct fbr_outreq o;
        const char *id;
        uint64_t created;
        ck_assert_int_eq(fbr_dead_letter_read(json_array_get(lines, i), &o, &id, &created),
                         FBR_OK);
        ck_assert_str_eq(id, "abc");
        ck_assert_uint_eq(created, 1234);
        ck_assert_uint_eq(o.method, FBR_M_PUT);
        ck_assert_str_eq(o.content_type, "text/plain");
        ck_assert_uint_eq(o.nheaders, 1); /* the engine's own headers are not kept */
        ck_assert_str_eq(o.header_names[0], "Authorization");
        char *b = fbr_render_strdup(&o.body);
        if (i == 0)
            ck_assert_str_eq(b, "hello world");
        else
            ck_assert_mem_eq(b, bin, sizeof(bin));
        free(b);
        fbr_outreq_free(&o);
    }
    /* not an entry: refused, nothing to free */
    json_t *bad = json_pack("{s:s,s:s}", "id", "x", "method", "BREW");
    struct fbr_outreq o;
    const char *id;
    uint64_t created;
    ck_assert_int_eq(fbr_dead_letter_read(bad, &o, &id, &created), FBR_INVALID);
    json_decref(bad);
    json_decref(lines);
    /* an unwritable file: an error naming it */
    ck_assert_int_eq(fbr_dead_letter_append("/nonexistent-dir/x", &dl, err, sizeof(err)),
                     FBR_ERROR);
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent-dir/x"));
    dutil_rm_rf(dir);
}
END_TEST

START_TEST(queue_keeps_given_id_and_time)
{
    struct event_base *base = event_base_new();
    char dir[64], err[256], id_out[40];
    dutil_tmpdir(dir, sizeof(dir), "fbr-dlq");
    struct fbr_delivery_opts opts;
    fbr_delivery_opts_init(&opts);
    opts.data_dir = dir;
    opts.max_pending = 1;
    struct fbr_delivery_engine *e;
    ck_assert_int_eq(fbr_delivery_engine_new(base, &opts, &e, err, sizeof(err)), FBR_OK);
    struct fbr_outreq o;
    fbr_outreq_init(&o);
    o.method = FBR_M_PATCH;
    fbr_render_set_copy(&o.url, "http://h:0/x", 12);
    fbr_render_set_copy(&o.body, "{}", 2);
    struct fbr_delivery_queue_opts qo = {.id = "replayed-1", .created_wall_ms = 42,
                                         .over_limit = 1, .id_out = id_out};
    ck_assert_int_eq(fbr_delivery_queue(e, &o, &qo), FBR_INVALID);
    fbr_outreq_free(&o);
    json_t *lines = dutil_read_jsonl(fbr_delivery_dead_letter_path(e));
    ck_assert_uint_eq(json_array_size(lines), 1);
    ck_assert_str_eq(dutil_jstr(lines, 0, "id"), "replayed-1");
    ck_assert_str_eq(dutil_jstr(lines, 0, "method"), "PATCH");
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(lines, 0), "created_ms")),
                     42);
    json_decref(lines);
    ck_assert(fbr_delivery_accepting(e));
    fbr_delivery_shutdown(e, "test");
    ck_assert(!fbr_delivery_accepting(e));
    fbr_delivery_engine_free(&e);
    event_base_loop(base, EVLOOP_NONBLOCK);
    event_base_free(base);
    dutil_rm_rf(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("deadletter");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, write_then_read);
    tcase_add_test(tc, queue_keeps_given_id_and_time);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
