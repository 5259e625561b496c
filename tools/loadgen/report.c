/*
 * report.c - what firebridge-loadgen prints: one progress line per second on stderr while it runs
 * (rates over the last second, intake p99 so far, the daemon's delivery queue depth), then a table
 * and, with --json, one JSON object on stdout.  Latencies are in milliseconds.
 */
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "firebridge/log.h"
#include "loadgen.h"

static const char *const scenario_names[] = {
#define LG_X(name, text) text,
    LG_SCENARIO_MAP(LG_X)
#undef LG_X
};

static const char *const status_names[] = {
#define LG_X(name, text) text,
    LG_STATUS_MAP(LG_X)
#undef LG_X
};

uint64_t lg_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

enum lg_status lg_status_class(int status)
{
    return status >= 200 && status < 300   ? LG_S2XX
           : status == 429                 ? LG_S429
           : status >= 400 && status < 500 ? LG_S4XX
           : status == 503                 ? LG_S503
           : status >= 500 && status < 600 ? LG_S5XX
                                           : LG_ERR;
}

const char *lg_status_name(enum lg_status s)
{
    return status_names[s];
}

const char *lg_scenario_name(enum lg_scenario s)
{
    return scenario_names[s];
}

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

void lg_report_rss(struct lg *lg)
{
    if (!lg->o.pid)
        return;
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%ld/status", (long)lg->o.pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    while (fgets(line, sizeof(line), f)) {
        long kb;
        if (sscanf(line, "VmHWM: %ld", &kb) == 1 && kb > lg->peak_rss_kb)
            lg->peak_rss_kb = kb;
        if (sscanf(line, "VmRSS: %ld", &kb) == 1) {
            lg->rss_kb = kb;
            if (kb > lg->peak_rss_kb)
                lg->peak_rss_kb = kb;
        }
    }
    fclose(f);
}

void lg_report_progress(struct lg *lg)
{
    static uint64_t last_sent, last_ok, last_delivered, last_ns;
    uint64_t now = lg_now_ns();
    double dt = last_ns ? (double)(now - last_ns) / 1e9 : 1;
    uint64_t ok = lg->status[LG_S2XX];
    char queue[32] = "-";
    if (lg->queue_depth >= 0)
        snprintf(queue, sizeof(queue), "%lld", lg->queue_depth);
    if (!lg->o.quiet)
        fprintf(fbr_log_stream(),
                "%6.1fs%s sent/s %8.0f  2xx/s %8.0f  delivered/s %8.0f  intake p99 %8.3f ms"
                "  queue %s  undelivered %" PRIu64 "\n",
                (double)(now - lg->start_ns) / 1e9, now < lg->measure_ns ? " (warm-up)" : "",
                (double)(lg->next_seq - last_sent) / dt, (double)(ok - last_ok) / dt,
                (double)(lg->track.delivered - last_delivered) / dt,
                ms(lg_hist_percentile(&lg->intake, 99)), queue,
                lg->track.expected > lg->track.delivered ? lg->track.expected - lg->track.delivered
                                                         : 0);
    last_sent = lg->next_seq;
    last_ok = ok;
    last_delivered = lg->track.delivered;
    last_ns = now;
}

static json_t *percentiles(const struct lg_hist *h)
{
    return json_pack("{s:I,s:f,s:f,s:f,s:f,s:f,s:f,s:f}", "count", (json_int_t)h->n, "mean_ms",
                     lg_hist_mean(h) / 1e6, "p50_ms", ms(lg_hist_percentile(h, 50)), "p90_ms",
                     ms(lg_hist_percentile(h, 90)), "p99_ms", ms(lg_hist_percentile(h, 99)),
                     "p99_9_ms", ms(lg_hist_percentile(h, 99.9)), "max_ms", ms(h->max), "min_ms",
                     ms(h->min));
}

static json_t *statuses(const uint64_t *st)
{
    json_t *o = json_object();
    for (int i = 0; i < LG_NSTATUS; i++)
        json_object_set_new(o, lg_status_name((enum lg_status)i), json_integer((json_int_t)st[i]));
    return o;
}

static void table_row(FILE *out, const char *name, const struct lg_hist *h)
{
    fprintf(out, "  %-10s %9" PRIu64 " %9.3f %9.3f %9.3f %9.3f %9.3f\n", name, h->n,
            ms(lg_hist_percentile(h, 50)), ms(lg_hist_percentile(h, 90)),
            ms(lg_hist_percentile(h, 99)), ms(lg_hist_percentile(h, 99.9)), ms(h->max));
}

