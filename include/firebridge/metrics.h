/*
 * metrics.h - a small registry of counters, gauges and histograms with bounded label sets,
 * rendered in the Prometheus text exposition format for GET /metrics.  Every module of the data
 * path (server, intake, rules, events, delivery) registers its series once and then bumps plain
 * integers on the hot path: no locking (one thread), no lookups after registration.
 */
#ifndef FIREBRIDGE_METRICS_H
#define FIREBRIDGE_METRICS_H

#include <stddef.h>
#include <stdint.h>

struct fbr_metrics;
struct fbr_histogram;

/* At most this many label combinations per metric name; further ones share one series whose
 * label values are "_other_", so a client cannot grow the registry without bound. */
#define FBR_METRICS_MAX_SERIES 64

struct fbr_metrics *fbr_metrics_new(void);
void fbr_metrics_free(struct fbr_metrics **m);

/*
 * Returns the counter for name{label_k="label_v"} (label_k NULL: no label), creating it at 0.
 * The pointer stays valid until fbr_metrics_free(); increment it directly.  Calling again with
 * the same name and labels returns the same pointer.  help is copied on first registration.
 * Names must be valid Prometheus names (the caller's constant); label values are escaped.
 */
uint64_t *fbr_metrics_counter(struct fbr_metrics *m, const char *name, const char *help,
                              const char *label_k, const char *label_v);
/* Two labels: name{k1="v1",k2="v2"}. */
uint64_t *fbr_metrics_counter2(struct fbr_metrics *m, const char *name, const char *help,
                               const char *k1, const char *v1, const char *k2, const char *v2);
/* A gauge: set or add to it directly. */
int64_t *fbr_metrics_gauge(struct fbr_metrics *m, const char *name, const char *help,
                           const char *label_k, const char *label_v);

/*
 * A histogram with the given upper bounds (ascending, copied; +Inf is implicit).  Same lifetime
 * and identity rules as counters.  Observe with fbr_histogram_observe().
 */
struct fbr_histogram *fbr_metrics_histogram(struct fbr_metrics *m, const char *name,
                                            const char *help, const char *label_k,
                                            const char *label_v, const double *bounds,
                                            size_t nbounds);
void fbr_histogram_observe(struct fbr_histogram *h, double value);

/*
 * A collector, for modules that keep their numbers in a struct of their own (delivery engine,
 * intake, incident table, add-on) or derive them when asked: when /metrics is rendered the
 * registry calls fn, which reports each sample through fbr_metrics_sample() and
 * fbr_metrics_sample_histogram(); the registry writes the exposition text (one # HELP / # TYPE
 * per run of samples of one name), so no module writes that format itself.  Collectors run
 * after the registered series, in the order added; arg is borrowed and must outlive the
 * registry or be removed with fbr_metrics_remove_collector().
 */
struct fbr_metrics_samples;
typedef void (*fbr_metrics_collector_fn)(struct fbr_metrics_samples *s, void *arg);
void fbr_metrics_add_collector(struct fbr_metrics *m, fbr_metrics_collector_fn fn, void *arg);
void fbr_metrics_remove_collector(struct fbr_metrics *m, fbr_metrics_collector_fn fn, void *arg);

enum fbr_metric_type { FBR_METRIC_COUNTER, FBR_METRIC_GAUGE };
/* One sample from a collector: name{label_k="label_v"} value (label_k NULL: no label).  help
 * is used for the first sample of a run of one name. */
void fbr_metrics_sample(struct fbr_metrics_samples *s, enum fbr_metric_type type,
                        const char *name, const char *help, const char *label_k,
                        const char *label_v, uint64_t value);
/* One histogram from a collector: buckets[nbounds + 1] non-cumulative counts for the upper
 * bounds (ascending; +Inf implicit), their sum and count. */
void fbr_metrics_sample_histogram(struct fbr_metrics_samples *s, const char *name,
                                  const char *help, const double *bounds, size_t nbounds,
                                  const uint64_t *buckets, double sum, uint64_t count);

/* Runs one collector on its own and appends its exposition text to out (tests, tools). */
struct evbuffer;
void fbr_metrics_write_collector(fbr_metrics_collector_fn fn, void *arg, struct evbuffer *out);

/* Renders every metric; returns a new heap string (caller frees) and its length in *len. */
char *fbr_metrics_render(const struct fbr_metrics *m, size_t *len);

#endif
