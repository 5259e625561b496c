/*
 * test_journal_disk.c - disk trouble under the real daemon (issue 11, item 4): the daemon runs
 * with its journal on, delivering to contrib/hipchat-server; the test lowers the daemon's
 * RLIMIT_FSIZE soft limit to 0 from outside (prlimit(2) on the running process), so every write
 * to a regular file fails with EFBIG (SIGXFSZ is ignored by the daemon), then raises it back.
 * No test hook: the journal's own write path sees the failure.  The daemon's output goes through
 * a pipe to a `cat` writing the log file, so the limit does not silence the log.
 *
 * Checked, over two episodes: while writes fail every alert is answered 503 with Retry-After
 * (never 200), /readyz is 503 and firebridge_journal_writable is 0, and the daemon logs one
 * error line per episode however many alerts and retries fail; once the limit is lifted the
 * daemon recovers by itself (/readyz 200, alerts 200 again, one "writes work again" line), and
 * every alert answered 200 reaches the room.
 *
 * And what a 503 leaves behind (refused_alerts_leave_nothing): with the limit just above the
 * segment's size, the write of an alert already processed fails mid-stream.  No alert answered
 * 503 may ever reach the room: not while the journal retries (on a fresh segment, where the
 * failed batch does get written), not after the limit is lifted, not after a kill -9 and a
 * restart that replays the journal.  Its incident change is taken back too: the sender's retry
 * triggers the incident again (the seed configuration posts on Incident-Triggered only, so a
 * kept change would make the retry a silent roll-up) and the room gets the alert exactly once.
 */
#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_util.h"
#include "testsupport.h"

#define API_KEY "CHANGE-ME-integration-key"
#define ALERT_PATH "/integrations/generic/20131114/alert/" API_KEY "/devops"
#define TROUBLE_LINE "alerts get 503 until the journal can be written again"
#define RECOVERED_LINE "journal: writes work again"

static char dir[64];