void lg_report_final(struct lg *lg, uint64_t lost)
{
    const struct lg_opts *o = &lg->o;
    double secs = (double)(lg->stop_ns - lg->measure_ns) / 1e9;
    double intake_rate = (double)lg->answered_window / secs;
    double delivered_rate = (double)lg->delivered_window / secs;
    const struct lg_track *t = &lg->track;
    FILE *out = o->json ? fbr_log_stream() : stdout;
    fprintf(out,
            "firebridge-loadgen: %s, %s, %.1f s measured after %.1f s warm-up, %" PRIu32
            " connections, %" PRIu32 " rooms\n",
            lg_scenario_name(o->scenario), o->rate > 0 ? "open loop" : "closed loop", secs,
            o->warmup_s, o->connections, o->rooms);
    if (o->rate > 0)
        fprintf(out,
                "  target rate %.0f/s; most alerts overdue at once: %" PRIu64
                ", due but never sent: %" PRIu64 "\n",
                o->rate, lg->backlog_max, lg->unsent_due);
    fprintf(out, "  %-10s %9s %9s %9s %9s %9s %9s\n", "latency", "count", "p50 ms", "p90 ms",
            "p99 ms", "p99.9 ms", "max ms");
    table_row(out, "intake", &lg->intake);
    table_row(out, "end-to-end", &t->e2e);
    if (o->rate > 0) {
        table_row(out, "send lag", &lg->send_lag);
        table_row(out, "from send", &lg->from_send);
    }
    fprintf(out,
            "  sent %" PRIu64 ", answered %" PRIu64 " (%.0f/s in the window), unanswered %" PRIu64
            ":",
            lg->next_seq, lg->answered, intake_rate, lg->next_seq - lg->answered);
    for (int i = 0; i < LG_NSTATUS; i++)
        fprintf(out, " %s %" PRIu64, lg_status_name((enum lg_status)i), lg->status[i]);
    fprintf(out, "\n  sink: delivered %" PRIu64 " (%.0f/s in the window):", t->delivered,
            delivered_rate);
    for (int i = 0; i < LG_NSTATUS - 1; i++)
        fprintf(out, " %s %" PRIu64, lg_status_name((enum lg_status)i), lg->sink_status[i]);
    fprintf(out,
            "\n  expected %" PRIu64 ", lost %" PRIu64 ", duplicates %" PRIu64 " (same id %" PRIu64
            "), order violations %" PRIu64 ", unmatched %" PRIu64 "\n",
            t->expected, lost, t->duplicates, t->dup_same_id, t->order_violations, t->unknown);
    if (o->pid)
        fprintf(out, "  daemon pid %ld: peak RSS %ld kB, RSS at the end %ld kB\n", (long)o->pid,
                lg->peak_rss_kb, lg->rss_kb);
    if (!o->json)
        return;
    json_t *j = json_pack(
        "{s:s,s:s,s:f,s:f,s:f,s:I,s:I,s:I,s:I,s:f,s:f,s:o,s:o,s:o,s:o,s:I,s:I,s:I,s:I,s:I,s:I,"
        "s:I}",
        "scenario", lg_scenario_name(o->scenario), "mode", o->rate > 0 ? "open" : "closed", "rate",
        o->rate, "duration_s", secs, "warmup_s", o->warmup_s, "connections",
        (json_int_t)o->connections, "rooms", (json_int_t)o->rooms, "sent", (json_int_t)lg->next_seq,
        "answered", (json_int_t)lg->answered, "intake_per_s", intake_rate, "delivered_per_s",
        delivered_rate, "intake", percentiles(&lg->intake), "end_to_end", percentiles(&t->e2e),
        "status", statuses(lg->status), "sink_status", statuses(lg->sink_status), "expected",
        (json_int_t)t->expected, "delivered", (json_int_t)t->delivered, "lost", (json_int_t)lost,
        "duplicates", (json_int_t)t->duplicates, "duplicates_same_id", (json_int_t)t->dup_same_id,
        "order_violations", (json_int_t)t->order_violations, "unmatched", (json_int_t)t->unknown);
    json_object_set_new(j, "unanswered", json_integer((json_int_t)(lg->next_seq - lg->answered)));
    json_object_set_new(j, "unsent_due", json_integer((json_int_t)lg->unsent_due));
    json_object_set_new(j, "backlog_max", json_integer((json_int_t)lg->backlog_max));
    json_object_set_new(j, "send_lag", percentiles(&lg->send_lag));
    json_object_set_new(j, "intake_from_send", percentiles(&lg->from_send));
    /* the loadgen's own CPU time (sender and sink, warm-up and drain included): whether the
     * measuring tool, not the target, is the ceiling */
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        double ms = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
                    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
        json_object_set_new(j, "loadgen_cpu_ms", json_real(ms));
    }
    if (o->pid) {
        json_object_set_new(j, "daemon_peak_rss_kb", json_integer(lg->peak_rss_kb));
        json_object_set_new(j, "daemon_rss_kb", json_integer(lg->rss_kb));
    }
    char *text = json_dumps(j, JSON_COMPACT);
    puts(text);
    fflush(stdout);
    free(text);
    json_decref(j);
}
