/*
 * main.c - the firebridge daemon: parses flags, builds the configuration and the objects of the
 * data path (server first; intake, rules, events and delivery hang off it), runs the one event
 * loop and handles signals: SIGTERM/SIGINT drain and exit 0 (deliveries still pending after the
 * drain are saved to the dead-letter file for --replay-dead-letters), SIGHUP reloads atomically,
 * SIGPIPE is ignored.  Everything else lives in the library built from the other files of src/.
 */
#include <errno.h>
#include <malloc.h>
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "fbr_build.h"
#include "firebridge/addon.h"
#include "firebridge/cfgerr.h"
#include "firebridge/config.h"
#include "firebridge/datadir.h"
#include "firebridge/delivery.h"
#include "firebridge/delivery_journal.h"
#include "firebridge/incidents.h"
#include "firebridge/intake.h"
#include "firebridge/journal.h"
#include "firebridge/log.h"
#include "firebridge/metrics.h"
#include "firebridge/rules.h"
#include "firebridge/server.h"
#include "firebridge/service.h"
#include "firebridge/slab.h"
#include "firebridge/webhook.h"

/* The compiled `rules` and `webhooks` sections: swapped as one on reload. */
struct flow {
    struct fbr_rules *rules;
    struct fbr_webhooks webhooks;
    struct fbr_addon_config *addon; /* the `hipchat` and `oncall_api` sections, or NULL */
};

struct daemon {
    struct event_base *base;
    struct fbr_cli cli;
    struct fbr_config cfg;
    struct fbr_datadir *datadir; /* held (locked) from start_process() to the end of stop() */
    struct fbr_metrics *metrics;
    struct fbr_server *srv;
    struct flow flow;
    struct fbr_journal *journal; /* NULL with --journal off */
    struct fbr_incidents *incidents;
    struct fbr_delivery_engine *deliveries;
    struct fbr_delivery_journal *delivery_journal;
    struct fbr_intake *intake;
    struct fbr_addon *addon;
    struct event *flush_tick;
    struct event *drain_tick, *drain_deadline;
    uint64_t *m_reloads_ok, *m_reloads_failed;
    int save; /* pending deliveries go to the dead-letter file on the way out */
    json_t *file_restart_keys; /* restart_keys_in_file() of the file last loaded */
};

/*
 * The keys that need a restart (listen, tls_cert, tls_key, data_dir) as the configuration file
 * itself gives them: a new object, empty without a file or when it cannot be read.  SIGHUP
 * compares them as well as the effective values, so that an edit of the file is reported even
 * when a command-line flag (-l, -d) overrides the key.
 */
static json_t *restart_keys_in_file(const char *file)
{
    static const char *const keys[] = {"listen", "tls_cert", "tls_key", "data_dir"};
    json_t *o = json_object();
    json_t *root = file ? json_load_file(file, 0, NULL) : NULL;
    for (size_t i = 0; i < FBR_ARRAY_LEN(keys); i++) {
        json_t *v = json_object_get(root, keys[i]);
        if (v)
            json_object_set(o, keys[i], v);
    }
    json_decref(root);
    return o;
}

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

/* Descriptors kept for everything but inbound connections: listeners, the journal and
 * dead-letter files, the resolver, outbound delivery connections. */
#define NOFILE_RESERVE 256

/*
 * Makes sure cfg's max_connections inbound connections fit under RLIMIT_NOFILE: raises the soft
 * limit (to the hard limit, at most 65536, and never below what is needed).  When the operator
 * did not choose max_connections (file or flag) and the default does not fit under the hard
 * limit, lowers it to what fits and logs that when `say` is set (the usual `ulimit -n 1024`
 * must not stop a default start).  Returns 0, or -1 with the reason in err when the hard limit is
 * too low for a chosen value (or for any useful one).
 */
