/*
 * http.c - hipchat-server's HTTP plumbing on libevhtp: the connection record kept from accept to
 * close (body size limit, deferred work), reply helpers (headers, JSON bodies, the API's error
 * shape, status counting), request helpers (percent-decoding, query parameters, body) and the
 * hold on a request that waits for an add-on.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "hcs.h"

/* ---------------------------------------------------------------------------------------------
 * Connections.
 */
void hcs_conn_cancel(struct hcs_conn *c)
{
    if (c->timer) {
        event_free(c->timer);
        c->timer = NULL;
    }
    c->pending = HCS_PENDING_NONE;
    c->req = NULL;
    if (c->fault) {
        hcs_fault_free(c->fault);
        c->fault = NULL;
    }
}

static evhtp_res on_conn_fini(evhtp_connection_t *ec, void *arg)
{
    struct hcs_conn *c = arg;
    c->srv->stats.conn_open--;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    hcs_conn_cancel(c);
    free(c);
    return EVHTP_RES_OK;
}

static evhtp_res on_headers(evhtp_request_t *req, evhtp_headers_t *hdrs, void *arg)
{
    struct hcs_conn *c = arg;
    c->body_bytes = 0;
    c->too_large = evhtp_request_content_len(req) > c->srv->max_body;
    return EVHTP_RES_OK;
}

/* Counts body bytes; past the limit they are drained here so that they never reach buffer_in,
 * and the final callback answers 413 (the only pattern measured to answer without leaking). */
static evhtp_res on_read(evhtp_request_t *req, struct evbuffer *buf, void *arg)
{
    struct hcs_conn *c = arg;
    c->body_bytes += evbuffer_get_length(buf);
    if (c->body_bytes > c->srv->max_body)
        c->too_large = 1;
    if (c->too_large) {
        evbuffer_drain(buf, evbuffer_get_length(buf));
        evbuffer_drain(req->buffer_in, evbuffer_get_length(req->buffer_in));
    }
    return EVHTP_RES_OK;
}

evhtp_res hcs_on_accept(evhtp_connection_t *ec, void *arg)
{
    struct hcs *s = arg;
    struct hcs_conn *c = fbr_xcalloc(1, sizeof(*c));
    c->srv = s;
    c->ec = ec;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->stats.conn_open++;
    s->stats.conn_total++;
    if (s->stats.conn_open > s->stats.conn_max)
        s->stats.conn_max = s->stats.conn_open;
    evhtp_connection_set_hook(ec, evhtp_hook_on_connection_fini, (evhtp_hook)on_conn_fini, c);
    evhtp_connection_set_hook(ec, evhtp_hook_on_headers, (evhtp_hook)on_headers, c);
    evhtp_connection_set_hook(ec, evhtp_hook_on_read, (evhtp_hook)on_read, c);
    return EVHTP_RES_OK;
}

struct hcs_conn *hcs_conn_of(evhtp_request_t *req)
{
    evhtp_connection_t *ec = evhtp_request_get_connection(req);
    return ec && ec->hooks ? ec->hooks->on_connection_fini_arg : NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Replies.
 */
const char *hcs_reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Payload Too Large";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return status >= 500 ? "Server Error" : status >= 400 ? "Client Error" : "OK";
    }
}

void hcs_add_header(evhtp_request_t *req, const char *name, const char *value)
{
    evhtp_headers_add_header(req->headers_out, evhtp_header_new(name, value, 0, 1));
}

void hcs_add_header_u64(evhtp_request_t *req, const char *name, uint64_t value)
{
    char buf[24];
    snprintf(buf, sizeof(buf), "%" PRIu64, value);
    hcs_add_header(req, name, buf);
}

void hcs_set_json_body(evhtp_request_t *req, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    hcs_add_header(req, "Content-Type", "application/json");
    evbuffer_add(req->buffer_out, text, strlen(text));
    free(text);
}

void hcs_set_error_body(evhtp_request_t *req, int status, const char *msg)
{
    hcs_set_json_body(req, json_pack("{s:{s:i,s:s,s:s}}", "error", "code", status, "message", msg,
                                     "type", hcs_reason_phrase(status)));
}

