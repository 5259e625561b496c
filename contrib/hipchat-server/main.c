/*
 * main.c - hipchat-server's start and stop: flags and the JSON config file (rooms, tokens,
 * rates, faults), the listener (plain or TLS), the loop, and a clean shutdown that frees
 * everything (the tests run it under sanitizers and check its exit status).  See hcs.h for the
 * map of the other files and README-hipchat-server.md for the flags.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "firebridge/config.h"
#include "hcs.h"

static int add_room_token_arg(struct hcs *s, const char *arg)
{
    const char *colon = strrchr(arg, ':');
    if (!colon || colon == arg || !colon[1] || (size_t)(colon - arg) >= HCS_MAX_ROOM_KEY)
        return FBR_ERROR;
    char id[HCS_MAX_ROOM_KEY];
    memcpy(id, arg, (size_t)(colon - arg));
    id[colon - arg] = '\0';
    hcs_room_add_token(s, hcs_room_add(s, id, NULL), colon + 1);
    return FBR_OK;
}

static void add_global_token(struct hcs *s, const char *token)
{
    s->global_tokens =
        fbr_xrealloc(s->global_tokens, (s->nglobal_tokens + 1) * sizeof(*s->global_tokens));
    s->global_tokens[s->nglobal_tokens++] = fbr_xstrdup(token);
    hcs_token_get(s, token, 1)->configured = 1;
}

/* Checks o against a table with the library's config checker (same messages as firebridge's
 * own config file: the key's JSON path, unknown keys and wrong types all reported). */
static int check_object(json_t *o, const char *path, const struct fbr_field *fields, size_t n,
                        const char *file)
{
    char err[1024] = "";
    if (fbr_config_check_object(o, path, fields, n, err, sizeof(err)) == 0)
        return FBR_OK;
    fprintf(stderr, "hipchat-server: %s:\n%s\n", file, err);
    return FBR_ERROR;
}

/* Loads the JSON config file; see README-hipchat-server.md for its shape. */
static int load_config(struct hcs *s, const char *file)
{
    static const struct fbr_field top[] = {
        {"rooms", FBR_F_ARRAY, 0, 0, 0},      {"tokens", FBR_F_ARRAY, 0, 0, 0},
        {"any_token", FBR_F_BOOL, 0, 0, 0},   {"any_room", FBR_F_BOOL, 0, 0, 0},
        {"room_rate", FBR_F_STRING, 0, 0, 0}, {"token_rate", FBR_F_STRING, 0, 0, 0},
        {"faults", FBR_F_ANY, 0, 0, 0},
    };
    static const struct fbr_field room[] = {
        {"id", FBR_F_ANY, 1, 0, 0},
        {"name", FBR_F_STRING, 0, 0, 0},
        {"tokens", FBR_F_ARRAY, 0, 0, 0},
    };
    json_error_t jerr;
    char err[256];
    json_t *j = json_load_file(file, JSON_REJECT_DUPLICATES, &jerr);
    if (!j) {
        fprintf(stderr, "hipchat-server: %s:%d: %s\n", file, jerr.line, jerr.text);
        return FBR_ERROR;
    }
    int rc = -1;
    json_t *rooms = json_object_get(j, "rooms"), *v;
    size_t i;
    if (check_object(j, "", top, FBR_ARRAY_LEN(top), file) < 0)
        goto out;
    json_array_foreach(rooms, i, v)
    {
        char where[48];
        snprintf(where, sizeof(where), "rooms[%zu]", i);
        if (check_object(v, where, room, FBR_ARRAY_LEN(room), file) < 0)
            goto out;
        json_t *id = json_object_get(v, "id");
        char idbuf[32];
        const char *ids = json_string_value(id);
        if (json_is_integer(id)) {
            snprintf(idbuf, sizeof(idbuf), "%" JSON_INTEGER_FORMAT, json_integer_value(id));
            ids = idbuf;
        }
        if (!ids || !*ids || strlen(ids) >= HCS_MAX_ROOM_KEY) {
            fprintf(stderr, "hipchat-server: %s: rooms[%zu].id must be a string or integer\n", file,
                    i);
            goto out;
        }
        struct hcs_room *r = hcs_room_add(s, ids, json_string_value(json_object_get(v, "name")));
        size_t k;
        json_t *t;
        json_array_foreach(json_object_get(v, "tokens"), k, t)
        {
            if (json_is_string(t) && json_string_length(t) > 0)
                hcs_room_add_token(s, r, json_string_value(t));
        }
    }
    json_array_foreach(json_object_get(j, "tokens"), i, v)
    {
        if (json_is_string(v) && json_string_length(v) > 0)
            add_global_token(s, json_string_value(v));
    }
    s->any_token |= json_is_true(json_object_get(j, "any_token"));
    s->any_room |= json_is_true(json_object_get(j, "any_room"));
    const char *rr = json_string_value(json_object_get(j, "room_rate"));
    const char *tr = json_string_value(json_object_get(j, "token_rate"));
    if ((rr && hcs_rate_parse(rr, &s->room_rate) < 0) ||
        (tr && hcs_rate_parse(tr, &s->token_rate) < 0)) {
        fprintf(stderr, "hipchat-server: %s: rates look like \"30/60\" or \"off\"\n", file);
        goto out;
    }
    if ((v = json_object_get(j, "faults")) && hcs_faults_add_json(s, v, err, sizeof(err)) < 0) {
        fprintf(stderr, "hipchat-server: %s: faults: %s\n", file, err);
        goto out;
    }
    rc = 0;
out:
    json_decref(j);
    return rc;
}