static int nofile_fit(struct fbr_config *cfg, int say, char *err, size_t errlen)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 0;
    uint32_t max_connections = cfg->max_connections;
    if (!fbr_config_given(cfg, "max_connections") && rl.rlim_max != RLIM_INFINITY &&
        rl.rlim_max < (rlim_t)max_connections + NOFILE_RESERVE &&
        rl.rlim_max >= NOFILE_RESERVE + 16) {
        cfg->max_connections = (uint32_t)(rl.rlim_max - NOFILE_RESERVE);
        if (say)
            fbr_log_warn("max_connections: the default %u needs %u open files but the hard limit "
                         "(ulimit -Hn, LimitNOFILE= under systemd) is %llu: using %u; raise the "
                         "limit or set --max-connections to choose",
                         (unsigned)max_connections, (unsigned)max_connections + NOFILE_RESERVE,
                         (unsigned long long)rl.rlim_max, (unsigned)cfg->max_connections);
        max_connections = cfg->max_connections;
    }
    rlim_t need = (rlim_t)max_connections + NOFILE_RESERVE;
    rlim_t want = rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
    if (want < need)
        want = need;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
        snprintf(err, errlen,
                 "max_connections %u needs %llu open files (%u more for files and deliveries) "
                 "but the hard limit (ulimit -Hn, LimitNOFILE= under systemd) is %llu: raise it "
                 "or set --max-connections to %llu or less",
                 (unsigned)max_connections, (unsigned long long)need, NOFILE_RESERVE,
                 (unsigned long long)rl.rlim_max,
                 rl.rlim_max > NOFILE_RESERVE ? (unsigned long long)(rl.rlim_max - NOFILE_RESERVE)
                                              : 0ULL);
        return -1;
    }
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0 && rl.rlim_cur < need) {
            snprintf(err, errlen, "cannot raise the open files limit to %llu: %s",
                     (unsigned long long)need, strerror(errno));
            return -1;
        }
    }
    return 0;
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

/*
 * Compiles the rules, webhooks and add-on sections of cfg into f.  Returns FBR_OK, or
 * FBR_INVALID with every error appended to errs as "<json path>: <reason>" (f is then empty).
 */
static int flow_compile(const struct fbr_config *cfg, struct flow *f, struct fbr_cfgerr *errs)
{
    struct fbr_rules_opts ropts = {0};
    size_t before = errs->n;
    memset(f, 0, sizeof(*f));
    fbr_rules_compile(cfg->rules, &ropts, &f->rules, errs);
    fbr_webhooks_compile(cfg->webhooks, &f->webhooks, errs);
    fbr_addon_config_compile(cfg->hipchat, cfg->oncall_api, cfg->public_url, &f->addon, errs);
    if (errs->n == before)
        return FBR_OK;
    fbr_rules_free(&f->rules);
    fbr_webhooks_clear(&f->webhooks);
    fbr_addon_config_unref(&f->addon);
    return FBR_INVALID;
}

static void flow_free(struct flow *f)
{
    fbr_rules_free(&f->rules);
    fbr_webhooks_clear(&f->webhooks);
    fbr_addon_config_unref(&f->addon);
}

/* The intake's sink: every rendered request goes to the delivery engine. */
static int sink_submit(void *arg, struct fbr_outreq *o)
{
    return fbr_delivery_submit(arg, o, NULL);
}

static size_t sink_room(void *arg)
{
    return fbr_delivery_room(arg);
}

static uint64_t sink_last_seq(void *arg)
{
    return fbr_delivery_last_seq(arg);
}

static size_t sink_cancel(void *arg, uint64_t after, uint64_t upto)
{
    return fbr_delivery_cancel(arg, after, upto);
}

static void delivery_opts(const struct fbr_config *cfg, struct fbr_delivery_opts *o)
{
    fbr_delivery_opts_init(o);
    o->pool_size = cfg->pool_size;
    o->pipeline = cfg->pipeline;
    o->connect_timeout_ms = cfg->connect_timeout_ms;
    o->request_timeout_ms = cfg->request_timeout_ms;
    o->room_rate = cfg->room_rate;
    o->token_rate = cfg->token_rate;
    o->retry_initial_ms = cfg->retry_initial_ms;
    o->retry_max_interval_ms = cfg->retry_max_interval_ms;
    o->retry_max_age_s = cfg->retry_max_age_s;
    o->ca_file = cfg->ca_file;
    o->max_pending = cfg->max_pending;
    o->data_dir = cfg->data_dir;
}

