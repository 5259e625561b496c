/*
 * response.h - the one reader of HTTP/1.x responses on the outbound side: the framing of an
 * answer read incrementally from a libevent input buffer.  It owns the status line (HTTP/1.0 and
 * 1.1, a status in 100..599), the framing headers (Content-Length, Transfer-Encoding: chunked,
 * Connection), interim 1xx answers (skipped), the statuses and the request method that have no
 * body (1xx, 204, 304, HEAD), the body's delimitation (by length, chunked with extensions and
 * trailers, or running to the close) and the limits on what a server controls: one line of at
 * most FBR_RESPONSE_MAX_LINE bytes, a head (interim heads and trailers included) of at most
 * FBR_RESPONSE_MAX_HEAD bytes.  What a caller makes of other headers (rate limits, Retry-After)
 * and of the body (kept, cut, skipped) stays with the caller: the other headers of a final answer
 * reach it through a callback, the body as byte counts at the front of the input.
 *
 * What it accepts and refuses (RFC 9112; a FBR_RESPONSE_ERROR names the reason), where the RFC
 * leaves a choice or the reader makes one:
 * - lines end with CRLF or a bare LF (9112 2.2 allows it for the head; the reader takes it in the
 *   chunk framing too); a NUL or a CR anywhere else in a line is refused (RFC 9110 5.5);
 * - the status line is "HTTP/1.<digit> <3 digits>" then the end or a SP and the reason phrase:
 *   the reason may be missing, "HTTP/1.2".."HTTP/1.9" are read as 1.1, "HTTP/1.10", "HTTP/2.0"
 *   are refused, and so is a status outside 100..599 (RFC 9110 15 would read it as a 5xx: the
 *   callers treat a refused answer as they do a 5xx, a failed delivery) and an unrequested 101;
 *   empty lines before a status line are skipped;
 * - a field name is a token right before its colon: a blank in or before it, so a folded line
 *   (obs-fold), is refused, not unfolded (9112 5.2 would have a user agent unfold it);
 * - Content-Length is 1*DIGIT up to 2^63 - 1 with blanks around it, leading zeros allowed; a
 *   sign, a blank inside, a list ("5, 5") and two different values are refused, the same value
 *   twice is one;
 * - Transfer-Encoding's codings (of every such line, in order) decide over Content-Length
 *   (9112 6.3): chunked last, the body is chunked; chunked not last or absent ("gzip",
 *   "chunked, gzip"), the body runs to the close; chunked twice, an empty list, a coding that is
 *   no token are refused, and so is a Transfer-Encoding in an HTTP/1.0 answer (9112 6.1).  An
 *   answer with both sets close_after: the connection must not be used for another answer;
 * - a chunk size is 1*HEXDIG within 64 bits, its extensions and the trailer fields are read and
 *   dropped (a trailer line must still be a field line);
 * - a body's bytes are not decoded: a transfer coding other than chunked stays the caller's.
 *
 * Users: the outbound client (client.c) and the load generator's sender (tools/loadgen).
 */
#ifndef FIREBRIDGE_RESPONSE_H
#define FIREBRIDGE_RESPONSE_H

#include <stddef.h>
#include <stdint.h>

struct evbuffer;

#define FBR_RESPONSE_MAX_LINE 16384 /* one status, header, chunk-size or trailer line */
#define FBR_RESPONSE_MAX_HEAD 65536 /* every head and trailer line of one response */

enum fbr_response_state {
    FBR_RESPONSE_STATUS,
    FBR_RESPONSE_HEADERS,
    /* every state from here on reads the body: the final head is complete */
    FBR_RESPONSE_LEN,
    FBR_RESPONSE_CHUNK_SIZE,
    FBR_RESPONSE_CHUNK_DATA,
    FBR_RESPONSE_CHUNK_CRLF,
    FBR_RESPONSE_TRAILERS,
    FBR_RESPONSE_UNTIL_EOF
};

/* What fbr_response_parse() returns. */
enum fbr_response_rc {
    FBR_RESPONSE_ERROR = -1, /* malformed or over a limit: p->error says which */
    FBR_RESPONSE_MORE = 0,   /* the input is used up: call again when more arrives (or at EOF) */
    FBR_RESPONSE_DONE = 1,   /* the response is complete; what follows in the input is not its */
    FBR_RESPONSE_BODY = 2    /* *n bytes at the front of the input are body: the caller removes
                                them (keeps or drains), then calls again */
};

/*
 * A header of a final (non-1xx) answer that is not a framing header: name[0..name_len) as it
 * came (not NUL-terminated), value NUL-terminated with the blanks around it trimmed; both
 * borrowed for the call only (value may be changed in place).  Returns 0, or -1 to reject the
 * answer as malformed.
 */
typedef int (*fbr_response_header_fn)(void *arg, const char *name, size_t name_len, char *value);

/* One response being read; the caller's memory, no allocation of its own. */
struct fbr_response {
    /* read by the caller */
    int status;            /* of the last status line read (an interim one too); 0 before one */
    unsigned char http10;  /* the last status line said HTTP/1.0 */
    unsigned char conn_close; /* "Connection: close" */
    unsigned char keep_alive; /* "Connection: keep-alive" */
    unsigned char chunked;    /* the body is chunked (chunked is the last transfer coding) */
    unsigned char has_len;    /* a Content-Length came (ignored when a Transfer-Encoding did) */
    unsigned char close_after; /* the framing was doubtful (Transfer-Encoding and Content-Length):
                                  the connection ends after this answer */
    enum fbr_response_state state;
    const char *error;     /* after FBR_RESPONSE_ERROR: why, a static string */
    /* the parser's own */
    unsigned char no_body; /* the request was HEAD */
    unsigned char te, te_chunked; /* a Transfer-Encoding came; chunked was among its codings */
    uint64_t remaining;    /* Content-Length, then the body or chunk bytes still to come */
    size_t head_bytes;
    fbr_response_header_fn on_header;
    void *arg;
};

/* Sets p up for its first response; on_header (may be NULL) gets arg (borrowed) for every
 * non-framing header of each final answer. */
void fbr_response_init(struct fbr_response *p, fbr_response_header_fn on_header, void *arg);

/* Starts the next response; no_body: it answers a HEAD request.  Keeps on_header and arg. */
void fbr_response_reset(struct fbr_response *p, int no_body);

/*
 * Reads what in (borrowed) holds of p's response: status and header lines are taken off the
 * input, body bytes are handed to the caller (FBR_RESPONSE_BODY).  A body running to the close
 * (p->state FBR_RESPONSE_UNTIL_EOF) is complete when the connection ends, which the caller sees:
 * then what it has is the whole body.  After FBR_RESPONSE_ERROR or FBR_RESPONSE_DONE only
 * fbr_response_reset() may follow.
 */
int fbr_response_parse(struct fbr_response *p, struct evbuffer *in, size_t *n);

/* Whether p's final head is complete (its body, if any, being read). */
static inline int fbr_response_head_done(const struct fbr_response *p)
{
    return p->state >= FBR_RESPONSE_LEN;
}

/* Whether p's body runs to the close of the connection (no Content-Length, not chunked). */
static inline int fbr_response_until_eof(const struct fbr_response *p)
{
    return p->state == FBR_RESPONSE_UNTIL_EOF;
}

#endif
