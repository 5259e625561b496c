/*
 * main.c - the firebridge daemon: parses flags, builds the objects and runs the one event loop.
 * Everything else lives in the library built from the other files of src/.
 */
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

#include "fbr_build.h"
#include "firebridge/log.h"
#include "firebridge/server.h"

static void healthz(struct fbr_http_req *req, void *arg)
{
    fbr_http_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

int main(int argc, char **argv)
{
    const char *listen = argc > 1 ? argv[1] : "127.0.0.1:8080";
    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    struct fbr_server_opts opts = {.max_body = 1 << 20};
    struct fbr_server *srv = fbr_server_new(base, &opts);
    fbr_server_add_route(srv, &(struct fbr_route){.path = "/healthz",
                                                   .methods = FBR_M_GET | FBR_M_HEAD,
                                                   .metric = "healthz",
                                                   .fn = healthz});
    if (fbr_server_listen(srv, listen) != FBR_OK)
        return 1;
    fbr_log_info("firebridge %s started", FBR_VERSION);
    event_base_dispatch(base);
    fbr_server_free(&srv);
    event_base_free(base);
    return 0;
}