static const char *journal_ready(void *arg)
{
    return fbr_journal_trouble(arg);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    fbr_incidents_flush(d->incidents, fbr_wall_ms());
}

/* A reload keeps the settings that need a restart: says so when next changes one of them. */
static void warn_restart_only(struct daemon *d, const struct fbr_config *next, const char *file)
{
    if (!list_eq(&next->api_keys, &d->cfg.api_keys) ||
        !str_eq(next->organization_id, d->cfg.organization_id))
        fbr_log_warn("api_keys and organization_id changes take effect on restart");
    json_t *file_keys = restart_keys_in_file(d->cli.config_file);
    if (!list_eq(&next->listen, &d->cfg.listen) || !str_eq(next->tls_cert, d->cfg.tls_cert) ||
        !str_eq(next->tls_key, d->cfg.tls_key) || !str_eq(next->data_dir, d->cfg.data_dir))
        fbr_log_warn("listen, tls_cert, tls_key or data_dir changed: the change needs a restart "
                     "(still listening on %s, data in %s)",
                     d->cfg.listen.n ? d->cfg.listen.v[0] : "-", d->cfg.data_dir);
    else if (!json_equal(file_keys, d->file_restart_keys))
        fbr_log_warn("listen, tls_cert, tls_key or data_dir changed in %s, but the command line "
                     "overrides it (and a change needs a restart): still listening on %s, data "
                     "in %s",
                     file, d->cfg.listen.n ? d->cfg.listen.v[0] : "-", d->cfg.data_dir);
    json_decref(d->file_restart_keys);
    d->file_restart_keys = file_keys;
}

static void on_reload(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    struct fbr_cfgerr errs = {0};
    struct fbr_config next;
    const char *file = d->cli.config_file ? d->cli.config_file : "(built-in defaults)";
    struct flow flow;
    int built = fbr_config_build_errs(&next, &d->cli, &errs) == FBR_OK;
    if (!built || flow_compile(&next, &flow, &errs) != FBR_OK) {
        (*d->m_reloads_failed)++;
        for (size_t i = 0; i < errs.n; i++)
            fbr_log(FBR_LOG_ERROR, NULL, "reloading the configuration", "%s", errs.msgs[i]);
        fbr_log_error("reload failed: keeping the current configuration");
        fbr_cfgerr_clear(&errs);
        if (built)
            fbr_config_free(&next);
        return;
    }
    char err[512];
    if (nofile_fit(&next, 0, err, sizeof(err)) != 0) {
        (*d->m_reloads_failed)++;
        fbr_log(FBR_LOG_ERROR, NULL, "reloading the configuration", "%s", err);
        fbr_log_error("reload failed: keeping the current configuration");
        flow_free(&flow);
        fbr_config_free(&next);
        return;
    }
    warn_restart_only(d, &next, file);
    fbr_log_setup(next.log_level, next.log_format);
    struct fbr_server_opts o;
    server_opts(&next, d->metrics, &o);
    fbr_server_update(d->srv, &o);
    fbr_intake_set_alertmanager(d->intake, &(struct fbr_alertmanager_opts){
                                               .other_severity = next.alertmanager_other_severity});
    /* Deliveries in flight hold their own references to the webhooks they came from.  The
     * intake borrows the daemon's copy (d->flow), never the local `flow`, which dies with this
     * function: it is pointed at the new generation only once d->flow holds it. */
    flow_free(&d->flow);
    d->flow = flow;
    fbr_intake_set_config(d->intake, d->flow.rules, &d->flow.webhooks);
    fbr_addon_set_config(d->addon, d->flow.addon);
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
    if (fbr_server_connections(d->srv) == 0 &&
        (!d->deliveries || fbr_delivery_pending(d->deliveries) == 0)) {
        fbr_log_info("drained: exiting");
        event_base_loopexit(d->base, NULL);
    }
}