static int count(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static int log_count(const char *log, const char *needle)
{
    char *text = dutil_slurp(log, NULL);
    int n = count(text, needle);
    free(text);
    return n;
}

/* Sets the soft RLIMIT_FSIZE of pid (the hard limit stays); asserts prlimit worked. */
static void set_fsize(pid_t pid, rlim_t soft)
{
    struct rlimit old, lim;
    ck_assert_int_eq(prlimit(pid, RLIMIT_FSIZE, NULL, &old), 0);
    lim.rlim_cur = soft;
    lim.rlim_max = old.rlim_max;
    ck_assert_msg(prlimit(pid, RLIMIT_FSIZE, &lim, NULL) == 0, "prlimit: %s", strerror(errno));
}

static int post(int port, int n, char *buf, size_t cap)
{
    char body[256];
    snprintf(body, sizeof(body),
             "{\"message_type\":\"CRITICAL\",\"entity_id\":\"disk-%d\","
             "\"entity_display_name\":\"disk alert %d\"}",
             n, n);
    return dutil_post(port, ALERT_PATH, NULL, body, buf, cap);
}

/* Polls /readyz until it answers want (up to ms); returns the last status. */
static int wait_readyz(int port, int want, int ms)
{
    char buf[2048];
    int st = 0;
    for (int waited = 0; waited <= ms; waited += 50) {
        st = dutil_get(port, "/readyz", buf, sizeof(buf));
        if (st == want)
            break;
        dutil_msleep(50);
    }
    return st;
}

/* What the disk tests share: a scratch dir, hipchat-server with room 77 (flood control off when
 * unlimited: more than HipChat's 30 messages a minute go to the room), the seed recipe pointed
 * at it in dir/fb.json, and the data directory's path. */
struct rig {
    char cfg[128], data[128];
    pid_t hc;
    int hport;
};

static void rig_start(struct rig *r, const char *prefix, int unlimited)
{
    dutil_tmpdir(dir, sizeof(dir), prefix);
    char hc_out[128], hc_err[128], origin[64];
    snprintf(hc_out, sizeof(hc_out), "%s/hc.out", dir);
    snprintf(hc_err, sizeof(hc_err), "%s/hc.err", dir);
    snprintf(r->cfg, sizeof(r->cfg), "%s/fb.json", dir);
    snprintf(r->data, sizeof(r->data), "%s/data", dir);
    const char *limited[] = {"--room", "77:tok-77", NULL};
    const char *open_flood[] = {"--room",       "77:tok-77", "--room-rate", "off",
                                "--token-rate", "off",       NULL};
    r->hc = dutil_hipchat_start(hc_out, hc_err, unlimited ? open_flood : limited, &r->hport);
    snprintf(origin, sizeof(origin), "http://127.0.0.1:%d/", r->hport);
    dutil_seed_config(r->cfg, origin, "77", "tok-77");
}

/* Stops the daemon (its exit status checked, the log's cat reaped) and the room; removes dir. */
static void rig_stop(struct rig *r, struct dutil_daemon *d)
{
    dutil_daemon_stop(d);
    kill(r->hc, SIGTERM);
    waitpid(r->hc, NULL, 0);
    dutil_rm_rf(dir);
}

START_TEST(efbig_means_503_then_recovers_by_itself)
{
    struct rig r;
    rig_start(&r, "fbr-jdisk", 0);
    const char *cfg = r.cfg;
    int hport = r.hport;

    /* daemon | cat > log: the limit applies to the daemon only */
    const char *extra[] = {"-c", cfg, "--fsync", "always", NULL};
    struct dutil_daemon_opts opts = {.dir = dir, .log_name = "fb.log", .log_pipe = 1};
    struct dutil_daemon d;
    dutil_daemon_start_opts(&d, NULL, extra, &opts);
    pid_t fb = d.pid;
    int port = d.port;
    const char *log = d.log;

    char buf[4096];
    int n = 0, accepted[64], naccepted = 0;
    for (int i = 0; i < 3; i++, n++) {
        ck_assert_int_eq(post(port, n, buf, sizeof(buf)), 200);
        accepted[naccepted++] = n;
    }
    ck_assert_int_eq(wait_readyz(port, 200, 2000), 200);

    for (int episode = 1; episode <= 2; episode++) {
        set_fsize(fb, 0);
        for (int i = 0; i < 6; i++, n++) {
            int st = post(port, n, buf, sizeof(buf));
            ck_assert_msg(st == 503, "episode %d alert %d: %d while writes fail:\n%s", episode, n,
                          st, buf);
            ck_assert_msg(strstr(buf, "Retry-After:"), "503 without Retry-After:\n%s", buf);
            ck_assert_ptr_nonnull(strstr(buf, "\"result\":\"failure\""));
            dutil_msleep(100); /* across the journal's 250 ms retries */
        }
        ck_assert_int_eq(wait_readyz(port, 503, 0), 503);
        ck_assert_int_eq(dutil_metric(port, "firebridge_journal_writable"), 0);
        ck_assert_int_ge(dutil_metric(port, "firebridge_journal_errors_total{op=\"write\"}"), 2);
        ck_assert_msg(log_count(log, TROUBLE_LINE) == episode,
                      "episode %d: %d trouble lines (one per episode expected):\n%s", episode,
                      log_count(log, TROUBLE_LINE), dutil_slurp(log, NULL));

        set_fsize(fb, RLIM_INFINITY);
        ck_assert_int_eq(wait_readyz(port, 200, 5000 * dutil_slow()), 200);
        ck_assert_int_eq(dutil_metric(port, "firebridge_journal_writable"), 1);
        /* the line reaches the file through a pipe and cat: allow it a moment */
        for (int waited = 0; log_count(log, RECOVERED_LINE) < episode && waited < 5000;
             waited += 20)
            dutil_msleep(20);
        ck_assert_int_eq(log_count(log, RECOVERED_LINE), episode);
        for (int i = 0; i < 3; i++, n++) {
            ck_assert_int_eq(post(port, n, buf, sizeof(buf)), 200);
            accepted[naccepted++] = n;
        }
    }
    ck_assert_int_eq(log_count(log, TROUBLE_LINE), 2);

    /* every alert answered 200 reaches the room (a 503'd one may too: its records were kept) */
    json_t *msgs = dutil_room_messages(hport, "77", (size_t)naccepted, 10000 * dutil_slow());
    char *all = json_dumps(msgs, 0);
    for (int i = 0; i < naccepted; i++) {
        char want[64];
        snprintf(want, sizeof(want), "\"disk alert %d\"", accepted[i]);
        ck_assert_msg(strstr(all, want), "alert %d answered 200 was not delivered: %s",
                      accepted[i], all);
    }
    free(all);
    json_decref(msgs);
    /* each delivery went out at its first attempt: the journal wrote no attempt record for
     * any of them (the accepted record counts the first attempt) */
    ck_assert_int_ge(dutil_metric(port,
                                  "firebridge_journal_records_total{type=\"delivery_accepted\"}"),
                     naccepted);
    ck_assert_int_eq(dutil_metric(port,
                                  "firebridge_journal_records_total{type=\"delivery_attempt\"}"),
                     0);

    rig_stop(&r, &d);
}
END_TEST

/* The size of the newest segment file in dir. */
static long newest_segment_size(const char *dir_path)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "ls %s/journal/*.log | sort | tail -1 | xargs stat -c %%s", dir_path);
    FILE *f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    long n = -1;
    ck_assert_int_eq(fscanf(f, "%ld", &n), 1);
    pclose(f);
    return n;
}

