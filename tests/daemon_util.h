/*
 * daemon_util.h - shared helpers of the integration tests that drive real processes over
 * loopback: the firebridge daemon itself (intake, the first step of the data path, up to
 * delivery) and contrib/hipchat-server (the client's far end).  Start a process with its output
 * in a log file and read its ephemeral port back from that log, stop it with SIGTERM and check
 * its exit status, a small blocking HTTP/1.1 client (connect, send, read one Content-Length
 * response), the daemon's descriptor count, RSS and /metrics values, scratch directories and
 * files.  Failures that make a test meaningless abort the test with ck_assert/ck_abort; each
 * declaration says which.
 *
 * FBR_VALGRIND=1 (meson test --setup=valgrind) makes dutil_spawn_daemon() run the daemon under
 * valgrind with --error-exitcode, and dutil_slow() return 10 so that callers stretch timeouts.
 */
#ifndef FBR_TEST_DAEMON_UTIL_H
#define FBR_TEST_DAEMON_UTIL_H

#include <jansson.h>
#include <stddef.h>
#include <sys/types.h>

/* ---- environment, time, files ---- */

/* Reads a JSON-lines file (dead letters) into a new JSON array: empty when the file cannot be
 * opened; asserts every line parses. */
json_t *dutil_read_jsonl(const char *path);
/* The string at arr[i].key (borrowed), or NULL. */
const char *dutil_jstr(json_t *arr, size_t i, const char *key);

/* 1 when FBR_VALGRIND=1 (the valgrind test setup), else 0. */
int dutil_under_valgrind(void);

/* Factor for timeouts and loop bounds: 10 under valgrind, else 1. */
int dutil_slow(void);

/* Sleeps ms milliseconds. */
void dutil_msleep(int ms);

/*
 * Reads the whole file at path (NUL bytes included) into a new NUL-terminated buffer the caller
 * frees; a missing or unreadable file reads as "".  Never NULL.  *len (when len is not NULL) gets
 * the byte count.
 */
char *dutil_slurp(const char *path, size_t *len);

/* Writes text to path (created or truncated); asserts it could be opened. */
void dutil_write_file(const char *path, const char *text);

/* Makes a fresh directory "/tmp/<prefix>-XXXXXX" into dir (cap bytes); asserts it worked. */
void dutil_tmpdir(char *dir, size_t cap, const char *prefix);

/* Removes dir and everything below it; asserts the removal succeeded. */
void dutil_rm_rf(const char *dir);

/* ---- processes ---- */

/* Called while waiting for a process, instead of sleeping: must take about ms milliseconds. */
typedef void (*dutil_idle_fn)(int ms);

/*
 * Forks and execs argv (NULL-terminated; argv[0] looked up in PATH) with stdout to out_path and
 * stderr to err_path (both created 0600 and truncated; they may be the same path).  With
 * die_with_parent the child gets SIGKILL when the test process ends (PR_SET_PDEATHSIG).
 * Returns the child's pid; asserts fork() worked.
 */
pid_t dutil_spawn(const char *const *argv, const char *out_path, const char *err_path,
                  int die_with_parent);

/*
 * Spawns the daemon ($FBR_DAEMON, asserted set) with args (NULL-terminated, at most 40), stdout
 * and stderr to log; under valgrind (dutil_under_valgrind()) wrapped in valgrind with
 * --error-exitcode=99 and definite-leak checking.  Returns its pid.
 */
pid_t dutil_spawn_daemon(const char *log, const char *const *args);

/*
 * Polls log up to tries times, every_ms apart (idle, or a sleep when idle is NULL), for marker
 * followed by a port number, and returns that port.  Aborts the test when the process *pid
 * exits first (then sets *pid to 0) or when no port appears.
 */
int dutil_wait_port(pid_t *pid, const char *log, const char *marker, int tries, int every_ms,
                    dutil_idle_fn idle);

/*
 * Waits up to ms for *pid to exit, checking every 20 ms (idle, or a sleep when idle is NULL).
 * Returns its wait status and sets *pid to 0, or returns -1 while it still runs.
 */
int dutil_wait_exit(pid_t *pid, int ms, dutil_idle_fn idle);

/*
 * Sends SIGTERM to *pid (when > 0) and waits up to ms as dutil_wait_exit() does.  Returns the wait
 * status; -1 when it did not exit in time, in which case it was killed with SIGKILL and reaped.
 * Sets *pid to 0 either way.  Returns 0 when *pid <= 0.
 */
int dutil_stop(pid_t *pid, int ms, dutil_idle_fn idle);

/*
 * Asserts st (from dutil_stop() or dutil_wait_exit()) is a normal exit with status 0; the failure
 * message quotes the tail of log.  Under ASan or valgrind a memory error makes the status non-zero.
 */
void dutil_assert_exit_zero(int st, const char *log);

/* The daemon as most cases run it: own scratch directory, log in it, ephemeral port. */
struct dutil_daemon {
    pid_t pid;     /* 0 once it has exited */
    int port;      /* the port it reported in its log */
    char dir[64];  /* scratch directory: log, data/ */
    char log[160]; /* its stdout and stderr */
    pid_t log_pid; /* the `cat` writing log when it is piped (dutil_daemon_opts.log_pipe), else 0 */
    int own_dir;   /* 1: dir was made by dutil_daemon_start*() and dutil_daemon_stop() removes it */
};

