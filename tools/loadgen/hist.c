/*
 * hist.c - the log-linear latency histogram of firebridge-loadgen (contract in hist.h).  The index
 * of a value is its shift (how far it must move right to fit in LG_HIST_SUB_BITS + 1 bits) times
 * LG_HIST_SUB plus those top bits; below 2 * LG_HIST_SUB the index is the value itself.
 */
#include "hist.h"

#include <math.h>
#include <string.h>

static unsigned bucket_of(uint64_t v)
{
    if (v < 2 * LG_HIST_SUB)
        return (unsigned)v;
    unsigned top = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = top - LG_HIST_SUB_BITS;
    return shift * LG_HIST_SUB + (unsigned)(v >> shift);
}

/* The midpoint of bucket i. */
static uint64_t bucket_mid(unsigned i)
{
    if (i < 2 * LG_HIST_SUB)
        return i;
    unsigned shift = i / LG_HIST_SUB - 1;
    uint64_t m = (uint64_t)(i - shift * LG_HIST_SUB);
    return (m << shift) + ((uint64_t)1 << shift) / 2;
}

void lg_hist_reset(struct lg_hist *h)
{
    memset(h, 0, sizeof(*h));
}

void lg_hist_add(struct lg_hist *h, uint64_t v)
{
    h->counts[bucket_of(v)]++;
    if (h->n == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->n++;
    h->sum += (double)v;
}

void lg_hist_merge(struct lg_hist *dst, const struct lg_hist *src)
{
    if (src->n == 0)
        return;
    for (unsigned i = 0; i < LG_HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
    if (dst->n == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->n += src->n;
    dst->sum += src->sum;
}

uint64_t lg_hist_percentile(const struct lg_hist *h, double p)
{
    if (h->n == 0)
        return 0;
    double r = ceil(p / 100.0 * (double)h->n);
    uint64_t rank = r < 1 ? 1 : r > (double)h->n ? h->n : (uint64_t)r;
    uint64_t seen = 0;
    for (unsigned i = 0; i < LG_HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = bucket_mid(i);
            return v < h->min ? h->min : v > h->max ? h->max : v;
        }
    }
    return h->max;
}

double lg_hist_mean(const struct lg_hist *h)
{
    return h->n ? h->sum / (double)h->n : 0;
}
