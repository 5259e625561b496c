/*
 * testsupport.c - the Check runner every test program's main() ends with (see testsupport.h).
 */
#include "testsupport.h"

#include <stdlib.h>

int fbr_test_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
