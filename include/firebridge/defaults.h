/*
 * defaults.h - the one source of the daemon's numeric defaults.  config.c's table takes its
 * defaults from these (as text, through FBR_DEFAULT_TEXT), and every option structure that a
 * test or a benchmark can fill without a configuration (fbr_delivery_opts_init(), a zero field
 * of fbr_client_opts or fbr_server_opts) takes the same constant, so the daemon, the tests and
 * the benchmarks run with the same values.  Change a default here and nowhere else.
 *
 * Each value is a plain decimal literal: FBR_DEFAULT_TEXT() turns it into the table's text.
 */
#ifndef FIREBRIDGE_DEFAULTS_H
#define FIREBRIDGE_DEFAULTS_H

#define FBR_DEFAULT_TEXT_(x) #x
#define FBR_DEFAULT_TEXT(x) FBR_DEFAULT_TEXT_(x)

/* inbound server */
#define FBR_DEFAULT_MAX_BODY 1048576         /* bytes */
#define FBR_DEFAULT_MAX_CONNECTIONS 1024
#define FBR_DEFAULT_READ_TIMEOUT_MS 10000
#define FBR_DEFAULT_IDLE_TIMEOUT_MS 60000 /* also how long the client keeps an unused origin */

/* outbound client */
#define FBR_DEFAULT_CONNECT_TIMEOUT_MS 5000
#define FBR_DEFAULT_REQUEST_TIMEOUT_MS 15000
#define FBR_DEFAULT_POOL_SIZE 16
#define FBR_DEFAULT_PIPELINE 1 /* requests in flight per connection: no pipelining */
/* origins (scheme, host, port) with a connection pool at once; webhook URLs are templates, so
 * alerts could otherwise make one per distinct host (not a config key) */
#define FBR_DEFAULT_MAX_POOLS 256

/* delivery engine */
#define FBR_DEFAULT_MAX_PENDING 10000
#define FBR_DEFAULT_ROOM_RATE_N 30
#define FBR_DEFAULT_ROOM_RATE_SECS 60
#define FBR_DEFAULT_TOKEN_RATE_N 500
#define FBR_DEFAULT_TOKEN_RATE_SECS 300
#define FBR_DEFAULT_RETRY_INITIAL_MS 500
#define FBR_DEFAULT_RETRY_MAX_INTERVAL_MS 60000
#define FBR_DEFAULT_RETRY_MAX_AGE_S 86400
/* an idle destination or token limiter is kept at least this long, even when its window is
 * shorter, so a room fed every few seconds is not rebuilt for each delivery (not a config key) */
#define FBR_DEFAULT_IDLE_KEEP_MS 10000
#define FBR_DEFAULT_FAILING_LOG_INTERVAL_MS 60000 /* "still failing" lines per destination */

/* write-ahead journal */
#define FBR_DEFAULT_FSYNC_INTERVAL_MS 100
#define FBR_DEFAULT_JOURNAL_SEGMENT_SIZE 16777216 /* bytes */

/* daemon */
#define FBR_DEFAULT_DRAIN_TIMEOUT_S 10

#endif
