/*
 * delivery.c (bench) - how fast the delivery engine and client push rendered requests to a local
 * plain-HTTP server (a forked child running the test server), with 1,000 rooms and every rate
 * limit lifted; and how much memory 100,000 queued deliveries cost while the server is down.
 * Prints one line per figure.
 *
 * Usage: bench_delivery [deliveries [pool_size [port]]]  (without a port it also measures https,
 * with a fifth of the deliveries, against the forked server and a CA made on the spot)
 * With a port, deliveries go to a server already listening on 127.0.0.1:port (for instance the
 * HipChat-compatible contrib/hipchat-server with --any-token --any-room --no-limits) instead of
 * the forked test server.
 */
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "http_testsrv.h"
#include "firebridge/delivery.h"
#include "firebridge/server.h"

static const char body[] =
    "{\"message\":\"CRITICAL: disk usage on db-17 is 97% (threshold 90%) - incident 4711 "
    "triggered by the Database team's routing key\",\"message_format\":\"text\","
    "\"color\":\"red\",\"notify\":true,\"from\":\"firebridge\"}";

enum { ROOMS = 1000, QUEUED = 100000 };

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kb;
}

static void make_req(struct fbr_outreq *o, const char *scheme, int port, int room)
{
    char url[256];
    snprintf(url, sizeof(url), "%s://127.0.0.1:%d/v2/room/%d/notification", scheme, port, room);
    fbr_outreq_init(o);
    o->method = FBR_M_POST;
    fbr_render_set_copy(&o->url, url, strlen(url));
    fbr_render_set_copy(&o->body, body, sizeof(body) - 1);
    o->content_type = fbr_xstrdup("application/json");
    o->nheaders = 1;
    o->header_names = fbr_xcalloc(1, sizeof(*o->header_names));
    o->headers = fbr_xcalloc(1, sizeof(*o->headers));
    o->header_names[0] = fbr_xstrdup("Authorization");
    fbr_render_init(&o->headers[0]);
    fbr_render_set_copy(&o->headers[0], "Bearer 0123456789abcdef0123456789abcdef", 39);
}

static void opts_lifted(struct fbr_delivery_opts *o, unsigned pool)
{
    fbr_delivery_opts_init(o);
    o->data_dir = "/tmp";
    o->room_rate = (struct fbr_rate){0, 0};
    o->token_rate = (struct fbr_rate){0, 0};
    o->pool_size = pool;
    o->max_pending = 200000;
}

/* Forks the test server (TLS when cert is non-NULL); returns its pid and sets *port. */
static pid_t spawn_server(const char *cert, const char *key, int *port)
{
    int pfd[2];
    if (pipe(pfd) != 0)
        exit(1);
    pid_t child = fork();
    if (child == 0) {
        struct event_base *b = event_base_new();
        struct tsrv *s = tsrv_new(b, cert ? tsrv_ssl_ctx(cert, key) : NULL);
        int p = tsrv_port(s);
        if (write(pfd[1], &p, sizeof(p)) != sizeof(p))
            _exit(1);
        event_base_dispatch(b);
        _exit(0);
    }
    if (read(pfd[0], port, sizeof(*port)) != sizeof(*port))
        exit(1);
    close(pfd[0]);
    close(pfd[1]);
    return child;
}

static void throughput(struct event_base *base, const char *scheme, int port, long total,
                       unsigned pool, const char *ca)
{
    char err[256];
    struct fbr_delivery_opts o;
    opts_lifted(&o, pool);
    o.ca_file = ca;
    struct fbr_delivery_engine *e;
    if (fbr_delivery_engine_new(base, &o, &e, err, sizeof(err)) != FBR_OK) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    uint64_t t0 = fbr_now_ms();
    long submitted = 0;
    const struct fbr_delivery_metrics *m = fbr_delivery_get_metrics(e);
    while ((long)(m->delivered + m->dead_permanent) < total) {
        /* keep about 20,000 pending: a steady intake rather than one giant burst */
        while (submitted < total && fbr_delivery_pending(e) < 20000) {
            struct fbr_outreq r;
            make_req(&r, scheme, port, (int)(submitted % ROOMS));
            if (fbr_delivery_submit(e, &r, NULL) != FBR_OK)
                exit(1);
            fbr_outreq_free(&r);
            submitted++;
        }
        event_base_loop(base, EVLOOP_ONCE);
    }
    uint64_t ms = fbr_now_ms() - t0;
    struct fbr_client_stats cs;
    fbr_client_get_stats(fbr_delivery_client(e), &cs);
    printf("throughput %s: %ld deliveries to %d rooms over %u pooled connections in %llu ms = "
           "%.0f deliveries/s (delivered %llu, dead %llu, attempts %llu, connections opened "
           "%llu)\n",
           scheme, total, ROOMS, pool, (unsigned long long)ms,
           (double)total * 1000.0 / (double)(ms ? ms : 1), (unsigned long long)m->delivered,
           (unsigned long long)m->dead_permanent, (unsigned long long)m->attempts,
           (unsigned long long)cs.connections_opened);
    fbr_delivery_engine_free(&e);
}

int main(int argc, char **argv)
{
    long total = argc > 1 ? atol(argv[1]) : 100000;
    unsigned pool = argc > 2 ? (unsigned)atoi(argv[2]) : 8;
    int port = argc > 3 ? atoi(argv[3]) : 0;
    char err[256];
    struct event_base *base = event_base_new();

    if (port) {
        throughput(base, "http", port, total, pool, NULL);
    } else {
        pid_t child = spawn_server(NULL, NULL, &port);
        throughput(base, "http", port, total, pool, NULL);
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);

        char dir[] = "/tmp/fbr-bench-XXXXXX", cert[64], key[64], ca[64], cmd[96];
        if (mkdtemp(dir) && tsrv_make_certs(dir) == 0) {
            snprintf(cert, sizeof(cert), "%s/good.pem", dir);
            snprintf(key, sizeof(key), "%s/good.key", dir);
            snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
            child = spawn_server(cert, key, &port);
            throughput(base, "https", port, total / 5, pool, ca);
            kill(child, SIGKILL);
            waitpid(child, NULL, 0);
            snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
            if (system(cmd) != 0)
                fprintf(stderr, "cannot remove %s\n", dir);
        }
    }

    /* memory: nobody listens on port 9, so everything stays queued (or backs off) */
    struct fbr_delivery_opts o;
    opts_lifted(&o, pool);
    o.retry_initial_ms = 60000;
    struct fbr_delivery_engine *e;
    if (fbr_delivery_engine_new(base, &o, &e, err, sizeof(err)) != FBR_OK)
        return 1;
    long before = rss_kb();
    for (int i = 0; i < QUEUED; i++) {
        struct fbr_outreq r;
        make_req(&r, "http", 9, i % ROOMS);
        if (fbr_delivery_submit(e, &r, NULL) != FBR_OK)
            return 1;
        fbr_outreq_free(&r);
    }
    for (int i = 0; i < 50; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    long after = rss_kb();
    printf("memory: %d deliveries queued (%zu-byte bodies, server down): RSS %ld kB -> %ld kB, "
           "%.0f bytes per queued delivery; pending %zu\n",
           QUEUED, sizeof(body) - 1, before, after, (double)(after - before) * 1024.0 / QUEUED,
           fbr_delivery_pending(e));
    fbr_delivery_engine_free(&e);
    event_base_free(base);
    return 0;
}
