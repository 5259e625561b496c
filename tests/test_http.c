/*
 * test_http.c - http.h's method table: every FBR_M_* bit has one name, names parse back to their
 * bit (exactly, or case-insensitively when asked), and an Allow list names every bit of a mask
 * in table order.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/common.h"
#include "firebridge/http.h"
#include "testsupport.h"

START_TEST(methods_round_trip)
{
    static const unsigned bits[] = {
#define FBR_X(name, i) FBR_M_##name,
        FBR_HTTP_METHOD_MAP(FBR_X)
#undef FBR_X
    };
    unsigned seen = 0;
    for (size_t i = 0; i < FBR_ARRAY_LEN(bits); i++) {
        const char *n = fbr_http_method_name(bits[i]);
        ck_assert_ptr_nonnull(n);
        ck_assert_uint_eq(fbr_http_method_parse(n, strlen(n), 0), bits[i]);
        ck_assert_uint_eq(bits[i] & seen, 0); /* one bit each */
        seen |= bits[i];
    }
    ck_assert_str_eq(fbr_http_method_name(FBR_M_POST), "POST");
    ck_assert_ptr_null(fbr_http_method_name(FBR_M_GET | FBR_M_POST));
    ck_assert_ptr_null(fbr_http_method_name(0));
    ck_assert_uint_eq(fbr_http_method_parse("post", 4, 0), 0);
    ck_assert_uint_eq(fbr_http_method_parse("post", 4, 1), FBR_M_POST);
    ck_assert_uint_eq(fbr_http_method_parse("POSTX", 5, 1), 0);
    ck_assert_uint_eq(fbr_http_method_parse("POS", 3, 1), 0);
    char allow[64];
    fbr_http_method_list(FBR_M_HEAD | FBR_M_GET, allow, sizeof(allow));
    ck_assert_str_eq(allow, "GET, HEAD");
    fbr_http_method_list(0, allow, sizeof(allow));
    ck_assert_str_eq(allow, "");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("http");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, methods_round_trip);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
