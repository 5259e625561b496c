/*
 * testsupport.c - the Check runner every test program's main() ends with, and the capture of
 * log lines for the tests that assert on them (see testsupport.h).
 */
#include "testsupport.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int fbr_test_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

static int log_fd = -1, log_saved = -1;

void fbr_test_log_capture(void)
{
    char path[] = "/tmp/fbr-test-log-XXXXXX";
    fflush(stderr);
    log_fd = mkstemp(path);
    ck_assert_int_ge(log_fd, 0);
    unlink(path);
    log_saved = dup(2);
    dup2(log_fd, 2);
}

char *fbr_test_log_release(void)
{
    fflush(stderr);
    dup2(log_saved, 2);
    close(log_saved);
    off_t len = lseek(log_fd, 0, SEEK_END);
    char *buf = calloc(1, (size_t)len + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(pread(log_fd, buf, (size_t)len, 0), len);
    close(log_fd);
    log_fd = log_saved = -1;
    return buf;
}
