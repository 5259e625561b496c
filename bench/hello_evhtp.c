/*
 * hello_evhtp.c - the baseline for bench/healthz.sh: a bare libevhtp server answering every
 * request with the same small JSON body firebridge's /healthz sends, with none of firebridge's
 * guards (screener, deadlines, metrics, routing).  The ratio of the two req/s figures is the
 * cost of firebridge's inbound layer, the first step of the data path.
 *
 * usage: hello_evhtp [ADDR [PORT]]   (PORT 0 picks one; the bound port is printed on stdout)
 */
#include <event2/event.h>
#include <event2/listener.h>
#include <evhtp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hello(evhtp_request_t *r, void *arg)
{
    static const char body[] = "{\"status\":\"ok\"}\n";
    evhtp_headers_add_header(r->headers_out,
                             evhtp_header_new("Content-Type", "application/json", 0, 0));
    evbuffer_add(r->buffer_out, body, sizeof(body) - 1);
    evhtp_send_reply(r, EVHTP_RES_OK);
}

static void on_term(evutil_socket_t sig, short what, void *arg)
{
    event_base_loopexit(arg, NULL);
}

int main(int argc, char **argv)
{
    const char *addr = argc > 1 ? argv[1] : "127.0.0.1";
    int port = argc > 2 ? atoi(argv[2]) : 0;
    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    evhtp_t *htp = evhtp_new(base, NULL);
    evhtp_set_gencb(htp, hello, NULL);
    if (evhtp_bind_socket(htp, addr, (uint16_t)port, 1024) != 0) {
        fprintf(stderr, "hello_evhtp: cannot bind %s:%d\n", addr, port);
        return 1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    getsockname(evconnlistener_get_fd(htp->server), (struct sockaddr *)&ss, &sl);
    printf("listening on %s:%d\n", addr, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    fflush(stdout);
    struct event *term = evsignal_new(base, SIGTERM, on_term, base);
    event_add(term, NULL);
    event_base_dispatch(base);
    event_free(term);
    evhtp_unbind_socket(htp);
    evhtp_free(htp);
    event_base_free(base);
    return 0;
}
