/*
 * hist.h - the load generator's latency histogram: log-linear buckets (128 linear sub-buckets per
 * power of two, as HdrHistogram does), fixed size, no allocation, O(1) record.  Values below 256
 * are exact; above, a bucket spans at most 1/128 of its lower bound and a percentile is reported
 * as its bucket's midpoint clamped to the recorded min/max, so a reported percentile is within
 * 1/256 (0.4 %) of the exact order statistic.  Values are nanoseconds in firebridge-loadgen but the
 * histogram does not care about the unit.
 */
#ifndef FBR_LOADGEN_HIST_H
#define FBR_LOADGEN_HIST_H

#include <stdint.h>

#define LG_HIST_SUB_BITS 7
#define LG_HIST_SUB (1u << LG_HIST_SUB_BITS)
/* shifts 0..56 (bit 63 is the top), each with sub-buckets LG_HIST_SUB..2*LG_HIST_SUB-1 */
#define LG_HIST_BUCKETS ((64 - LG_HIST_SUB_BITS) * LG_HIST_SUB + LG_HIST_SUB)

struct lg_hist {
    uint64_t n, min, max;
    double sum;
    uint64_t counts[LG_HIST_BUCKETS];
};

/* Empties h. */
void lg_hist_reset(struct lg_hist *h);
/* Records one value. */
void lg_hist_add(struct lg_hist *h, uint64_t v);
/* Adds every count of src to dst. */
void lg_hist_merge(struct lg_hist *dst, const struct lg_hist *src);
/*
 * The p-th percentile (0 < p <= 100) by nearest rank: the value of rank ceil(p/100 * n) in sorted
 * order, within the error bound above.  0 when h is empty.
 */
uint64_t lg_hist_percentile(const struct lg_hist *h, double p);
/* Mean of the recorded values (exact), 0 when empty. */
double lg_hist_mean(const struct lg_hist *h);

#endif
