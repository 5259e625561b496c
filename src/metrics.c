/*
 * metrics.c - the registry behind metrics.h: families (name, help, type) each holding a bounded
 * list of series (rendered label string -> value).  Registration does the string work once so
 * that the data path only increments integers; rendering walks everything for GET /metrics.
 */
#include "firebridge/metrics.h"

#include <event2/buffer.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/common.h"

enum family_type { F_COUNTER, F_GAUGE, F_HISTOGRAM };

struct fbr_histogram {
    double *bounds;
    uint64_t *buckets; /* nbounds + 1, non-cumulative */
    size_t nbounds;
    double sum;
    uint64_t count;
};

struct series {
    char *labels; /* rendered `k="v",k2="v2"` or "" */
    union {
        uint64_t counter;
        int64_t gauge;
    } v;
    struct fbr_histogram hist;
};

struct family {
    char *name, *help;
    enum family_type type;
    struct series *series[FBR_METRICS_MAX_SERIES + 1]; /* last slot: the overflow series */
    size_t nseries;
};

struct collector {
    fbr_metrics_collector_fn fn;
    void *arg;
};

struct fbr_metrics {
    struct family **fams;
    size_t nfams;
    struct collector *collectors;
    size_t ncollectors;
};

struct out {
    char *buf;
    size_t len, cap;
};

static void outf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(struct out *o, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        o->cap = o->cap * 2 + (n > 0 ? (size_t)n : 0);
        o->buf = fbr_xrealloc(o->buf, o->cap);
    }
}

/* What a collector writes into: the text so far and the name of the last sample's family. */
struct fbr_metrics_samples {
    struct out *o;
    const char *last; /* borrowed from the collector's constant, NULL at the start */
};

static void family_head(struct fbr_metrics_samples *s, const char *name, const char *help,
                        const char *type)
{
    if (s->last && strcmp(s->last, name) == 0)
        return;
    outf(s->o, "# HELP %s %s\n# TYPE %s %s\n", name, help ? help : name, name, type);
    s->last = name;
}

static size_t put_label(char *buf, size_t pos, size_t cap, const char *k, const char *v);

void fbr_metrics_sample(struct fbr_metrics_samples *s, enum fbr_metric_type type,
                        const char *name, const char *help, const char *label_k,
                        const char *label_v, uint64_t value)
{
    family_head(s, name, help, type == FBR_METRIC_COUNTER ? "counter" : "gauge");
    if (!label_k) {
        outf(s->o, "%s %" PRIu64 "\n", name, value);
        return;
    }
    char labels[256];
    put_label(labels, 0, sizeof(labels), label_k, label_v);
    outf(s->o, "%s{%s} %" PRIu64 "\n", name, labels, value);
}

