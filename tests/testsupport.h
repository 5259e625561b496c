/*
 * testsupport.h - what every Check test program shares: running its suite.  Each tests/test_*.c
 * builds its Suite in main() (and keeps there whatever it alone needs first: SIGPIPE ignored,
 * scratch directories, certificates) and hands it to fbr_test_run(); a test that asserts on log
 * lines captures them with fbr_test_log_capture().  Linked into every test
 * through fbr_testsupport (top-level meson.build).
 */
#ifndef FBR_TEST_TESTSUPPORT_H
#define FBR_TEST_TESTSUPPORT_H

#include <check.h>

/*
 * Runs every case of s with a Check runner (CK_NORMAL output; CK_FORK, CK_RUN_SUITE,
 * CK_RUN_CASE and the other CK_* environment variables apply as usual), frees the runner and
 * the suite.  Returns EXIT_SUCCESS when no case failed, else EXIT_FAILURE: main()'s exit status.
 */
int fbr_test_run(Suite *s);

/* Points descriptor 2 (where the log writes, through stderr) at a new temporary file until
 * fbr_test_log_release(), which puts it back and returns every byte written meanwhile,
 * NUL-terminated (caller frees).  Not nested. */
void fbr_test_log_capture(void);
char *fbr_test_log_release(void);

#endif
