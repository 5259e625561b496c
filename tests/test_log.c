/* test_log.c - unit tests for log.c: level parsing, the URL masker that keeps secrets out, and the
 * capture of what libraries print on stderr (libevhtp's coloured lines) as plain log lines. */
#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "firebridge/log.h"
#include "testsupport.h"

static const struct {
    const char *in, *out;
} mask_cases[] = {
    {"https://h/v2/room/1/notification?auth_token=SECRET",
     "https://h/v2/room/1/notification?auth_token=***"},
    {"https://h/x?a=1&auth_token=S&b=2", "https://h/x?a=1&auth_token=***&b=2"},
    {"https://user:pw@h/x", "https://user:***@h/x"},
    {"http://h/x?signed_request=abc.def", "http://h/x?signed_request=***"},
    {"http://h/plain", "http://h/plain"},
    /* the same masker reads any text a line quotes (issue 8, item 7) */
    {"refused: Authorization: Bearer abc.def rest", "refused: Authorization: Bearer *** rest"},
    {"{\"auth_token\": \"t\\\"x\", \"room\": 1}", "{\"auth_token\": \"***\", \"room\": 1}"},
    {"x-api-key=K1 room_token=K2 routing_key=rk", "x-api-key=*** room_token=*** routing_key=rk"},
    {"echo GET /integrations/generic/20131114/alert/KEY/rk?a=1",
     "echo GET /integrations/generic/20131114/alert/***/rk?a=1"},
    {"tokens: bearer", "tokens: bearer"},
};

START_TEST(mask_url)
{
    char out[256];
    const char *in = mask_cases[_i].in;
    fbr_log_mask_url(in, strlen(in), out, sizeof(out));
    ck_assert_str_eq(out, mask_cases[_i].out);
}
END_TEST

START_TEST(level_parse)
{
    enum fbr_log_level l;
    ck_assert_int_eq(fbr_log_level_parse("debug", &l), 0);
    ck_assert_int_eq(l, FBR_LOG_DEBUG);
    ck_assert_int_eq(fbr_log_level_parse("verbose", &l), -1);
}
END_TEST

/* A message longer than a line is truncated, never written past the line buffer (ASan checks). */
/* Points stderr at a new temporary file (its name into path, a "/tmp/fbr-test-log-XXXXXX"
 * buffer); returns that file's fd and the saved stderr in *saved, for stderr_back(). */
static int stderr_to_file(char *path, int *saved)
{
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    *saved = dup(2);
    fflush(stderr);
    dup2(fd, 2);
    return fd;
}

/* Puts stderr back and returns the file it went to, read from its start (caller fcloses). */
static FILE *stderr_back(int fd, int saved)
{
    fflush(NULL);
    dup2(saved, 2);
    close(saved);
    FILE *f = fdopen(fd, "r");
    rewind(f);
    return f;
}

START_TEST(long_lines_are_clamped)
{
    static char big[6000];
    memset(big, '"', sizeof(big) - 1);
    char path[] = "/tmp/fbr-test-log-XXXXXX";
    int saved, fd = stderr_to_file(path, &saved);
    for (int fmt = 0; fmt < 2; fmt++) {
        fbr_log_setup(FBR_LOG_DEBUG, fmt ? FBR_LOG_JSON : FBR_LOG_TEXT);
        fbr_log(FBR_LOG_INFO, big, big, "%s", big);
        fbr_log(FBR_LOG_INFO, "r1", "testing", "%s", "short");
    }
    FILE *f = stderr_back(fd, saved);
    fbr_log_setup(FBR_LOG_INFO, FBR_LOG_TEXT);
    char line[8192];
    int lines = 0;
    while (fgets(line, sizeof(line), f)) {
        size_t n = strlen(line);
        ck_assert_uint_le(n, 4096);
        ck_assert_msg(line[n - 1] == '\n', "line %d (%zu bytes) ends with '%s'", lines, n,
                      line + (n > 20 ? n - 20 : 0));
        lines++;
    }
    ck_assert_int_eq(lines, 4);
    fclose(f);
    unlink(path);
}
END_TEST

/* Bytes a peer sent that are not UTF-8 (a request target "/h\xff\xfe", a character a length
 * limit cut) keep a JSON line valid JSON (U+FFFD each) and show as \xNN in a text line, as do
 * the C1 controls; valid UTF-8 passes as it is. */
