/*
 * fuzz_response.c - libFuzzer target for the one HTTP/1.x response reader (response.c).  The
 * input's first four bytes steer the run, the rest is what a server sends on one connection:
 *   byte 0: bit i (i < 4) makes response i, i + 4, ... the answer to a HEAD request;
 *   byte 1: bit 0 expands "\xff N C" into C repeated N * 128 times ("\xff\0" is one 0xff), so
 *           that short inputs reach the 16 KiB line and 64 KiB head limits; bit 1 feeds some
 *           pieces as chains of their own (evbuffer_add_reference), not only evbuffer_add;
 *   bytes 2-3: the seed of the piece sizes of the split run.
 * The answers are read twice, as a client would on one keep-alive connection (responses in
 * sequence on one buffer until an error or the end of the input, a body running to the close
 * complete at the end): once with everything in the buffer at the first call, once fed in pieces
 * with a call after each.  It checks response.h's promises on every call (body counts never over
 * what the buffer holds nor over what is declared, DONE only once the declared body or every
 * chunk is consumed, no body for HEAD/204/304, a refusal names its reason, a final status in
 * 200..599 when the head is done, the header callback only for final answers, with trimmed
 * values) and aborts when the two runs differ in anything: the statuses, flags, header callbacks,
 * body bytes of each answer, the verdict, or the bytes left.
 * Seeds: tests/fuzz/corpus/fuzz_response.
 */
#include <event2/buffer.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "firebridge/response.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define PREFIX 4
#define MAX_DECODED (256 * 1024)
#define MAX_KEPT 64 /* answers recorded one by one; all of them go into the run's hash */

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 1099511628211ULL;
    return h;
}

#define FNV0 14695981039346656037ULL

/* One answer as the caller saw it. */
struct answer {
    int status, http10, conn_close, keep_alive, chunked, has_len, no_body, by_eof;
    uint64_t body_len, body_hash, header_hash;
};

/* One run over the input. */
struct run {
    int rc;            /* the last result */
    const char *error; /* after FBR_RESPONSE_ERROR */
    size_t left;       /* input bytes not consumed at the end */
    size_t answers;
    uint64_t hash; /* of every answer */
    struct answer kept[MAX_KEPT];
    /* the answer being read */
    struct answer cur;
    const struct fbr_response *p;
};

static void die(const char *what)
{
    fprintf(stderr, "fuzz_response: %s\n", what);
    abort();
}