void fbr_metrics_sample_histogram(struct fbr_metrics_samples *s, const char *name,
                                  const char *help, const double *bounds, size_t nbounds,
                                  const uint64_t *buckets, double sum, uint64_t count)
{
    family_head(s, name, help, "histogram");
    uint64_t cum = 0;
    for (size_t i = 0; i <= nbounds; i++) {
        cum += buckets[i];
        if (i < nbounds)
            outf(s->o, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, bounds[i], cum);
        else
            outf(s->o, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
    }
    outf(s->o, "%s_sum %.17g\n%s_count %" PRIu64 "\n", name, sum, name, count);
}

static void run_collector(struct out *o, fbr_metrics_collector_fn fn, void *arg)
{
    struct fbr_metrics_samples s = {o, NULL};
    fn(&s, arg);
}

void fbr_metrics_write_collector(fbr_metrics_collector_fn fn, void *arg, struct evbuffer *out)
{
    struct out o = {fbr_xmalloc(1024), 0, 1024};
    o.buf[0] = '\0';
    run_collector(&o, fn, arg);
    evbuffer_add(out, o.buf, o.len);
    free(o.buf);
}

void fbr_metrics_add_collector(struct fbr_metrics *m, fbr_metrics_collector_fn fn, void *arg)
{
    m->collectors = fbr_xrealloc(m->collectors, (m->ncollectors + 1) * sizeof(*m->collectors));
    m->collectors[m->ncollectors++] = (struct collector){fn, arg};
}

void fbr_metrics_remove_collector(struct fbr_metrics *m, fbr_metrics_collector_fn fn, void *arg)
{
    for (size_t i = 0; i < m->ncollectors; i++) {
        if (m->collectors[i].fn == fn && m->collectors[i].arg == arg) {
            memmove(&m->collectors[i], &m->collectors[i + 1],
                    (m->ncollectors - i - 1) * sizeof(*m->collectors));
            m->ncollectors--;
            return;
        }
    }
}

struct fbr_metrics *fbr_metrics_new(void)
{
    return fbr_xcalloc(1, sizeof(struct fbr_metrics));
}

void fbr_metrics_free(struct fbr_metrics **pm)
{
    struct fbr_metrics *m = *pm;
    if (!m)
        return;
    for (size_t i = 0; i < m->nfams; i++) {
        struct family *f = m->fams[i];
        for (size_t k = 0; k <= FBR_METRICS_MAX_SERIES; k++) {
            struct series *s = f->series[k];
            if (!s)
                continue;
            free(s->labels);
            free(s->hist.bounds);
            free(s->hist.buckets);
            free(s);
        }
        free(f->name);
        free(f->help);
        free(f);
    }
    free(m->fams);
    free(m->collectors);
    free(m);
    *pm = NULL;
}

/* Appends k="escaped v" to buf. */
static size_t put_label(char *buf, size_t pos, size_t cap, const char *k, const char *v)
{
    if (pos && pos < cap)
        buf[pos++] = ',';
    pos += (size_t)snprintf(buf + pos, pos < cap ? cap - pos : 0, "%s=\"", k);
    for (const char *p = v; *p && pos + 3 < cap; p++) {
        if (*p == '\\' || *p == '"') {
            buf[pos++] = '\\';
            buf[pos++] = *p;
        } else if (*p == '\n') {
            buf[pos++] = '\\';
            buf[pos++] = 'n';
        } else {
            buf[pos++] = *p;
        }
    }
    if (pos + 1 < cap)
        buf[pos++] = '"';
    if (pos >= cap)
        pos = cap - 1;
    buf[pos] = '\0';
    return pos;
}

static struct series *lookup(struct fbr_metrics *m, enum family_type type, const char *name,
                             const char *help, const char *k1, const char *v1, const char *k2,
                             const char *v2)
{
    struct family *f = NULL;
    for (size_t i = 0; i < m->nfams; i++) {
        if (strcmp(m->fams[i]->name, name) == 0) {
            f = m->fams[i];
            break;
        }
    }
    if (!f) {
        f = fbr_xcalloc(1, sizeof(*f));
        f->name = fbr_xstrdup(name);
        f->help = fbr_xstrdup(help ? help : name);
        f->type = type;
        m->fams = fbr_xrealloc(m->fams, (m->nfams + 1) * sizeof(*m->fams));
        m->fams[m->nfams++] = f;
    }
    if (f->type != type)
        abort(); /* one name registered as two types: a programming error */

    char labels[512];
    size_t pos = 0;
    labels[0] = '\0';
    if (k1)
        pos = put_label(labels, pos, sizeof(labels), k1, v1 ? v1 : "");
    if (k2)
        pos = put_label(labels, pos, sizeof(labels), k2, v2 ? v2 : "");
    for (size_t i = 0; i < f->nseries; i++) {
        if (strcmp(f->series[i]->labels, labels) == 0)
            return f->series[i];
    }
    struct series **slot;
    if (f->nseries < FBR_METRICS_MAX_SERIES) {
        slot = &f->series[f->nseries++];
    } else {
        slot = &f->series[FBR_METRICS_MAX_SERIES];
        if (*slot)
            return *slot;
        pos = 0;
        if (k1)
            pos = put_label(labels, pos, sizeof(labels), k1, "_other_");
        if (k2)
            pos = put_label(labels, pos, sizeof(labels), k2, "_other_");
    }
    struct series *s = fbr_xcalloc(1, sizeof(*s));
    s->labels = fbr_xstrdup(labels);
    *slot = s;
    return s;
}

uint64_t *fbr_metrics_counter(struct fbr_metrics *m, const char *name, const char *help,
                              const char *label_k, const char *label_v)
{
    return &lookup(m, F_COUNTER, name, help, label_k, label_v, NULL, NULL)->v.counter;
}

uint64_t *fbr_metrics_counter2(struct fbr_metrics *m, const char *name, const char *help,
                               const char *k1, const char *v1, const char *k2, const char *v2)
{
    return &lookup(m, F_COUNTER, name, help, k1, v1, k2, v2)->v.counter;
}

int64_t *fbr_metrics_gauge(struct fbr_metrics *m, const char *name, const char *help,
                           const char *label_k, const char *label_v)
{
    return &lookup(m, F_GAUGE, name, help, label_k, label_v, NULL, NULL)->v.gauge;
}

struct fbr_histogram *fbr_metrics_histogram(struct fbr_metrics *m, const char *name,
                                            const char *help, const char *label_k,
                                            const char *label_v, const double *bounds,
                                            size_t nbounds)
{
    struct series *s = lookup(m, F_HISTOGRAM, name, help, label_k, label_v, NULL, NULL);
    if (!s->hist.buckets) {
        s->hist.nbounds = nbounds;
        s->hist.bounds = fbr_xmalloc(nbounds * sizeof(double));
        memcpy(s->hist.bounds, bounds, nbounds * sizeof(double));
        s->hist.buckets = fbr_xcalloc(nbounds + 1, sizeof(uint64_t));
    }
    return &s->hist;
}

void fbr_histogram_observe(struct fbr_histogram *h, double value)
{
    size_t i = 0;
    while (i < h->nbounds && value > h->bounds[i])
        i++;
    h->buckets[i]++;
    h->count++;
    h->sum += value;
}

static void render_hist(struct out *o, const struct family *f, const struct series *s)
{
    const struct fbr_histogram *h = &s->hist;
    const char *sep = s->labels[0] ? "," : "";
    uint64_t cum = 0;
    for (size_t i = 0; i <= h->nbounds; i++) {
        cum += h->buckets[i];
        if (i < h->nbounds)
            outf(o, "%s_bucket{%s%sle=\"%g\"} %" PRIu64 "\n", f->name, s->labels, sep,
                 h->bounds[i], cum);
        else
            outf(o, "%s_bucket{%s%sle=\"+Inf\"} %" PRIu64 "\n", f->name, s->labels, sep, cum);
    }
    const char *lb = s->labels[0] ? "{" : "", *rb = s->labels[0] ? "}" : "";
    outf(o, "%s_sum%s%s%s %.17g\n", f->name, lb, s->labels, rb, h->sum);
    outf(o, "%s_count%s%s%s %" PRIu64 "\n", f->name, lb, s->labels, rb, h->count);
}

char *fbr_metrics_render(const struct fbr_metrics *m, size_t *len)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};
    struct out o = {fbr_xmalloc(4096), 0, 4096};
    o.buf[0] = '\0';
    for (size_t i = 0; i < m->nfams; i++) {
        const struct family *f = m->fams[i];
        outf(&o, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, type_names[f->type]);
        for (size_t k = 0; k <= FBR_METRICS_MAX_SERIES; k++) {
            const struct series *s = f->series[k];
            if (!s)
                continue;
            if (f->type == F_HISTOGRAM) {
                render_hist(&o, f, s);
                continue;
            }
            const char *lb = s->labels[0] ? "{" : "", *rb = s->labels[0] ? "}" : "";
            if (f->type == F_COUNTER)
                outf(&o, "%s%s%s%s %" PRIu64 "\n", f->name, lb, s->labels, rb, s->v.counter);
            else
                outf(&o, "%s%s%s%s %" PRId64 "\n", f->name, lb, s->labels, rb, s->v.gauge);
        }
    }
    for (size_t i = 0; i < m->ncollectors; i++)
        run_collector(&o, m->collectors[i].fn, m->collectors[i].arg);
    *len = o.len;
    return o.buf;
}