static void drain_expired(evutil_socket_t fd, short what, void *arg)
{
    struct daemon *d = arg;
    fbr_log_warn("drain timeout: exiting with %zu connection(s) open and %zu deliveries pending",
                 fbr_server_connections(d->srv),
                 d->deliveries ? fbr_delivery_pending(d->deliveries) : 0);
    event_base_loopexit(d->base, NULL);
}

/*
 * After the drain (finished or timed out), or when the start fails after a replay queued
 * deliveries: every delivery still pending goes to the dead-letter file through the engine's
 * state machine, in order, instead of being dropped with the engine.  Returns 0, or -1 when some
 * could not be written (the exit status then says so).
 */
static int save_undelivered(struct daemon *d)
{
    size_t pending = fbr_delivery_pending(d->deliveries);
    size_t saved = fbr_delivery_shutdown(d->deliveries, d->drain_tick
                                                             ? "shutdown: undelivered after drain"
                                                             : "shutdown: the start failed");
    if (!pending)
        return 0;
    const char *path = fbr_delivery_dead_letter_path(d->deliveries);
    fbr_log_warn("saved %zu undelivered deliver%s to %s; to send them, restart with the same "
                 "flags plus --replay-dead-letters %s (e.g. firebridge%s%s -d %s "
                 "--replay-dead-letters %s)",
                 saved, saved == 1 ? "y" : "ies", path, path, d->cli.config_file ? " -c " : "",
                 d->cli.config_file ? d->cli.config_file : "", d->cfg.data_dir, path);
    if (saved < pending) {
        fbr_log(FBR_LOG_ERROR, NULL, "saving undelivered deliveries",
                "%zu of %zu could not be written to %s: they are lost", pending - saved, pending,
                path);
        return -1;
    }
    return 0;
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
    struct daemon *d = arg;
    if (d->drain_tick)
        return;
    fbr_log_info("%s received: draining (up to %u s)", sig == SIGINT ? "SIGINT" : "SIGTERM",
                 (unsigned)d->cfg.drain_timeout_s);
    fbr_service_notify("STOPPING=1\nSTATUS=draining");
    fbr_server_drain(d->srv);
    d->drain_tick = event_new(d->base, -1, EV_PERSIST, drain_check, d);
    struct timeval tick = {0, 20000};
    event_add(d->drain_tick, &tick);
    d->drain_deadline = evtimer_new(d->base, drain_expired, d);
    struct timeval dl = {(time_t)d->cfg.drain_timeout_s, 0};
    evtimer_add(d->drain_deadline, &dl);
    drain_check(-1, 0, d);
}

