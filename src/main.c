/*
 * main.c - the firebridge daemon: parses flags, builds the configuration and the objects of the
 * data path (server first; intake, rules, events and delivery hang off it), runs the one event
 * loop and handles signals: SIGTERM/SIGINT drain and exit 0, SIGHUP reloads atomically, SIGPIPE
 * is ignored.  Everything else lives in the library built from the other files of src/.
 */
#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "fbr_build.h"
#include "firebridge/config.h"
#include "firebridge/log.h"
#include "firebridge/metrics.h"
#include "firebridge/server.h"

struct daemon {
    struct event_base *base;
    struct fbr_cli cli;
    struct fbr_config cfg;
    struct fbr_metrics *metrics;
    struct fbr_server *srv;
    struct event *drain_tick, *drain_deadline;
    uint64_t *m_reloads_ok, *m_reloads_failed;
};

static void server_opts(const struct fbr_config *cfg, struct fbr_metrics *m,
                        struct fbr_server_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->max_body = (size_t)cfg->max_body;
    o->max_connections = cfg->max_connections;
    o->read_timeout_ms = cfg->read_timeout_ms;
    o->idle_timeout_ms = cfg->idle_timeout_ms;
    o->tls_cert = cfg->tls_cert;
    o->tls_key = cfg->tls_key;
    o->data_dir = cfg->data_dir;
    o->metrics = m;
}

/* mkdir -p: returns 0 or -1 with errno set. */
static int make_dirs(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* 1,000+ concurrent connections need more descriptors than the usual soft limit of 1024. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static int list_eq(const struct fbr_strlist *a, const struct fbr_strlist *b)
{
    if (a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->v[i], b->v[i]) != 0)
            return 0;
    return 1;
}

static int str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void on_reload(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    char err[4096];
    struct fbr_config next;
    const char *file = d->cli.config_file ? d->cli.config_file : "(built-in defaults)";
    if (fbr_config_build(&next, &d->cli, err, sizeof(err)) != FBR_OK) {
        (*d->m_reloads_failed)++;
        for (char *line = strtok(err, "\n"); line; line = strtok(NULL, "\n"))
            fbr_log(FBR_LOG_ERROR, NULL, "reloading the configuration", "%s", line);
        fbr_log_error("reload failed: keeping the current configuration");
        return;
    }
    if (!list_eq(&next.listen, &d->cfg.listen) || !str_eq(next.tls_cert, d->cfg.tls_cert) ||
        !str_eq(next.tls_key, d->cfg.tls_key) || !str_eq(next.data_dir, d->cfg.data_dir))
        fbr_log_warn("listen, tls_cert, tls_key and data_dir changes take effect on restart");
    fbr_log_setup(next.log_level, next.log_format);
    struct fbr_server_opts o;
    server_opts(&next, d->metrics, &o);
    fbr_server_update(d->srv, &o);
    /* The old configuration goes only after everything points at the new one. */
    struct fbr_config old = d->cfg;
    d->cfg = next;
    fbr_config_free(&old);
    (*d->m_reloads_ok)++;
    fbr_log_info("configuration reloaded from %s", file);
}

static void drain_check(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    if (fbr_server_connections(d->srv) == 0) {
        fbr_log_info("drained: exiting");
        event_base_loopexit(d->base, NULL);
    }
}

static void drain_expired(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    fbr_log_warn("drain timeout: exiting with %zu connection(s) still open",
                 fbr_server_connections(d->srv));
    event_base_loopexit(d->base, NULL);
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    if (d->drain_tick)
        return;
    fbr_log_info("%s received: draining (up to %u s)", sig == SIGINT ? "SIGINT" : "SIGTERM",
                 (unsigned)d->cfg.drain_timeout_s);
    fbr_server_drain(d->srv);
    d->drain_tick = event_new(d->base, -1, EV_PERSIST, drain_check, d);
    struct timeval tick = {0, 20000};
    event_add(d->drain_tick, &tick);
    d->drain_deadline = evtimer_new(d->base, drain_expired, d);
    struct timeval dl = {(time_t)d->cfg.drain_timeout_s, 0};
    evtimer_add(d->drain_deadline, &dl);
    drain_check(-1, 0, d);
}