/* Closes the connection after this reply.  evhtp_request_set_keepalive(req, 0) alone did not
 * close it in 1.2.18 (measured); clearing the request flag does, and adds "Connection: close". */
void hcs_no_keepalive(evhtp_request_t *req)
{
    evhtp_request_set_keepalive(req, 0);
    evhtp_request_disable_flag(req, EVHTP_REQ_FLAG_KEEPALIVE);
}

void hcs_send_now(struct hcs *s, evhtp_request_t *req, int status)
{
    if (status >= 0 && status < 600)
        s->stats.by_status[status]++;
    evhtp_send_reply(req, (evhtp_res)status);
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

int hcs_pct_decode(const char *src, size_t len, char *out, size_t outlen, int plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = src[i];
        if (ch == '%') {
            int hi = i + 2 < len ? hexval(src[i + 1]) : -1;
            int lo = i + 2 < len ? hexval(src[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return FBR_ERROR;
            ch = (char)(hi * 16 + lo);
            i += 2;
        } else if (ch == '+' && plus_space) {
            ch = ' ';
        }
        if (ch == '\0' || o + 1 >= outlen)
            return FBR_ERROR;
        out[o++] = ch;
    }
    out[o] = '\0';
    return FBR_OK;
}

int hcs_query_param(const char *query, const char *name, char *out, size_t outlen)
{
    if (!query)
        return 0;
    size_t nlen = strlen(name);
    const char *p = query;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t plen = amp ? (size_t)(amp - p) : strlen(p);
        if (plen >= nlen && strncmp(p, name, nlen) == 0 && (plen == nlen || p[nlen] == '=')) {
            if (plen == nlen) {
                out[0] = '\0';
                return 1;
            }
            return hcs_pct_decode(p + nlen + 1, plen - nlen - 1, out, outlen, 1) < 0 ? -1 : 1;
        }
        if (!amp)
            break;
        p = amp + 1;
    }
    return 0;
}

const char *hcs_req_path(evhtp_request_t *req)
{
    return req->uri && req->uri->path && req->uri->path->full ? req->uri->path->full : "/";
}

const char *hcs_req_query(evhtp_request_t *req)
{
    return req->uri && req->uri->query_raw ? (const char *)req->uri->query_raw : NULL;
}

const char *hcs_req_body(evhtp_request_t *req, size_t *len)
{
    *len = evbuffer_get_length(req->buffer_in);
    return *len ? (const char *)evbuffer_pullup(req->buffer_in, -1) : "";
}

void hcs_reply_json(struct hcs *s, evhtp_request_t *req, int status, json_t *body)
{
    hcs_set_json_body(req, body);
    hcs_send_now(s, req, status);
}

void hcs_reply_error(struct hcs *s, evhtp_request_t *req, int status, const char *msg)
{
    hcs_set_error_body(req, status, msg);
    hcs_send_now(s, req, status);
}

void hcs_reply_error_with(struct hcs *s, evhtp_request_t *req, int status, const char *msg,
                          json_t *extra)
{
    json_t *body = json_pack("{s:{s:i,s:s,s:s}}", "error", "code", status, "message", msg, "type",
                             hcs_reason_phrase(status));
    json_object_update(body, extra);
    json_decref(extra);
    hcs_reply_json(s, req, status, body);
}

/* ---------------------------------------------------------------------------------------------
 * Requests held while the server talks to an add-on.
 */
static evhtp_res on_held_fini(evhtp_request_t *req, void *arg)
{
    evhtp_request_t **slot = arg;
    *slot = NULL;
    return EVHTP_RES_OK;
}

void hcs_hold(evhtp_request_t *req, evhtp_request_t **slot)
{
    *slot = req;
    evhtp_request_set_hook(req, evhtp_hook_on_request_fini, (evhtp_hook)on_held_fini, slot);
    evhtp_request_pause(req);
}

evhtp_request_t *hcs_release(evhtp_request_t **slot)
{
    evhtp_request_t *req = *slot;
    *slot = NULL;
    if (req)
        evhtp_request_unset_hook(req, evhtp_hook_on_request_fini);
    return req;
}

void hcs_resume(evhtp_request_t *req)
{
    evhtp_request_resume(req);
}