static void usage(FILE *out)
{
    fputs("usage: hipchat-server [options]\n"
          "  --listen ADDR:PORT     listen address (default 127.0.0.1:0; port 0 picks one)\n"
          "  --config FILE          JSON config: rooms, tokens, rates, faults\n"
          "  --room ID:TOKEN        a room and a token valid for it (repeatable)\n"
          "  --token TOKEN          a token valid for every room (repeatable)\n"
          "  --any-token            accept any non-empty token\n"
          "  --any-room             create unknown rooms on first use instead of 404\n"
          "  --room-rate N/SEC      flood control per room (default 30/60; 'off' lifts it)\n"
          "  --token-rate N/SEC     rate limit per token (default 500/300; 'off' lifts it)\n"
          "  --no-limits            same as --room-rate off --token-rate off\n"
          "  --strict-keys          reject unknown body fields with 400\n"
          "  --max-messages N       messages kept over all rooms (default 100000)\n"
          "  --max-stored-bytes N   bytes of messages kept, as JSON (default 134217728)\n"
          "  --max-rooms N          rooms --any-room may create (default 100000)\n"
          "  --max-tokens N         tokens --any-token tracks one by one (default 10000)\n"
          "  --quiet                do not print accepted messages on stdout\n"
          "  --max-body BYTES       largest request body (default 1048576)\n"
          "  --idle-timeout SEC     close idle connections (default 60)\n"
          "  --fault JSON           a fault rule, as for POST /faults (repeatable)\n"
          "  --tls-cert FILE --tls-key FILE   serve HTTPS with this certificate\n"
          "Connect add-ons:\n"
          "  --public-url URL       this server's base URL in /v2/capabilities and install\n"
          "                         callbacks (default: scheme://listen-host:port)\n"
          "  --token-ttl SEC        expires_in of tokens from /v2/oauth/token (default 3600)\n"
          "  --ca-file FILE         CA certificates for HTTPS requests to add-ons (default:\n"
          "                         the system store)\n"
          "  --max-addons N         installations kept (default 1000)\n"
          "  --outbound-timeout SEC timeout of each request to an add-on (default 10)\n",
          out);
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopexit(arg, NULL);
}