/* What dutil_daemon_start_opts() changes; all zero (or NULL opts) is dutil_daemon_start(). */
struct dutil_daemon_opts {
    /* Run in this existing directory (the caller's: never removed here) instead of a new
     * /tmp/<prefix>-XXXXXX; restarting on the same dir reuses <dir>/data (a restart, a crash). */
    const char *dir;
    /* The log's file name in the directory; NULL: "log". */
    const char *log_name;
    /* 1: the daemon's stdout and stderr go through a pipe to a `cat` that writes the log, so that
     * a limit set on the daemon (RLIMIT_FSIZE through prlimit(2)) does not silence its log; both
     * die with the test process. */
    int log_pipe;
};

/*
 * Makes a scratch directory /tmp/<prefix>-XXXXXX and starts the daemon in it with
 * "--listen 127.0.0.1:0 --data-dir <dir>/data" and extra (NULL-terminated, may be NULL); waits
 * (up to 200 x 50 ms, times dutil_slow()) for its "listening on 127.0.0.1:<port>" line.
 */
void dutil_daemon_start(struct dutil_daemon *d, const char *prefix, const char *const *extra);

/* dutil_daemon_start() as opts says (NULL: defaults); prefix unused when opts->dir is set. */
void dutil_daemon_start_opts(struct dutil_daemon *d, const char *prefix, const char *const *extra,
                             const struct dutil_daemon_opts *opts);

/*
 * Unless already exited: SIGTERM, waits up to 15 s (times dutil_slow()), asserts exit status 0,
 * waits for the log's `cat` (log_pipe), then removes the scratch directory when it made it.
 */
void dutil_daemon_stop(struct dutil_daemon *d);

/* Number of open descriptors of pid (/proc/<pid>/fd); asserts the directory could be read. */
int dutil_count_fds(pid_t pid);

/* Resident set size of pid in KiB (VmRSS), or -1. */
long dutil_rss_kb(pid_t pid);

/* ---- a blocking HTTP/1.1 client over loopback ---- */

/*
 * Connects to 127.0.0.1:port.  rcvbuf > 0 sets SO_RCVBUF before connecting; rcv_timeout_s and
 * snd_timeout_s > 0 set SO_RCVTIMEO / SO_SNDTIMEO.  Returns the socket (close-on-exec, owned by
 * the caller), or -1 when the connection was refused.  Asserts socket() worked.
 */
int dutil_connect_with(int port, int rcvbuf, int rcv_timeout_s, int snd_timeout_s);

/* dutil_connect_with(port, 0, 5 * dutil_slow(), 0). */
int dutil_connect(int port);

/* Sends all len bytes (no SIGPIPE); returns 0, or -1 once a send fails (peer gone, timeout). */
int dutil_send_all(int fd, const void *buf, size_t len);

/*
 * Reads one response (head and a Content-Length body) into buf (cap bytes, NUL-terminated; a
 * longer response is cut at cap - 1).  Returns its status, or -1 when the connection closed or
 * timed out before a status line arrived.
 */
int dutil_read_response(int fd, char *buf, size_t cap);

/* Sends request on a new connection and reads one response into buf; returns its status.
 * Asserts the connection and the send worked. */
int dutil_http(int port, const char *request, char *buf, size_t cap);

/* GET path with "Connection: close" through dutil_http(). */
int dutil_get(int port, const char *path, char *buf, size_t cap);

/*
 * The value of one series of the daemon's /metrics (exact text before the value, e.g.
 * "name{l=\"v\"}"), or -1 when absent.  Asserts /metrics answered 200.
 */
long long dutil_metric(int port, const char *series);

/*
 * POSTs body (JSON) to path on a new connection ("Connection: close"); `headers` are extra header
 * lines, each ending in "\r\n" (NULL: none).  Returns the status (-1: no response), the whole
 * response in buf.  Asserts the connection and the send worked.
 */
int dutil_post(int port, const char *path, const char *headers, const char *body, char *buf,
               size_t cap);

/* A loopback TCP port that was free a moment ago (bound to port 0, then closed): for programs
 * that cannot listen on port 0 and report the port back (HAProxy). */
int dutil_free_port(void);

/* Wall-clock milliseconds. */
long long dutil_wall_ms(void);

/* ---- the HipChat-compatible server and the seed's Multi-Room configuration ---- */

/* Returns a new string: s with every occurrence of from replaced by to. */
char *dutil_replace_all(const char *s, const char *from, const char *to);

/*
 * Starts $HIPCHAT_SERVER (asserted set) with "--listen 127.0.0.1:0" and flags (NULL-terminated,
 * may be NULL; at most 28), stdout to out and stderr to err, dying with the test process; waits
 * for its "listening on PORT" line.  Returns the pid, the port in *port.
 */
pid_t dutil_hipchat_start(const char *out, const char *err, const char *const *flags, int *port);

/*
 * Writes path: the seed's contrib/examples/multi-room.json (under $FBR_SOURCE_ROOT, asserted
 * set) with "https://DOMAIN.hipchat.com/" replaced by origin ("http://127.0.0.1:PORT/"),
 * ROOM_ID by room and AUTH_TOKEN_HERE by token.  Asserts the seed still has those placeholders.
 */
void dutil_seed_config(const char *path, const char *origin, const char *room, const char *token);

/*
 * Polls hipchat-server's GET /rooms/<room>/messages every 20 ms until the room holds at least n
 * messages or ms pass.  Returns the array of messages (new reference; fewer than n on timeout).
 */
json_t *dutil_room_messages(int port, const char *room, size_t n, int ms);

#endif