int main(int argc, char **argv)
{
    struct daemon d;
    memset(&d, 0, sizeof(d));
    char err[4096];
    int rc = 1;

    if (fbr_cli_parse(&d.cli, argc, argv, err, sizeof(err)) != FBR_OK) {
        fprintf(stderr, "firebridge: %s\n", err);
        fbr_cli_free(&d.cli);
        return 2;
    }
    switch (d.cli.action) {
    case FBR_CLI_HELP:
        fbr_config_print_help(stdout, "firebridge");
        fbr_cli_free(&d.cli);
        return 0;
    case FBR_CLI_VERSION:
        printf("firebridge %s\n", FBR_VERSION);
        fbr_cli_free(&d.cli);
        return 0;
    default:
        break;
    }
    if (fbr_config_build(&d.cfg, &d.cli, err, sizeof(err)) != FBR_OK) {
        fprintf(d.cli.action == FBR_CLI_CHECK ? stdout : stderr, "%s\n", err);
        fbr_cli_free(&d.cli);
        return 1;
    }
    if (d.cli.action == FBR_CLI_CHECK) {
        printf("ok\n");
        fbr_config_free(&d.cfg);
        fbr_cli_free(&d.cli);
        return 0;
    }

    fbr_log_setup(d.cfg.log_level, d.cfg.log_format);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    if (make_dirs(d.cfg.data_dir) != 0) {
        fbr_log(FBR_LOG_ERROR, NULL, "creating the data directory", "%s: %s", d.cfg.data_dir,
                strerror(errno));
        goto out;
    }

    d.base = event_base_new();
    d.metrics = fbr_metrics_new();
    d.m_reloads_ok = fbr_metrics_counter(d.metrics, "fbr_config_reloads_total",
                                         "Configuration reloads (SIGHUP), by result", "result",
                                         "ok");
    d.m_reloads_failed = fbr_metrics_counter(d.metrics, "fbr_config_reloads_total", NULL,
                                             "result", "failed");
    struct fbr_server_opts o;
    server_opts(&d.cfg, d.metrics, &o);
    d.srv = fbr_server_new(d.base, &o);
    /* Later modules (intake, HipChat add-on) add their routes here. */
    for (size_t i = 0; i < d.cfg.listen.n; i++) {
        if (fbr_server_listen(d.srv, d.cfg.listen.v[i]) != FBR_OK)
            goto out;
    }
    struct event *sigs[4] = {
        evsignal_new(d.base, SIGTERM, on_stop, &d),
        evsignal_new(d.base, SIGINT, on_stop, &d),
        evsignal_new(d.base, SIGHUP, on_reload, &d),
        NULL,
    };
    for (int i = 0; sigs[i]; i++)
        event_add(sigs[i], NULL);
    fbr_log_info("firebridge %s started (%s)", FBR_VERSION,
                 d.cfg.config_file ? d.cfg.config_file : "built-in default configuration");

    event_base_dispatch(d.base);
    rc = 0;
    for (int i = 0; sigs[i]; i++)
        event_free(sigs[i]);
out:
    if (d.drain_tick)
        event_free(d.drain_tick);
    if (d.drain_deadline)
        event_free(d.drain_deadline);
    fbr_server_free(&d.srv);
    fbr_metrics_free(&d.metrics);
    if (d.base) {
        /* bufferevents freed inside their own callbacks are released by the loop: let it run */
        event_base_loop(d.base, EVLOOP_NONBLOCK);
        event_base_free(d.base);
    }
    fbr_config_free(&d.cfg);
    fbr_cli_free(&d.cli);
    return rc;
}