/* The actions that print and exit once the configuration is built: the exit status, or -1. */
static int print_action(const struct daemon *d)
{
    if (d->cfg.print_addon_url) {
        char url[2048];
        if (fbr_addon_capabilities_url(d->cfg.public_url, d->cfg.print_addon_url, url,
                                       sizeof(url)) == FBR_OK) {
            printf("%s\n", url);
            return 0;
        }
        fprintf(stderr, "firebridge: --print-addon-url needs --public-url (an absolute "
                        "http(s) URL) and a routing key of letters, digits, '-' and '_'\n");
        return 1;
    }
    if (d->cli.action == FBR_CLI_PRINT) {
        json_t *settings = fbr_config_settings_json(&d->cfg);
        json_dumpf(settings, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
        printf("\n");
        json_decref(settings);
        return 0;
    }
    if (d->cli.action == FBR_CLI_CHECK) {
        printf("ok\n");
        return 0;
    }
    return -1;
}

/*
 * The one-shot actions (--help, --version, --check-config, --print-config, --print-addon-url)
 * and the configuration every action needs.  Returns -1 when the daemon is to run (d->cfg and
 * d->flow are then built), else the exit status, with everything it built freed.
 */
static int configure(struct daemon *d, int argc, char **argv)
{
    char err[4096];
    if (fbr_cli_parse(&d->cli, argc, argv, err, sizeof(err)) != FBR_OK) {
        fprintf(stderr, "firebridge: %s\n", err);
        fbr_cli_free(&d->cli);
        return 2;
    }
    switch (d->cli.action) {
    case FBR_CLI_HELP:
        fbr_config_print_help(stdout, "firebridge");
        fbr_cli_free(&d->cli);
        return 0;
    case FBR_CLI_VERSION:
        printf("firebridge %s\nsd_notify: %s\nallocator: %s\njansson blocks: %s\n", FBR_VERSION,
               fbr_service_notify_supported() ? "yes" : "no", FBR_ALLOCATOR,
               FBR_SLAB_JSON ? "slab" : FBR_ALLOCATOR);
        fbr_cli_free(&d->cli);
        return 0;
    default:
        break;
    }
    struct fbr_cfgerr errs = {0};
    FILE *errout = d->cli.action != FBR_CLI_RUN ? stdout : stderr;
    if (fbr_config_build_errs(&d->cfg, &d->cli, &errs) != FBR_OK) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(errout, "%s\n", errs.msgs[i]);
        fbr_cfgerr_clear(&errs);
        fbr_cli_free(&d->cli);
        return 1;
    }
    if (flow_compile(&d->cfg, &d->flow, &errs) != FBR_OK) {
        const char *file = d->cfg.config_file ? d->cfg.config_file : "(built-in defaults)";
        for (size_t i = 0; i < errs.n; i++)
            fprintf(errout, "%s: %s\n", file, errs.msgs[i]);
        fbr_cfgerr_clear(&errs);
        fbr_config_free(&d->cfg);
        fbr_cli_free(&d->cli);
        return 1;
    }
    int rc = print_action(d);
    if (rc >= 0) {
        flow_free(&d->flow);
        fbr_config_free(&d->cfg);
        fbr_cli_free(&d->cli);
    } else {
        d->file_restart_keys = restart_keys_in_file(d->cli.config_file);
    }
    return rc;
}

/* The process-wide setup before any object: logging, signals that must not kill, the open files
 * limit, the data directory (made and locked).  Returns FBR_OK or FBR_ERROR (logged). */
static int start_process(struct daemon *d)
{
    char err[4096];
    fbr_log_setup(d->cfg.log_level, d->cfg.log_format);
    fbr_log_capture_stderr(); /* libevhtp's coloured log_error lines become plain log lines */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a file size limit: the journal sees EFBIG and answers 503 */
    if (nofile_fit(&d->cfg, 1, err, sizeof(err)) != 0) {
        fbr_log(FBR_LOG_ERROR, NULL, "starting", "%s", err);
        return FBR_ERROR;
    }
    /* before anything reads or writes in it: one daemon per data directory (datadir.h) */
    if (fbr_datadir_open(d->cfg.data_dir, &d->datadir, err, sizeof(err)) != FBR_OK) {
        fbr_log(FBR_LOG_ERROR, NULL, "starting", "%s", err);
        return FBR_ERROR;
    }
    return FBR_OK;
}

/*
 * The objects of the data path up to the delivery engine, and the journal's recovery into them
 * (before the listeners open: pending deliveries and incidents come back as they were).  Sets
 * d->save to 0 with a journal: nothing is saved on the way out, the journal keeps it all.
 * Returns FBR_OK or FBR_ERROR (logged).
 */
