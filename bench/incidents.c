/*
 * incidents.c - benchmark of the incident table (src/incidents.c), the step between the Rules
 * Engine and event derivation: the cost of one CRITICAL alert that opens a new incident when the
 * table is full (every alert evicts the least recently updated open incident) next to the same
 * alerts into a table with room, in the same run, and their ratio.  Run twice: in memory, and
 * with the write-ahead journal on (a temporary data directory, fsync off, 1 MiB segments, written
 * every 64 alerts as the loop would) so the checkpoints that the evictions' extra records trigger
 * are included; the longest single alert (apply + its share of the write) is shown too.
 *
 * Each pass feeds N alerts with distinct entity ids; "room" has max_incidents = N, "full" has
 * max_incidents = N / 2, so its second half evicts on every alert.  The figures are ns per alert
 * over that second half (the first half is the same work in both).  Alerts are built before the
 * clock starts.  A last row feeds the ids five times over into the full journaled table, long
 * enough for several checkpoints.  Warnings go to stderr.
 *
 * Usage: bench_incidents [alerts]   (default 20000)
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <event2/event.h>
#include <time.h>
#include <unistd.h>

#include "firebridge/incidents.h"
#include "firebridge/journal.h"
#include "firebridge/log.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Feeds alerts[0..n) `rounds` times over, 1 ms apart; returns the ns per alert spent after the
 * first n/2.  In a table of n/2 every alert of a later round opens a new incident again (its
 * previous one was evicted n/2 alerts later). */
static uint64_t max_alert_ns; /* the longest single alert of the last run */

static double run(json_t **alerts, size_t n, size_t rounds, size_t max, const char *data_dir,
                  struct fbr_incidents_stats *st)
{
    struct event_base *base = event_base_new();
    struct fbr_journal *j = NULL;
    char err[512];
    if (data_dir) {
        char jdir[300];
        snprintf(jdir, sizeof(jdir), "%s/journal", data_dir);
        struct fbr_journal_opts jo = {.dir = jdir, .fsync = FBR_FSYNC_OFF,
                                      .segment_size = 1024 * 1024};
        if (fbr_journal_open(base, &jo, &j, err, sizeof(err)) != FBR_OK) {
            fprintf(stderr, "%s\n", err);
            exit(1);
        }
    }
    struct fbr_incidents_opts o = {.journal = j, .max_incidents = max};
    struct fbr_incidents *t = NULL;
    if (fbr_incidents_open(&o, &t) != FBR_OK || (j && fbr_journal_recover(j, err, sizeof(err)))) {
        fprintf(stderr, "cannot open the incident table\n");
        exit(1);
    }
    max_alert_ns = 0;
    uint64_t start = 0;
    uint64_t base_ms = 1700000000000ull;
    for (size_t i = 0; i < n * rounds; i++) {
        if (i == n / 2)
            start = now_ns();
        uint64_t t0 = now_ns();
        struct fbr_incident_result r;
        if (fbr_incidents_apply(t, alerts[i % n], base_ms + i, &r) != FBR_OK ||
            r.transition != FBR_TR_TRIGGERED) {
            fprintf(stderr, "alert %zu: unexpected result\n", i);
            exit(1);
        }
        fbr_incident_result_clear(&r);
        if (j && i % 64 == 63)
            fbr_journal_flush(j);
        uint64_t dt = now_ns() - t0;
        if (dt > max_alert_ns)
            max_alert_ns = dt;
    }
    uint64_t ns = now_ns() - start;
    fbr_incidents_get_stats(t, st);
    fbr_incidents_close(&t);
    fbr_journal_close(&j);
    event_base_free(base);
    return (double)ns / (double)(n * rounds - n / 2);
}

static void remove_dir(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 20000;
    if (n < 4)
        n = 4;
    fbr_log_setup(FBR_LOG_WARN, FBR_LOG_TEXT);
    json_t **alerts = calloc(n, sizeof(*alerts));
    if (!alerts)
        return 1;
    for (size_t i = 0; i < n; i++) {
        char eid[64];
        snprintf(eid, sizeof(eid), "disk/web-%06zu.prod.example/var", i);
        alerts[i] = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s}", "routing_key", "devops", "entity_id",
                              eid, "message_type", "CRITICAL", "host_name", "web.prod.example",
                              "entity_display_name", "Low disk space on /var", "VO_UUID",
                              "6d1e2f6c-6a43-4f7e-9c55-0d2b8c1f1a11");
    }
    const char *tmp = getenv("TMPDIR");
    printf("incident table: %zu alerts with distinct entity ids, ns per alert over the last %zu\n",
           n, n - n / 2);
    printf("%-8s %14s %14s %8s %10s\n", "journal", "room (max N)", "full (max N/2)", "ratio",
           "evicted");
    for (int journal = 0; journal < 2; journal++) {
        char dir[256] = "";
        if (journal) {
            snprintf(dir, sizeof(dir), "%s/fbr-bench-incidents-XXXXXX", tmp ? tmp : "/tmp");
            if (!mkdtemp(dir)) {
                perror("mkdtemp");
                return 1;
            }
        }
        struct fbr_incidents_stats sr, sf;
        double room = run(alerts, n, 1, n, journal ? dir : NULL, &sr);
        if (journal) {
            remove_dir(dir);
            if (mkdir(dir, 0700) != 0)
                perror(dir);
        }
        double full = run(alerts, n, 1, n / 2, journal ? dir : NULL, &sf);
        if (journal) {
            remove_dir(dir);
            if (mkdir(dir, 0700) != 0)
                perror(dir);
        }
        printf("%-8s %14.0f %14.0f %8.2f %10llu   longest alert %.2f ms\n",
               journal ? "on" : "off", room, full, full / room, (unsigned long long)sf.evicted,
               (double)max_alert_ns / 1e6);
        if (journal) {
            /* 5 rounds: 2 journal records per alert (record + forget) make the journal
             * checkpoint the live table every few segments; the cost per alert must stay flat
             * and no single alert may pause for the whole table. */
            full = run(alerts, n, 5, n / 2, dir, &sf);
            remove_dir(dir);
            printf("%-8s %14s %14.0f %8.2f %10llu   longest alert %.2f ms (%zu alerts, "
                   "checkpoints)\n",
                   "on", "", full, full / room, (unsigned long long)sf.evicted,
                   (double)max_alert_ns / 1e6, 5 * n);
        }
    }
    for (size_t i = 0; i < n; i++)
        json_decref(alerts[i]);
    free(alerts);
    return 0;
}