static int on_header(void *arg, const char *name, size_t name_len, char *value)
{
    struct run *r = arg;
    if (!name_len || memchr(name, ':', name_len))
        die("header callback: empty name or a colon in it");
    size_t vlen = strlen(value);
    if (vlen &&
        (value[0] == ' ' || value[0] == '\t' || value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
        die("header callback: value not trimmed");
    if (r->p->status < 200)
        die("header callback for an interim answer");
    r->cur.header_hash = fnv(r->cur.header_hash, name, name_len);
    r->cur.header_hash = fnv(r->cur.header_hash, "\0", 1);
    r->cur.header_hash = fnv(r->cur.header_hash, value, vlen + 1);
    return 0;
}

/* Takes n body bytes off in into the answer's count and hash. */
static void take_body(struct run *r, struct evbuffer *in, size_t n)
{
    char buf[4096];
    while (n) {
        size_t k = n < sizeof(buf) ? n : sizeof(buf);
        if (evbuffer_remove(in, buf, k) != (int)k)
            die("evbuffer_remove short");
        r->cur.body_hash = fnv(r->cur.body_hash, buf, k);
        r->cur.body_len += k;
        n -= k;
    }
}

static void answer_end(struct run *r, const struct fbr_response *p, int by_eof)
{
    r->cur.status = p->status;
    r->cur.http10 = p->http10;
    r->cur.conn_close = p->conn_close;
    r->cur.keep_alive = p->keep_alive;
    r->cur.chunked = p->chunked;
    r->cur.has_len = p->has_len;
    r->cur.by_eof = by_eof;
    if (r->answers < MAX_KEPT)
        r->kept[r->answers] = r->cur;
    r->hash = fnv(r->hash, &r->cur, sizeof(r->cur));
    r->answers++;
}

/* What the caller tracks of one answer's body to check the reader against. */
struct track {
    int len_seen;
    uint64_t declared;   /* Content-Length, from the first call in FBR_RESPONSE_LEN */
    uint64_t chunk_left; /* of the chunk being read */
    uint64_t chunk_sum;  /* sizes of the chunks begun */
};

/* Checks one result of fbr_response_parse() against response.h. */
static void check(struct run *r, struct track *t, const struct fbr_response *p, int rc, size_t n,
                  size_t avail_before)
{
    switch (rc) {
    case FBR_RESPONSE_ERROR:
        if (!p->error || !*p->error)
            die("an error without a reason");
        return;
    case FBR_RESPONSE_MORE:
    case FBR_RESPONSE_DONE:
        n = 0;
        break;
    case FBR_RESPONSE_BODY:
        if (!fbr_response_head_done(p))
            die("body before the head is done");
        if (n == 0 || n > avail_before)
            die("body count of 0 or over what the buffer holds");
        if (r->cur.no_body)
            die("body for a HEAD request");
        break;
    default:
        die("unknown result");
    }
    if (fbr_response_head_done(p)) {
        if (p->status < 200 || p->status > 599 || p->status == 204 || p->status == 304)
            die("a body state for a status without a body");
    }
    if (p->state == FBR_RESPONSE_LEN) {
        if (!t->len_seen) {
            t->len_seen = 1;
            t->declared = p->remaining + n;
        }
        if (r->cur.body_len + n + p->remaining != t->declared)
            die("length body: handed + remaining != declared");
    }
    if (p->state == FBR_RESPONSE_CHUNK_DATA) {
        if (t->chunk_left == 0) { /* a chunk begun in this call */
            t->chunk_left = p->remaining + n;
            if (t->chunk_left == 0)
                die("a chunk of size 0 in the data state");
            if (t->chunk_sum + t->chunk_left < t->chunk_sum)
                return; /* over 2^64 in all: no sum to compare */
            t->chunk_sum += t->chunk_left;
        }
        if (n > t->chunk_left || t->chunk_left - n != p->remaining)
            die("chunk: handed more than the chunk's size");
        t->chunk_left -= n;
    } else if (rc == FBR_RESPONSE_BODY) {
        if (p->state != FBR_RESPONSE_LEN && p->state != FBR_RESPONSE_UNTIL_EOF)
            die("body handed in a line state");
    }
    if (p->state == FBR_RESPONSE_UNTIL_EOF && rc == FBR_RESPONSE_DONE)
        die("done in a body that runs to the close");
    if (rc != FBR_RESPONSE_DONE)
        return;
    uint64_t got = r->cur.body_len;
    switch (p->state) {
    case FBR_RESPONSE_HEADERS: /* no body */
        if (!r->cur.no_body && p->status != 204 && p->status != 304)
            die("done after the head of an answer that has a body");
        if (got)
            die("body bytes for an answer without a body");
        break;
    case FBR_RESPONSE_LEN:
        if (p->remaining || got != t->declared)
            die("done before the declared length");
        break;
    case FBR_RESPONSE_TRAILERS:
        if (!p->chunked || t->chunk_left || got != t->chunk_sum)
            die("chunked done before the sum of its chunks");
        break;
    default:
        die("done in another state");
    }
    if (p->status < 200 || p->status > 599)
        die("done with a status out of 200..599");
}

static uint32_t next_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Starts the next answer on the connection: the i-th is a HEAD request's when bit i % 4 of
 * head_mask is set. */
static void next_answer(struct run *r, struct track *t, struct fbr_response *p, unsigned head_mask)
{
    int no_body = (head_mask >> (r->answers % 4)) & 1;
    fbr_response_reset(p, no_body);
    memset(&r->cur, 0, sizeof(r->cur));
    memset(t, 0, sizeof(*t));
    r->cur.no_body = no_body;
    r->cur.body_hash = r->cur.header_hash = FNV0;
}

/*
 * Reads raw[0..len) as answers on one connection: whole (everything in the buffer before the
 * first call) or in pieces chosen from seed (some of them chains of their own when refs).
 */
static void read_all(struct run *r, const uint8_t *raw, size_t len, unsigned head_mask, int whole,
                     uint32_t seed, int refs)
{
    memset(r, 0, sizeof(*r));
    r->hash = FNV0;
    struct fbr_response p;
    fbr_response_init(&p, on_header, r);
    r->p = &p;
    struct evbuffer *in = evbuffer_new();
    if (!in)
        die("evbuffer_new");
    uint32_t rnd = seed * 2654435761u | 1;
    size_t fed = 0;
    struct track t;
    next_answer(r, &t, &p, head_mask);
    size_t answer_from = 0; /* input bytes consumed before the answer being read */
    int rc;
    for (;;) {
        /* as a connection does: parse what is in, answer after answer */
        for (;;) {
            size_t n = 0, avail = evbuffer_get_length(in);
            rc = fbr_response_parse(&p, in, &n);
            check(r, &t, &p, rc, n, avail);
            if (rc == FBR_RESPONSE_BODY) {
                take_body(r, in, n);
            } else if (rc == FBR_RESPONSE_DONE) {
                size_t consumed = fed - evbuffer_get_length(in);
                if (consumed == answer_from)
                    die("an answer done without taking a byte");
                answer_from = consumed;
                answer_end(r, &p, 0);
                next_answer(r, &t, &p, head_mask);
            } else {
                break;
            }
        }
        if (rc == FBR_RESPONSE_ERROR)
            break;
        /* a call with nothing new changes nothing */
        size_t before = evbuffer_get_length(in), n2 = 0;
        if (fbr_response_parse(&p, in, &n2) != FBR_RESPONSE_MORE ||
            evbuffer_get_length(in) != before)
            die("a second call without new input did something");
        if (fed == len)
            break;
        size_t k = len - fed;
        if (!whole) {
            uint32_t x = next_rand(&rnd);
            size_t want = (x & 3) ? 1 + (x >> 8) % 8 : 1 + (x >> 8) % 2048;
            k = want < k ? want : k;
        }
        if (refs && !whole && (next_rand(&rnd) & 1))
            evbuffer_add_reference(in, raw + fed, k, NULL, NULL);
        else
            evbuffer_add(in, raw + fed, k);
        fed += k;
    }
    r->rc = rc;
    r->error = p.error;
    /* the end of the input is the close: a body running to it is complete */
    if (rc == FBR_RESPONSE_MORE && fbr_response_until_eof(&p)) {
        if (evbuffer_get_length(in))
            die("input left unread in a body that runs to the close");
        answer_end(r, &p, 1);
    }
    r->left = evbuffer_get_length(in) + (len - fed); /* after an error, some not fed yet */
    evbuffer_free(in);
}

/* raw with "\xff N C" expanded (see the top); NULL past MAX_DECODED. */
static uint8_t *expand(const uint8_t *raw, size_t len, size_t *out_len)
{
    size_t total = 0;
    for (size_t i = 0; i < len; i++) {
        if (raw[i] == 0xff && i + 1 < len && raw[i + 1] == 0) {
            total++, i++;
        } else if (raw[i] == 0xff && i + 2 < len) {
            total += (size_t)raw[i + 1] * 128;
            i += 2;
        } else {
            total++;
        }
        if (total > MAX_DECODED)
            return NULL;
    }
    uint8_t *out = malloc(total ? total : 1), *o = out;
    if (!out)
        die("malloc");
    for (size_t i = 0; i < len; i++) {
        if (raw[i] == 0xff && i + 1 < len && raw[i + 1] == 0) {
            *o++ = 0xff, i++;
        } else if (raw[i] == 0xff && i + 2 < len) {
            memset(o, raw[i + 2], (size_t)raw[i + 1] * 128);
            o += (size_t)raw[i + 1] * 128;
            i += 2;
        } else {
            *o++ = raw[i];
        }
    }
    *out_len = total;
    return out;
}

static struct run whole_run, split_run;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < PREFIX)
        return 0;
    unsigned head_mask = data[0] & 0x0f;
    int expanding = data[1] & 1, refs = (data[1] >> 1) & 1;
    uint32_t seed = (uint32_t)data[2] << 8 | data[3];
    const uint8_t *raw = data + PREFIX;
    size_t len = size - PREFIX;
    uint8_t *dec = NULL;
    if (expanding) {
        dec = expand(raw, len, &len);
        if (!dec)
            return 0;
        raw = dec;
    }
    read_all(&whole_run, raw, len, head_mask, 1, seed, refs);
    read_all(&split_run, raw, len, head_mask, 0, seed, refs);
    const struct run *a = &whole_run, *b = &split_run;
    if (a->answers != b->answers) {
        fprintf(stderr, "answers: whole %zu, split %zu\n", a->answers, b->answers);
        die("whole and split runs read a different number of answers");
    }
    for (size_t i = 0; i < a->answers && i < MAX_KEPT; i++) {
        if (memcmp(&a->kept[i], &b->kept[i], sizeof(a->kept[i])) != 0) {
            fprintf(stderr, "answer %zu: status %d/%d, body %llu/%llu\n", i, a->kept[i].status,
                    b->kept[i].status, (unsigned long long)a->kept[i].body_len,
                    (unsigned long long)b->kept[i].body_len);
            die("whole and split runs differ in an answer");
        }
    }
    if (a->hash != b->hash)
        die("whole and split runs differ in an answer past the kept ones");
    if (a->rc != b->rc || a->left != b->left ||
        (a->rc == FBR_RESPONSE_ERROR && strcmp(a->error, b->error) != 0)) {
        fprintf(stderr, "verdict: whole %d (%s) left %zu, split %d (%s) left %zu\n", a->rc,
                a->error ? a->error : "-", a->left, b->rc, b->error ? b->error : "-", b->left);
        die("whole and split runs end differently");
    }
    free(dec);
    return 0;
}