static int start_storage(struct daemon *d)
{
    char err[4096];
    if (d->cfg.journal) {
        char jdir[4096];
        snprintf(jdir, sizeof(jdir), "%s/journal", d->cfg.data_dir);
        struct fbr_journal_opts jopts = {.dir = jdir,
                                         .fsync = d->cfg.fsync,
                                         .fsync_interval_ms = d->cfg.fsync_interval_ms,
                                         .segment_size = d->cfg.journal_segment_size,
                                         .repair = d->cfg.journal_repair,
                                         .metrics = d->metrics};
        if (fbr_journal_open(d->base, &jopts, &d->journal, err, sizeof(err)) != FBR_OK) {
            fbr_log(FBR_LOG_ERROR, NULL, "opening the journal", "%s", err);
            return FBR_ERROR;
        }
        fbr_server_set_ready_check(d->srv, journal_ready, d->journal);
    } else {
        /* a journal left by a run with it on is not read: say what that costs */
        char jdir[4096];
        snprintf(jdir, sizeof(jdir), "%s/journal", d->cfg.data_dir);
        size_t n = fbr_journal_segments_in(jdir);
        if (n)
            fbr_log_warn("%s holds %zu journal segment(s) from a run with --journal on; with "
                         "--journal off they are not read: the deliveries pending in them are "
                         "not sent and the incidents in them are not restored (start with "
                         "--journal on to send them)",
                         jdir, n);
    }
    struct fbr_incidents_opts iopts = {.journal = d->journal};
    if (fbr_incidents_open(&iopts, &d->incidents) != FBR_OK) {
        fbr_log(FBR_LOG_ERROR, NULL, "opening the incident table", "in %s", d->cfg.data_dir);
        return FBR_ERROR;
    }
    struct fbr_delivery_opts dopts;
    delivery_opts(&d->cfg, &dopts);
    if (fbr_delivery_engine_new(d->base, &dopts, &d->deliveries, err, sizeof(err)) != FBR_OK) {
        fbr_log(FBR_LOG_ERROR, NULL, "starting the delivery engine", "%s", err);
        return FBR_ERROR;
    }
    if (d->journal) {
        d->save = 0;
        d->delivery_journal = fbr_delivery_journal_new(d->deliveries, d->journal);
        if (fbr_journal_recover(d->journal, err, sizeof(err)) != FBR_OK) {
            fbr_log(FBR_LOG_ERROR, NULL, "recovering the journal", "%s", err);
            return FBR_ERROR;
        }
        if (fbr_incidents_migrate_legacy(d->incidents, d->cfg.data_dir, err, sizeof(err)) !=
            FBR_OK) {
            fbr_log(FBR_LOG_ERROR, NULL, "migrating the old incident file", "%s", err);
            return FBR_ERROR;
        }
    }
    return FBR_OK;
}

/* The intake and the add-on on top of the storage, the metrics collectors and the incident
 * flush tick.  Returns FBR_OK or FBR_ERROR (logged). */
static int start_intake(struct daemon *d)
{
    char err[4096];
    struct fbr_intake_opts inopts = {
        .api_keys = (const char *const *)d->cfg.api_keys.v,
        .napi_keys = d->cfg.api_keys.n,
        .organization_id = d->cfg.organization_id,
        .rules = d->flow.rules,
        .webhooks = &d->flow.webhooks,
        .incidents = d->incidents,
        .sink = {sink_submit, d->deliveries, sink_room, sink_last_seq, sink_cancel},
        .journal = d->journal,
        .alertmanager = {.other_severity = d->cfg.alertmanager_other_severity},
    };
    d->intake = fbr_intake_new(&inopts);
    fbr_intake_register(d->intake, d->srv);
    struct fbr_addon_opts aopts = {.base = d->base,
                                   .srv = d->srv,
                                   .engine = d->deliveries,
                                   .intake = d->intake,
                                   .incidents = d->incidents,
                                   .metrics = d->metrics,
                                   .data_dir = d->cfg.data_dir};
    if (fbr_addon_new(&aopts, d->flow.addon, &d->addon, err, sizeof(err)) != FBR_OK) {
        fbr_log(FBR_LOG_ERROR, NULL, "reading the HipChat installations", "%s", err);
        return FBR_ERROR;
    }
    if (d->delivery_journal) { /* restored room notifications ask their installation again */
        fbr_delivery_journal_set_auth_lookup(d->delivery_journal, fbr_addon_auth_lookup,
                                             d->addon);
        fbr_delivery_auth_ready(d->deliveries);
    }
    fbr_metrics_add_collector(d->metrics, fbr_intake_metrics_collect, d->intake);
    fbr_metrics_add_collector(d->metrics, fbr_delivery_metrics_collect, d->deliveries);
    fbr_metrics_add_collector(d->metrics, fbr_incidents_metrics_collect, d->incidents);
    d->flush_tick = event_new(d->base, -1, EV_PERSIST, on_flush, d);
    event_add(d->flush_tick, &(struct timeval){1, 0});
    return FBR_OK;
}

