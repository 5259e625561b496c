/*
 * fuzz_json.c - differential libFuzzer target for the intake's JSON reader (src/json.c): every
 * input is read by fbr_json_loadb() and by jansson's json_loadb(JSON_REJECT_DUPLICATES), and the
 * target aborts when they disagree: one accepts what the other refuses, or both accept and the
 * trees differ (json_equal, which compares types, and the compact text, which shows member order
 * and the sign of a zero).  Seeds: tests/fuzz/corpus/fuzz_json (real alert and event bodies).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../json_same.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *why = "";
    if (!fbr_json_parsers_agree((const char *)data, size, &why)) {
        fprintf(stderr, "fuzz_json: %s\n", why);
        abort();
    }
    return 0;
}