static int post_named(int port, const char *prefix, int n, char *buf, size_t cap)
{
    char body[256];
    snprintf(body, sizeof(body),
             "{\"message_type\":\"CRITICAL\",\"entity_id\":\"%s-%d\","
             "\"entity_display_name\":\"%s alert %d\"}",
             prefix, n, prefix, n);
    return dutil_post(port, ALERT_PATH, NULL, body, buf, cap);
}

/* How many room messages say exactly "<prefix> alert n". */
static int times_in_room(json_t *msgs, const char *prefix, int n)
{
    char want[64];
    snprintf(want, sizeof(want), "%s alert %d", prefix, n);
    int k = 0;
    size_t i;
    json_t *m;
    json_array_foreach (msgs, i, m) {
        const char *text = json_string_value(json_object_get(m, "message"));
        k += text && strcmp(text, want) == 0;
    }
    return k;
}

#define NPOST 40
#define EPISODES 5

START_TEST(refused_alerts_leave_nothing)
{
    struct rig r;
    rig_start(&r, "fbr-jdisk2", 1);
    const char *cfg = r.cfg, *data = r.data;
    int hport = r.hport;
    const char *extra[] = {"-c", cfg, "--fsync", "always", "--room-rate", "1000000/1",
                           "--token-rate", "1000000/1", NULL};
    struct dutil_daemon_opts opts = {.dir = dir, .log_name = "fb.log", .log_pipe = 1};
    struct dutil_daemon d;
    dutil_daemon_start_opts(&d, NULL, extra, &opts);
    pid_t fb = d.pid;
    int port = d.port;

    char buf[4096];
    for (int i = 0; i < 20; i++)
        ck_assert_int_eq(post_named(port, "warm", i, buf, sizeof(buf)), 200);
    json_t *msgs = dutil_room_messages(hport, "77", 20, 10000 * dutil_slow());
    ck_assert_int_eq(json_array_size(msgs), 20);
    json_decref(msgs);

    /* room for about two more alerts in this segment: a write fails in the middle.  When the
     * write that fails carries only delivery records (an attempt, a finish), the alerts after it
     * are refused before anything happens: a new episode, up to EPISODES times. */
    int status[NPOST], n200 = 0, n503 = 0, processed503 = 0, total = 0;
    for (int episode = 0; episode < EPISODES && !processed503; episode++) {
        /* a different cut each time: where it falls in the records is not the same again */
        set_fsize(fb, (rlim_t)newest_segment_size(data) + 2600 + 333 * (rlim_t)episode);
        for (int k = 0; k < NPOST / EPISODES; k++, total++) {
            int i = total;
            status[i] = post_named(port, "disk", i, buf, sizeof(buf));
            ck_assert_msg(status[i] == 200 || status[i] == 503, "alert %d: %d\n%s", i,
                          status[i], buf);
            n200 += status[i] == 200;
            n503 += status[i] == 503;
            processed503 += status[i] == 503 && strstr(buf, "could not be written") != NULL;
        }
        dutil_msleep(600); /* the journal's retries (on a fresh segment) */
        set_fsize(fb, RLIM_INFINITY);
        ck_assert_int_eq(wait_readyz(port, 200, 5000 * dutil_slow()), 200);
    }
    ck_assert_msg(n503 > 0 && n200 > 0, "%d answered 200, %d 503", n200, n503);
    ck_assert_msg(processed503 > 0, "no alert failed after it was processed");

    /* every 200 is delivered; once they are, and a little later, no 503 is */
    msgs = dutil_room_messages(hport, "77", (size_t)(20 + n200), 10000 * dutil_slow());
    json_decref(msgs);
    dutil_msleep(500);
    msgs = dutil_room_messages(hport, "77", 0, 0);
    for (int i = 0; i < total; i++)
        ck_assert_msg(times_in_room(msgs, "disk", i) == (status[i] == 200),
                      "alert %d answered %d is in the room %d time(s)", i, status[i],
                      times_in_room(msgs, "disk", i));
    json_decref(msgs);

    /* a kill -9 and a restart replay the journal: still none of them */
    kill(fb, SIGKILL);
    dutil_wait_exit(&d.pid, 5000, NULL);
    dutil_wait_exit(&d.log_pid, 5000, NULL);
    opts.log_name = "fb-restarted.log";
    dutil_daemon_start_opts(&d, NULL, extra, &opts);
    port = d.port;
    ck_assert_int_eq(wait_readyz(port, 200, 5000 * dutil_slow()), 200);
    ck_assert_int_eq(post_named(port, "fence", 0, buf, sizeof(buf)), 200);
    for (int tries = 0; tries < 500 * dutil_slow(); tries++) {
        msgs = dutil_room_messages(hport, "77", 0, 0);
        int fenced = times_in_room(msgs, "fence", 0);
        json_decref(msgs);
        if (fenced)
            break;
        dutil_msleep(20);
    }
    dutil_msleep(500);
    msgs = dutil_room_messages(hport, "77", 0, 0);
    ck_assert_int_eq(times_in_room(msgs, "fence", 0), 1);
    for (int i = 0; i < total; i++)
        if (status[i] == 503)
            ck_assert_msg(times_in_room(msgs, "disk", i) == 0,
                          "alert %d answered 503 reached the room after the restart", i);
    json_decref(msgs);

    /* the senders retry: each refused alert triggers its incident and is delivered once */
    for (int i = 0; i < total; i++)
        if (status[i] == 503)
            ck_assert_int_eq(post_named(port, "disk", i, buf, sizeof(buf)), 200);
    msgs = dutil_room_messages(hport, "77", (size_t)(20 + total + 1), 10000 * dutil_slow());
    for (int i = 0; i < total; i++)
        if (status[i] == 503)
            ck_assert_msg(times_in_room(msgs, "disk", i) == 1,
                          "alert %d, refused then sent again, is in the room %d time(s)", i,
                          times_in_room(msgs, "disk", i));
    json_decref(msgs);

    rig_stop(&r, &d);
}
END_TEST