/* --replay-dead-letters, then the listeners.  Returns FBR_OK or FBR_ERROR (logged). */
static int start_serving(struct daemon *d)
{
    char err[4096];
    if (d->cfg.replay_dead_letters) {
        size_t count = 0;
        int r = fbr_delivery_replay_file(d->deliveries, d->cfg.replay_dead_letters, &count, err,
                                         sizeof(err));
        if (r == FBR_NOTFOUND) {
            /* A restart that still carries the flag after the replay consumed the file (the
             * engine's own file is moved aside to <file>.replayed-<ms>): nothing to replay is
             * not a reason to stay down.  Unreadable or malformed files still refuse. */
            fbr_log_warn("nothing to replay: %s does not exist (a replayed dead-letter file is "
                         "moved to %s.replayed-<ms>); starting without a replay",
                         d->cfg.replay_dead_letters, d->cfg.replay_dead_letters);
        } else if (r != FBR_OK) {
            fbr_log(FBR_LOG_ERROR, NULL, "replaying dead letters", "from %s: %s",
                    d->cfg.replay_dead_letters, err);
            d->save = 0; /* what was queued is still in the file: writing it again doubles it */
            return FBR_ERROR;
        } else {
            fbr_log_info("replaying %zu dead letter(s) from %s", count,
                         d->cfg.replay_dead_letters);
        }
    }
    for (size_t i = 0; i < d->cfg.listen.n; i++) {
        if (fbr_server_listen(d->srv, d->cfg.listen.v[i]) != FBR_OK)
            return FBR_ERROR;
    }
    return FBR_OK;
}

/*
 * The loop's event base, with the epoll changelist: interest changes on a descriptor within one
 * loop iteration reach epoll as one call at the next dispatch.  A deferred alert reply pauses
 * reading and queues the reply (one EPOLL_CTL_MOD instead of a DEL and an ADD), then the write
 * completes and reading resumes (one MOD again): 2 epoll_ctl per alert instead of 4
 * (bench/README.md).
 */
static struct event_base *new_event_base(void)
{
    struct event_config *cfg = event_config_new();
    struct event_base *base = NULL;
    if (cfg && event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST) == 0)
        base = event_base_new_with_config(cfg);
    if (cfg)
        event_config_free(cfg);
    return base ? base : event_base_new();
}

/*
 * Builds every object of a configured daemon, in order, and opens the listeners.  Returns FBR_OK
 * or FBR_ERROR (logged); either way stop() frees what was built.
 */
static int start(struct daemon *d)
{
    if (start_process(d) != FBR_OK)
        return FBR_ERROR;
    d->base = new_event_base();
    d->metrics = fbr_metrics_new();
    d->m_reloads_ok = fbr_metrics_counter(d->metrics, "firebridge_config_reloads_total",
                                          "Configuration reloads (SIGHUP), by result", "result",
                                          "ok");
    d->m_reloads_failed = fbr_metrics_counter(d->metrics, "firebridge_config_reloads_total",
                                              NULL, "result", "failed");
    struct fbr_server_opts o;
    server_opts(&d->cfg, d->metrics, &o);
    d->srv = fbr_server_new(d->base, &o);
    if (start_storage(d) != FBR_OK || start_intake(d) != FBR_OK || start_serving(d) != FBR_OK)
        return FBR_ERROR;
    return FBR_OK;
}

/* event_base_dispatch(), one iteration at a time: the loop's clock ticks before each one
 * (common.h fbr_clock_loop), so the time stamps and deadlines of everything the iteration does
 * cost one clock read. */
static void run_loop(struct event_base *base)
{
    fbr_clock_loop(1);
    for (;;) {
        fbr_clock_tick();
        if (event_base_loop(base, EVLOOP_ONCE) != 0 || event_base_got_exit(base) ||
            event_base_got_break(base))
            break;
    }
    fbr_clock_loop(0);
}

