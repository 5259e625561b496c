/*
 * outbound.h - hipchat-server's own HTTP client, for the requests HipChat makes to add-ons
 * (fetch a descriptor, POST the install, DELETE the uninstall, POST room_message webhooks).  It
 * is libevent's evhttp client on the server's one loop, so the server keeps answering other
 * requests (an add-on asking for a token from inside its install callback) while it waits.
 * Deliberately not firebridge's client: a bug there must not be mirrored by its test peer.
 *
 * One fresh connection per request (Connection: close), names resolved with evdns, HTTPS
 * verified against --ca-file (or the system store) with SNI and a host-name check, one
 * combined timeout, response bodies capped at HCS_OUT_MAX_BODY.
 *
 * Callback contract: if hcs_out_request() returns an error, the callback is never called;
 * otherwise it is called exactly once, never from inside hcs_out_request(), with `cancelled` set
 * when the client is freed first (then the caller must only release its own state).
 */
#ifndef HCS_OUTBOUND_H
#define HCS_OUTBOUND_H

#include <event2/event.h>
#include <stddef.h>

#define HCS_OUT_MAX_BODY (1u << 20)

struct hcs_outbound;

/* What came back; borrowed for the duration of the callback. */
struct hcs_out_resp {
    int status;        /* HTTP status; 0 when no response arrived */
    const char *error; /* why there is no response ("connection refused", "timeout", ...) */
    const char *body;  /* NUL-terminated (may hold NULs), never NULL */
    size_t body_len;
    int cancelled; /* the client was freed before an answer */
};

typedef void (*hcs_out_cb)(const struct hcs_out_resp *resp, void *arg);

/* A client on base.  ca_file (borrowed during the call) NULL: the system trust store.  Returns
 * NULL with a message on stderr when the CA file cannot be loaded. */
struct hcs_outbound *hcs_outbound_new(struct event_base *base, const char *ca_file,
                                      unsigned timeout_s);
/* Cancels pending requests (their callbacks run with cancelled set), frees, NULLs *op. */
void hcs_outbound_free(struct hcs_outbound **op);

/*
 * Sends method (GET, POST, DELETE) to the absolute http(s) url.  headers: NULL or a
 * NULL-terminated list of name, value pairs (borrowed during the call); body may be NULL.
 * Returns 0, or -1 with err filled (bad URL) and no callback.
 */
int hcs_out_request(struct hcs_outbound *o, const char *method, const char *url,
                    const char *const *headers, const char *body, size_t body_len, hcs_out_cb cb,
                    void *arg, char *err, size_t errlen);

#endif
