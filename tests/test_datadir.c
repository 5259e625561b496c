/*
 * test_datadir.c - the data directory's owner (src/datadir.c): a missing directory is made with
 * its parents (mode 0700) and its lock file records the holder's pid; a second open of a
 * directory in use fails with one line naming the directory and that pid (flock(2) locks belong
 * to the open file, so the second open in this same process conflicts as a second daemon
 * would); once closed, the directory opens again.  The real binary against a second real
 * daemon and kill -9: test_hardening second_daemon_on_one_data_dir_refused.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon_util.h"
#include "firebridge/common.h"
#include "firebridge/datadir.h"
#include "testsupport.h"

START_TEST(one_holder_at_a_time)
{
    char dir[64], data[128], lock[192], err[512];
    dutil_tmpdir(dir, sizeof(dir), "fbr-datadir");
    snprintf(data, sizeof(data), "%s/a/b/data", dir);
    snprintf(lock, sizeof(lock), "%s/" FBR_DATADIR_LOCK_FILE, data);
    struct fbr_datadir *first = NULL, *second = NULL;
    ck_assert_int_eq(fbr_datadir_open(data, &first, err, sizeof(err)), FBR_OK);
    struct stat st;
    ck_assert_int_eq(stat(data, &st), 0);
    ck_assert_int_eq(st.st_mode & 0777, 0700);
    char *pid = dutil_slurp(lock, NULL);
    ck_assert_int_eq(atol(pid), (long)getpid());
    free(pid);

    ck_assert_int_eq(fbr_datadir_open(data, &second, err, sizeof(err)), FBR_ERROR);
    ck_assert_ptr_null(second);
    char want[512];
    snprintf(want, sizeof(want),
             "data directory %s is in use by another firebridge (pid %ld holds %s)", data,
             (long)getpid(), lock);
    ck_assert_msg(strstr(err, want) && !strchr(err, '\n'), "want \"%s\": %s", want, err);

    /* a lock file without a pid (a holder that could not write it) still refuses, without one */
    ck_assert_int_eq(truncate(lock, 0), 0);
    ck_assert_int_eq(fbr_datadir_open(data, &second, err, sizeof(err)), FBR_ERROR);
    ck_assert_msg(strstr(err, "is in use by another firebridge") && !strstr(err, "pid"), "%s",
                  err);

    fbr_datadir_close(&first);
    ck_assert_ptr_null(first);
    fbr_datadir_close(&first); /* NULL: nothing */
    ck_assert_int_eq(fbr_datadir_open(data, &second, err, sizeof(err)), FBR_OK);
    fbr_datadir_close(&second);
    dutil_rm_rf(dir);
}
END_TEST

/* A path that cannot be made a directory (a file on the way) says so with the path. */
START_TEST(directory_that_cannot_be_made)
{
    char dir[64], file[128], data[192], err[512];
    dutil_tmpdir(dir, sizeof(dir), "fbr-datadir");
    snprintf(file, sizeof(file), "%s/file", dir);
    dutil_write_file(file, "x");
    snprintf(data, sizeof(data), "%s/data", file);
    struct fbr_datadir *d = NULL;
    ck_assert_int_eq(fbr_datadir_open(data, &d, err, sizeof(err)), FBR_ERROR);
    ck_assert_ptr_null(d);
    ck_assert_msg(strstr(err, "cannot create the data directory") && strstr(err, data), "%s",
                  err);
    dutil_rm_rf(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("datadir");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, one_holder_at_a_time);
    tcase_add_test(tc, directory_that_cannot_be_made);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