/* One sender of written_records_stay_answered: posts "<prefix> alert i" in turn until it was
 * answered 503 three times (or SENDER_MAX posts), one "i status" line per post in out_path. */
#define SENDER_MAX 600

static void sender(int port, const char *prefix, const char *out_path)
{
    FILE *f = fopen(out_path, "w");
    if (!f)
        _exit(2);
    char buf[4096];
    for (int i = 0, refused = 0; i < SENDER_MAX && refused < 3; i++) {
        int st = post_named(port, prefix, i, buf, sizeof(buf));
        fprintf(f, "%d %d\n", i, st);
        fflush(f);
        refused += st == 503;
    }
    fclose(f);
    _exit(0);
}

#define NSENDERS 8
#define NROUNDS 3

/*
 * --fsync always under concurrent load: when a write fails, the batch written just before it is
 * usually still waiting for its fdatasync.  Those alerts' records are in the file already; they
 * must not be answered 503 on account of the later write (their fdatasync decides), since the
 * records taking a refused alert back cannot be written while writes fail: a kill -9 in the
 * middle of the episode would replay them and deliver alerts the senders were told to retry.
 * Each round: 8 senders post until writes fail (the limit is set under load) and each was
 * refused three times, then kill -9 with writes still failing, a restart on the same data, and
 * no alert answered 503 may reach the room while every 200 does.  Failed on the old journal
 * (all waiters failed at a write error), 3 runs of 3: 'round 1: r1c2 alert 98 answered 503
 * reached the room'.
 */