/* Serves until SIGTERM/SIGINT has drained (or timed out); SIGHUP reloads meanwhile. */
static void run(struct daemon *d)
{
    struct event *sigs[] = {
        evsignal_new(d->base, SIGTERM, on_stop, d),
        evsignal_new(d->base, SIGINT, on_stop, d),
        evsignal_new(d->base, SIGHUP, on_reload, d),
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(sigs); i++)
        event_add(sigs[i], NULL);
    fbr_log_info("firebridge %s started (%s)", FBR_VERSION,
                 d->cfg.config_file ? d->cfg.config_file : "built-in default configuration");
    fbr_service_notify("READY=1\nSTATUS=serving"); /* every listener is open by now */
    run_loop(d->base);
    for (size_t i = 0; i < FBR_ARRAY_LEN(sigs); i++)
        event_free(sigs[i]);
}

/*
 * Frees everything start() built, whether it finished or not: first the pending deliveries go
 * to the dead-letter file (after the drain, or a start that failed after a replay queued some)
 * unless the journal keeps them.  Returns rc, or 1 when some could not be saved.
 */
static int stop(struct daemon *d, int rc)
{
    if (d->deliveries && d->save && save_undelivered(d) != 0)
        rc = 1;
    if (d->journal && d->deliveries && fbr_delivery_pending(d->deliveries))
        fbr_log_info("%zu pending deliver%s stay in the journal and are sent after the restart",
                     fbr_delivery_pending(d->deliveries),
                     fbr_delivery_pending(d->deliveries) == 1 ? "y" : "ies");
    if (d->drain_tick)
        event_free(d->drain_tick);
    if (d->drain_deadline)
        event_free(d->drain_deadline);
    if (d->flush_tick)
        event_free(d->flush_tick);
    fbr_server_free(&d->srv);
    if (d->delivery_journal)
        fbr_delivery_journal_set_auth_lookup(d->delivery_journal, NULL, NULL);
    fbr_addon_free(&d->addon);
    fbr_intake_free(&d->intake);
    fbr_delivery_journal_free(&d->delivery_journal);
    fbr_delivery_engine_free(&d->deliveries);
    fbr_incidents_close(&d->incidents);
    fbr_journal_close(&d->journal); /* writes and syncs what is buffered */
    flow_free(&d->flow);
    fbr_metrics_free(&d->metrics);
    if (d->base) {
        /* bufferevents freed inside their own callbacks are released by the loop: let it run */
        event_base_loop(d->base, EVLOOP_NONBLOCK);
        event_base_free(d->base);
    }
    fbr_datadir_close(&d->datadir); /* last: everything written in the directory is closed */
    json_decref(d->file_restart_keys);
    fbr_config_free(&d->cfg);
    fbr_cli_free(&d->cli);
    return rc;
}

int main(int argc, char **argv)
{
    /* glibc merges its fast bins whenever a request of 1 KiB or more misses the thread cache;
     * every socket read (libevent grows evbuffers by 4 KiB chains) is such a request and each
     * alert frees dozens of small jansson nodes, so most of malloc's time went to merging bins
     * (bench/README.md, profile).  Without fast bins small blocks still come from the tcache.
     * With jemalloc linked in (the default where it is installed) glibc's malloc is not used. */
    mallopt(M_MXFAST, 0);
#if FBR_SLAB_JSON
    /* Before anything makes a jansson value (the configuration is read with jansson): values
     * must be freed by the functions that allocated them.  Without the region jansson simply
     * stays on malloc. */
    fbr_slab_install_json(FBR_SLAB_REGION);
#endif
    struct daemon d;
    memset(&d, 0, sizeof(d));
    d.save = 1;
    int rc = configure(&d, argc, argv);
    if (rc >= 0)
        return rc;
    if (start(&d) != FBR_OK)
        return stop(&d, 1);
    run(&d);
    return stop(&d, 0);
}