START_TEST(invalid_utf8_escaped)
{
    char path[] = "/tmp/fbr-test-log-XXXXXX";
    int saved, fd = stderr_to_file(path, &saved);
    const char *msg = "404 /h\xff\xfez \xe2\x82 caf\xc3\xa9 \xc2\x9b" "2J end";
    fbr_log_setup(FBR_LOG_DEBUG, FBR_LOG_JSON);
    fbr_log(FBR_LOG_INFO, "r\xff", "act\xe2\x82", "%s", msg);
    fbr_log_setup(FBR_LOG_DEBUG, FBR_LOG_TEXT);
    fbr_log(FBR_LOG_INFO, "r1", NULL, "%s", msg);
    FILE *f = stderr_back(fd, saved);
    fbr_log_setup(FBR_LOG_INFO, FBR_LOG_TEXT);
    char line[4096];
    ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
    json_error_t err;
    json_t *j = json_loads(line, 0, &err);
    ck_assert_msg(j != NULL, "JSON line not valid JSON (%s): %s", err.text, line);
    ck_assert_str_eq(json_string_value(json_object_get(j, "msg")),
                     "404 /h\xef\xbf\xbd\xef\xbf\xbdz \xef\xbf\xbd caf\xc3\xa9 \xc2\x9b" "2J end");
    json_decref(j);
    ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
    ck_assert_msg(strstr(line, "404 /h\\xff\\xfez \\xe2\\x82 caf\xc3\xa9 \\xc2\\x9b" "2J end\n"),
                  "text line: %s", line);
    fclose(f);
    unlink(path);
}
END_TEST

/* What libraries print on stderr (libevhtp's coloured log_error) comes out as plain log lines. */
static const struct {
    const char *printed, *printed2; /* by a "library", in two writes, through stdio's stderr */
    const char *logged;             /* the line's text after the time; NULL: nothing at info */
} capture_cases[] = {
    {"[\x1b[1;31mERROR\x1b[0;39m] \x1b[33mevhtp.c:123 \x1b", "[39mboom\x1b[39m\n",
     "error library: [ERROR] evhtp.c:123 boom"},
    {"[warn] epoll: \tsome", "thing\r\n", "error library: [warn] epoll:  something"},
    {"\x1b[94mODDITY, resuming when not paused?!?\x1b[39m", "\n", NULL}, /* debug only */
    {"ctl\x01\x7f bytes", "\n", "error library: ctl bytes"},
};

START_TEST(library_stderr_captured)
{
    char path[] = "/tmp/fbr-test-log-XXXXXX";
    int saved, fd = stderr_to_file(path, &saved);
    fbr_log_setup(FBR_LOG_INFO, FBR_LOG_TEXT);
    ck_assert_int_eq(fbr_log_capture_stderr(), 0); /* again (CK_FORK=no): a no-op */
    fputs(capture_cases[_i].printed, stderr);
    fflush(stderr);
    fputs(capture_cases[_i].printed2, stderr);
    fbr_log(FBR_LOG_INFO, NULL, NULL, "own line");
    FILE *f = stderr_back(fd, saved);
    char text[4096];
    size_t n = fread(text, 1, sizeof(text) - 1, f);
    text[n] = '\0';
    fclose(f);
    unlink(path);
    ck_assert_msg(!strchr(text, 0x1b), "ESC in the log: %s", text);
    ck_assert_msg(strstr(text, "info  own line\n"), "own line missing: %s", text);
    if (capture_cases[_i].logged) {
        ck_assert_msg(strstr(text, capture_cases[_i].logged), "want '%s' in: %s",
                      capture_cases[_i].logged, text);
    } else {
        ck_assert_msg(!strstr(text, "library:"), "unexpected library line: %s", text);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, mask_url, 0, sizeof(mask_cases) / sizeof(mask_cases[0]));
    tcase_add_test(tc, level_parse);
    tcase_add_test(tc, long_lines_are_clamped);
    tcase_add_test(tc, invalid_utf8_escaped);
    tcase_add_loop_test(tc, library_stderr_captured, 0,
                        sizeof(capture_cases) / sizeof(capture_cases[0]));
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