START_TEST(written_records_stay_answered)
{
    struct rig r;
    rig_start(&r, "fbr-jdisk3", 1);
    const char *cfg = r.cfg, *data = r.data;
    int hport = r.hport;
    const char *extra[] = {"-c", cfg, "--fsync", "always", "--room-rate", "1000000/1",
                           "--token-rate", "1000000/1", NULL};
    struct dutil_daemon_opts opts = {.dir = dir, .log_name = "fb-0.log", .log_pipe = 1};
    struct dutil_daemon d;
    dutil_daemon_start_opts(&d, NULL, extra, &opts);
    char buf[4096];
    size_t in_room = 0; /* messages the room had before this round */
    char log_name[32];

    for (int round = 1; round <= NROUNDS; round++) {
        pid_t kids[NSENDERS];
        char outs[NSENDERS][128], prefix[NSENDERS][16];
        for (int k = 0; k < NSENDERS; k++) {
            snprintf(outs[k], sizeof(outs[k]), "%s/sender-%d-%d", dir, round, k);
            snprintf(prefix[k], sizeof(prefix[k]), "r%dc%d", round, k);
            kids[k] = fork();
            ck_assert_int_ge(kids[k], 0);
            if (kids[k] == 0)
                sender(d.port, prefix[k], outs[k]);
        }
        dutil_msleep(300); /* under load: a batch is usually waiting for its fdatasync */
        set_fsize(d.pid, (rlim_t)newest_segment_size(data) + 20000);
        for (int k = 0; k < NSENDERS; k++) {
            int st;
            ck_assert_int_eq(waitpid(kids[k], &st, 0), kids[k]);
            ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "sender %d failed", k);
        }
        /* writes still fail: the journal's retries cannot write what took the 503s back */
        ck_assert_int_eq(wait_readyz(d.port, 503, 0), 503);
        kill(d.pid, SIGKILL);
        dutil_wait_exit(&d.pid, 5000, NULL);
        dutil_wait_exit(&d.log_pid, 5000, NULL);
        snprintf(log_name, sizeof(log_name), "fb-%d.log", round);
        opts.log_name = log_name;
        dutil_daemon_start_opts(&d, NULL, extra, &opts);
        ck_assert_int_eq(wait_readyz(d.port, 200, 5000 * dutil_slow()), 200);

        /* the replay sends what it keeps; a fence posted now arrives after it */
        char fence[16];
        snprintf(fence, sizeof(fence), "fence%d", round);
        ck_assert_int_eq(post_named(d.port, fence, 0, buf, sizeof(buf)), 200);
        json_t *msgs = NULL;
        for (int tries = 0; tries < 500 * dutil_slow(); tries++) {
            json_decref(msgs);
            msgs = dutil_room_messages(hport, "77", 0, 0);
            if (times_in_room(msgs, fence, 0))
                break;
            dutil_msleep(20);
        }
        dutil_msleep(500);
        json_decref(msgs);
        msgs = dutil_room_messages(hport, "77", 0, 0);
        ck_assert_int_eq(times_in_room(msgs, fence, 0), 1);
        int n200 = 0, n503 = 0;
        for (int k = 0; k < NSENDERS; k++) {
            FILE *f = fopen(outs[k], "r");
            ck_assert_ptr_nonnull(f);
            int i, st;
            while (fscanf(f, "%d %d", &i, &st) == 2) {
                int times = times_in_room(msgs, prefix[k], i);
                ck_assert_msg(st != 503 || times == 0,
                              "round %d: %s alert %d answered 503 reached the room", round,
                              prefix[k], i);
                ck_assert_msg(st != 200 || times >= 1,
                              "round %d: %s alert %d answered 200 was not delivered", round,
                              prefix[k], i);
                n200 += st == 200;
                n503 += st == 503;
            }
            fclose(f);
        }
        ck_assert_msg(n200 > 0 && n503 >= NSENDERS, "round %d: %d answered 200, %d 503", round,
                      n200, n503);
        ck_assert_uint_gt(json_array_size(msgs), in_room);
        in_room = json_array_size(msgs);
        json_decref(msgs);
    }

    rig_stop(&r, &d);
}
END_TEST

/*
 * A journal left by a run with --journal on is not read with --journal off: the daemon says so
 * at start, naming the directory, instead of silently not sending what was pending in it (before:
 * no line at all, and the 200'd alerts pending there were never delivered).
 */