static int bound_port(evhtp_t *htp)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(evconnlistener_get_fd(htp->server), (struct sockaddr *)&ss, &sl) != 0)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* scheme://host:port as add-ons reach this server: the listen address, with the wildcard
 * addresses replaced by loopback. */
static char *default_public_url(evhtp_t *htp, const char *cert, const char *host, int family)
{
    char buf[160];
    const char *h = host;
    if (strcmp(h, "0.0.0.0") == 0)
        h = "127.0.0.1";
    else if (strcmp(h, "::") == 0)
        h = "::1";
    snprintf(buf, sizeof(buf), "%s://%s%s%s:%d", cert ? "https" : "http",
             family == AF_INET6 ? "[" : "", h, family == AF_INET6 ? "]" : "", bound_port(htp));
    return fbr_xstrdup(buf);
}

static void hcs_free(struct hcs *s)
{
    hcs_addons_free(s);
    hcs_oauth_free(s);
    free(s->public_url);
    hcs_faults_clear(s);
    hcs_rooms_free(s);
    hcs_tokens_free(s);
}

int main(int argc, char **argv)
{
    enum {
        OPT_LISTEN = 256,
        OPT_CONFIG,
        OPT_ROOM,
        OPT_TOKEN,
        OPT_ANY_TOKEN,
        OPT_ANY_ROOM,
        OPT_ROOM_RATE,
        OPT_TOKEN_RATE,
        OPT_NO_LIMITS,
        OPT_STRICT,
        OPT_MAX_MESSAGES,
        OPT_MAX_BODY,
        OPT_IDLE,
        OPT_FAULT,
        OPT_CERT,
        OPT_KEY,
        OPT_HELP,
        OPT_MAX_STORED,
        OPT_MAX_ROOMS,
        OPT_MAX_TOKENS,
        OPT_QUIET,
        OPT_PUBLIC_URL,
        OPT_TOKEN_TTL,
        OPT_CA_FILE,
        OPT_MAX_ADDONS,
        OPT_OUT_TIMEOUT
    };
    static const struct option opts[] = {
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"config", required_argument, NULL, OPT_CONFIG},
        {"room", required_argument, NULL, OPT_ROOM},
        {"token", required_argument, NULL, OPT_TOKEN},
        {"any-token", no_argument, NULL, OPT_ANY_TOKEN},
        {"any-room", no_argument, NULL, OPT_ANY_ROOM},
        {"room-rate", required_argument, NULL, OPT_ROOM_RATE},
        {"token-rate", required_argument, NULL, OPT_TOKEN_RATE},
        {"no-limits", no_argument, NULL, OPT_NO_LIMITS},
        {"strict-keys", no_argument, NULL, OPT_STRICT},
        {"max-messages", required_argument, NULL, OPT_MAX_MESSAGES},
        {"max-body", required_argument, NULL, OPT_MAX_BODY},
        {"idle-timeout", required_argument, NULL, OPT_IDLE},
        {"fault", required_argument, NULL, OPT_FAULT},
        {"tls-cert", required_argument, NULL, OPT_CERT},
        {"tls-key", required_argument, NULL, OPT_KEY},
        {"help", no_argument, NULL, OPT_HELP},
        {"max-stored-bytes", required_argument, NULL, OPT_MAX_STORED},
        {"max-rooms", required_argument, NULL, OPT_MAX_ROOMS},
        {"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"public-url", required_argument, NULL, OPT_PUBLIC_URL},
        {"token-ttl", required_argument, NULL, OPT_TOKEN_TTL},
        {"ca-file", required_argument, NULL, OPT_CA_FILE},
        {"max-addons", required_argument, NULL, OPT_MAX_ADDONS},
        {"outbound-timeout", required_argument, NULL, OPT_OUT_TIMEOUT},
        {NULL, 0, NULL, 0},
    };
    struct hcs s = {0};
    fbr_strmap_init(&s.rooms);
    fbr_strmap_init(&s.tokens);
    s.room_rate = (struct hcs_rate){30, 60};
    s.token_rate = (struct hcs_rate){500, 300};
    s.max_messages = 100000;
    s.max_tokens = 10000;
    s.max_rooms = 100000;
    s.max_stored_bytes = (size_t)128 << 20;
    s.max_body = 1u << 20;
    s.token_ttl_s = 3600;
    s.max_addons = 1000;
    fbr_strmap_init(&s.addons);
    fbr_strmap_init(&s.grants);
    const char *listen = "127.0.0.1:0", *cert = NULL, *key = NULL, *ca_file = NULL;
    const char *public_url = NULL;
    long idle = 60, out_timeout = 10;
    int rc = 1, opt;
    char err[256];
    struct hcs_rate rr_flag = {0, 0}, tr_flag = {0, 0};
    evhtp_ssl_cfg_t cfg = {0}; /* evhtp keeps a pointer to it: it must outlive the server */

    signal(SIGPIPE, SIG_IGN);
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        switch (opt) {
        case OPT_LISTEN:
            listen = optarg;
            break;
        case OPT_CONFIG:
            if (load_config(&s, optarg) < 0)
                goto out;
            break;
        case OPT_ROOM:
            if (add_room_token_arg(&s, optarg) < 0) {
                fprintf(stderr, "hipchat-server: --room wants ID:TOKEN\n");
                goto out;
            }
            break;
        case OPT_TOKEN:
            add_global_token(&s, optarg);
            break;
        case OPT_ANY_TOKEN:
            s.any_token = 1;
            break;
        case OPT_ANY_ROOM:
            s.any_room = 1;
            break;
        case OPT_ROOM_RATE:
        case OPT_TOKEN_RATE:
            if (hcs_rate_parse(optarg, opt == OPT_ROOM_RATE ? &rr_flag : &tr_flag) < 0) {
                fprintf(stderr, "hipchat-server: a rate looks like 30/60 or off\n");
                goto out;
            }
            break;
        case OPT_NO_LIMITS:
            rr_flag = tr_flag = (struct hcs_rate){HCS_LIFTED_LIMIT, 1};
            break;
        case OPT_STRICT:
            s.strict_keys = 1;
            break;
        case OPT_QUIET:
            s.quiet = 1;
            break;
        case OPT_MAX_MESSAGES:
        case OPT_MAX_BODY:
        case OPT_MAX_STORED:
        case OPT_MAX_ROOMS:
        case OPT_MAX_TOKENS:
        case OPT_TOKEN_TTL:
        case OPT_MAX_ADDONS:
        case OPT_OUT_TIMEOUT:
        case OPT_IDLE: {
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg || v == 0 || v > (1ull << 40)) {
                fprintf(stderr, "hipchat-server: bad number '%s'\n", optarg);
                goto out;
            }
            if (opt == OPT_MAX_MESSAGES)
                s.max_messages = (size_t)v;
            else if (opt == OPT_MAX_BODY)
                s.max_body = (size_t)v;
            else if (opt == OPT_MAX_STORED)
                s.max_stored_bytes = (size_t)v;
            else if (opt == OPT_MAX_ROOMS)
                s.max_rooms = (size_t)v;
            else if (opt == OPT_MAX_TOKENS)
                s.max_tokens = (size_t)v;
            else if (opt == OPT_TOKEN_TTL)
                s.token_ttl_s = (long)v;
            else if (opt == OPT_MAX_ADDONS)
                s.max_addons = (size_t)v;
            else if (opt == OPT_OUT_TIMEOUT)
                out_timeout = v > 3600 ? 3600 : (long)v;
            else
                idle = (long)v;
            break;
        }
        case OPT_FAULT: {
            json_error_t jerr;
            json_t *j = json_loads(optarg, 0, &jerr);
            int bad = !j || hcs_faults_add_json(&s, j, err, sizeof(err)) < 0;
            if (bad)
                fprintf(stderr, "hipchat-server: --fault: %s\n", j ? err : jerr.text);
            json_decref(j);
            if (bad)
                goto out;
            break;
        }
        case OPT_PUBLIC_URL:
            public_url = optarg;
            if ((strncmp(optarg, "http://", 7) != 0 && strncmp(optarg, "https://", 8) != 0) ||
                strlen(optarg) > 400 || strpbrk(optarg, " \r\n\"")) {
                fprintf(stderr, "hipchat-server: --public-url wants http(s)://host:port\n");
                goto out;
            }
            break;
        case OPT_CA_FILE:
            ca_file = optarg;
            break;
        case OPT_CERT:
            cert = optarg;
            break;
        case OPT_KEY:
            key = optarg;
            break;
        case OPT_HELP:
            usage(stdout);
            rc = 0;
            goto out;
        default:
            usage(stderr);
            goto out;
        }
    }
    if (optind < argc || (!cert != !key)) {
        usage(stderr);
        goto out;
    }
    if (rr_flag.limit)
        s.room_rate = rr_flag;
    if (tr_flag.limit)
        s.token_rate = tr_flag;

    char host[72], bind_host[80];
    int family;
    uint16_t port;
    if (fbr_listen_parse(listen, host, sizeof(host), &family, &port) != FBR_OK) {
        fprintf(stderr, "hipchat-server: bad --listen '%s'\n", listen);
        goto out;
    }
    snprintf(bind_host, sizeof(bind_host), "%s%s", family == AF_INET6 ? "ipv6:" : "", host);
    s.base = event_base_new();
    s.htp = evhtp_new(s.base, NULL);
    evhtp_set_gencb(s.htp, hcs_on_request, &s);
    evhtp_set_post_accept_cb(s.htp, hcs_on_accept, &s);
    struct timeval idle_tv = {idle, 0};
    evhtp_set_timeouts(s.htp, &idle_tv, &idle_tv);
    if (cert) {
        cfg.pemfile = (char *)cert;
        cfg.privfile = (char *)key;
        cfg.ssl_opts = SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1;
        if (access(cert, R_OK) != 0 || access(key, R_OK) != 0 || evhtp_ssl_init(s.htp, &cfg) != 0) {
            fprintf(stderr, "hipchat-server: cannot load the TLS certificate or key\n");
            goto out;
        }
    }
    if (evhtp_bind_socket(s.htp, bind_host, port, 1024) != 0) {
        fprintf(stderr, "hipchat-server: cannot listen on %s\n", listen);
        goto out;
    }
    s.out = hcs_outbound_new(s.base, ca_file, (unsigned)out_timeout);
    if (!s.out)
        goto out;
    s.public_url =
        public_url ? fbr_xstrdup(public_url) : default_public_url(s.htp, cert, host, family);
    size_t ul = strlen(s.public_url);
    while (ul && s.public_url[ul - 1] == '/')
        s.public_url[--ul] = '\0';
    /* Signal handlers before the port is announced: whoever reads it may stop us at once. */
    struct event *sigint = evsignal_new(s.base, SIGINT, on_signal, s.base);
    struct event *sigterm = evsignal_new(s.base, SIGTERM, on_signal, s.base);
    event_add(sigint, NULL);
    event_add(sigterm, NULL);
    printf("listening on %d\n", bound_port(s.htp));
    fflush(stdout);
    fprintf(stderr, "hipchat-server: listening on %s (port %d)%s\n", listen, bound_port(s.htp),
            cert ? " with TLS" : "");
    event_base_dispatch(s.base);
    event_free(sigint);
    event_free(sigterm);
    while (s.conns)
        evhtp_connection_free(s.conns->ec); /* its fini hook unlinks it */
    hcs_outbound_free(&s.out);              /* pending add-on requests end, their operations free */
    rc = 0;
out:
    hcs_outbound_free(&s.out);
    if (s.htp) {
        evhtp_unbind_socket(s.htp);
        evhtp_free(s.htp);
    }
    if (s.base)
        event_base_free(s.base);
    hcs_free(&s);
    return rc;
}
