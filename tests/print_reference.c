/*
 * print_reference.c - prints the Markdown reference of every flag and config key from the
 * configuration table; README.md's reference section is this output (test_config checks it).
 */
#include <stdio.h>

#include "firebridge/addon.h"
#include "firebridge/config.h"

int main(void)
{
    fbr_config_print_reference(stdout);
    printf("\nKeys of the `hipchat` and `oncall_api` sections:\n\n");
    fbr_addon_print_reference(stdout);
    return 0;
}