START_TEST(journal_off_names_the_unread_journal)
{
    dutil_tmpdir(dir, sizeof(dir), "fbr-jdisk4");
    char cfg[128], origin[64];
    snprintf(cfg, sizeof(cfg), "%s/fb.json", dir);
    /* nothing listens there: the deliveries stay pending */
    snprintf(origin, sizeof(origin), "http://127.0.0.1:%d/", dutil_free_port());
    dutil_seed_config(cfg, origin, "77", "tok-77");
    const char *on[] = {"-c", cfg, "--drain-timeout", "1", NULL};
    struct dutil_daemon_opts opts = {.dir = dir, .log_name = "fb-on.log"};
    struct dutil_daemon d;
    dutil_daemon_start_opts(&d, NULL, on, &opts);
    char buf[4096];
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(post(d.port, i, buf, sizeof(buf)), 200);
    dutil_daemon_stop(&d);
    ck_assert_int_eq(log_count(d.log, "stay in the journal"), 1);

    const char *off[] = {"-c", cfg, "--journal", "off", NULL};
    opts.log_name = "fb-off.log";
    dutil_daemon_start_opts(&d, NULL, off, &opts);
    ck_assert_msg(log_count(d.log, "journal segment(s) from a run with --journal on") == 1,
                  "no word about the unread journal:\n%s", dutil_slurp(d.log, NULL));
    ck_assert_int_eq(log_count(d.log, "/journal holds 1 journal segment(s)"), 1);
    dutil_daemon_stop(&d);
    dutil_rm_rf(dir);
}
END_TEST

/*
 * A delivery's "delivered" outcome is appended lazily (journal.h, fbr_journal_append_lazy): it
 * rides the next write, or its own timer writes it when nothing follows.  So a daemon that
 * delivered an alert and then saw nothing more has written the outcome by the time it is killed
 * with kill -9 a moment later, and the restart sends nothing again.  Without the timer the record
 * would wait in the buffer for the next alert, and the restart would send the alert twice.
 */
START_TEST(delivered_outcome_written_when_quiet)
{
    struct rig r;
    rig_start(&r, "fbr-jdisk5", 1);
    const char *extra[] = {"-c", r.cfg, "--room-rate", "1000000/1", "--token-rate", "1000000/1",
                           NULL};
    struct dutil_daemon_opts opts = {.dir = dir, .log_name = "fb-0.log", .log_pipe = 1};
    struct dutil_daemon d;
    dutil_daemon_start_opts(&d, NULL, extra, &opts);
    char buf[4096];
    ck_assert_int_eq(post_named(d.port, "quiet", 1, buf, sizeof(buf)), 200);
    json_t *msgs = dutil_room_messages(r.hport, "77", 1, 10000 * dutil_slow());
    ck_assert_int_eq(times_in_room(msgs, "quiet", 1), 1);
    json_decref(msgs);
    /* the 204 is read a moment after the room has the message; then the lazy window passes */
    dutil_msleep(300);
    ck_assert_int_eq(dutil_metric(d.port, "firebridge_deliveries_pending"), 0);
    kill(d.pid, SIGKILL);
    dutil_wait_exit(&d.pid, 5000, NULL);
    dutil_wait_exit(&d.log_pid, 5000, NULL);
    opts.log_name = "fb-1.log";
    dutil_daemon_start_opts(&d, NULL, extra, &opts);
    ck_assert_int_eq(wait_readyz(d.port, 200, 5000 * dutil_slow()), 200);
    /* a fence: once it is in the room, a replayed delivery would be there before it */
    ck_assert_int_eq(post_named(d.port, "fence", 1, buf, sizeof(buf)), 200);
    for (int tries = 0; tries < 500 * dutil_slow(); tries++) {
        msgs = dutil_room_messages(r.hport, "77", 0, 0);
        int fenced = times_in_room(msgs, "fence", 1);
        json_decref(msgs);
        if (fenced)
            break;
        dutil_msleep(20);
    }
    msgs = dutil_room_messages(r.hport, "77", 0, 0);
    ck_assert_int_eq(times_in_room(msgs, "fence", 1), 1);
    ck_assert_msg(times_in_room(msgs, "quiet", 1) == 1,
                  "the delivered alert came back after kill -9: its outcome was not written");
    json_decref(msgs);
    rig_stop(&r, &d);
}
END_TEST

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("journal_disk");
    TCase *tc = tcase_create("efbig");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, efbig_means_503_then_recovers_by_itself);
    tcase_add_test(tc, refused_alerts_leave_nothing);
    tcase_add_test(tc, written_records_stay_answered);
    tcase_add_test(tc, journal_off_names_the_unread_journal);
    tcase_add_test(tc, delivered_outcome_written_when_quiet);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
