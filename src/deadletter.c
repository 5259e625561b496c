/*
 * deadletter.c - the dead-letter file (see deadletter.h for its format): writing one line per
 * dead delivery for the delivery engine, reading a line back into a request, and replaying a
 * whole file into the engine through fbr_delivery_queue() (--replay-dead-letters), the same door
 * every request that did not come from a webhook uses.
 */
#include "firebridge/deadletter.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "firebridge/delivery.h"
#include "firebridge/http.h"
#include "firebridge/json.h"
#include "firebridge/log.h"

#define ID_MAX 32 /* a delivery id's length at most (delivery.c) */

struct headers_out {
    json_t *arr, **content_type;
};

static void header_to_json(const char *name, size_t nlen, const char *v, size_t vlen, int is_ct,
                           void *arg)
{
    struct headers_out *h = arg;
    if (is_ct) {
        *h->content_type = json_stringn(v, vlen);
        return;
    }
    json_t *pair = json_array();
    json_array_append_new(pair, json_stringn(name, nlen));
    json_array_append_new(pair, json_stringn(v, vlen));
    json_array_append_new(h->arr, pair);
}

static json_t *headers_json(const char *head, size_t len, json_t **content_type)
{
    struct headers_out h = {json_array(), content_type};
    fbr_delivery_head_each(head, len, header_to_json, &h);
    return h.arr;
}

/* The URL as a JSON string: byte-exact when it is UTF-8 (always, unless a rule capture split a
 * character); otherwise with every non-ASCII byte percent-encoded (such a URL is unsendable). */
static json_t *url_json(const char *url, size_t len)
{
    json_t *j = json_stringn(url, len);
    if (j)
        return j;
    char *esc = fbr_xmalloc(3 * len + 1), *q = esc;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c >= 0x80 || c == 0)
            q += sprintf(q, "%%%02X", c);
        else
            *q++ = (char)c;
    }
    j = json_stringn(esc, (size_t)(q - esc));
    free(esc);
    return j;
}

static json_t *body_json(const struct fbr_dead_letter *dl, const char **key)
{
    size_t blen = 0;
    for (size_t i = 0; i < dl->nbody; i++)
        blen += dl->body[i].iov_len;
    char *body = fbr_xmalloc(blen + 1), *bp = body;
    for (size_t i = 0; i < dl->nbody; i++) {
        memcpy(bp, dl->body[i].iov_base, dl->body[i].iov_len);
        bp += dl->body[i].iov_len;
    }
    json_t *bj = json_stringn(body, blen);
    *key = "body";
    if (!bj) { /* not UTF-8: keep it byte-exact */
        char *b64 = fbr_xmalloc(4 * ((blen + 2) / 3) + 1);
        EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)body, (int)blen);
        bj = json_string(b64);
        *key = "body_base64";
        free(b64);
    }
    free(body);
    return bj;
}

int fbr_dead_letter_append(const char *path, const struct fbr_dead_letter *dl, char *err,
                           size_t errlen)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(dl->id));
    json_object_set_new(o, "method", json_string(dl->method));
    json_object_set_new(o, "url", url_json(dl->url, dl->url_len));
    json_t *ct = NULL;
    json_object_set_new(o, "headers", headers_json(dl->head, dl->head_len, &ct));
    json_object_set_new(o, "content_type", ct ? ct : json_null());
    const char *bkey;
    json_t *bj = body_json(dl, &bkey);
    json_object_set_new(o, bkey, bj);
    json_object_set_new(o, "reason", json_string(dl->reason ? dl->reason : ""));
    json_object_set_new(o, "attempts", json_integer(dl->attempts));
    json_object_set_new(o, "destination", json_string(dl->destination ? dl->destination : ""));
    json_object_set_new(o, "created_ms", json_integer((json_int_t)dl->created_ms));
    json_object_set_new(o, "first_attempt_ms", json_integer((json_int_t)dl->first_attempt_ms));
    json_object_set_new(o, "last_attempt_ms", json_integer((json_int_t)dl->last_attempt_ms));
    json_object_set_new(o, "dead_ms", json_integer((json_int_t)fbr_wall_ms()));
    char *line = fbr_json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    size_t n = strlen(line);
    line = fbr_xrealloc(line, n + 2);
    line[n++] = '\n';
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    ssize_t w = -1;
    if (fd >= 0) {
        fchmod(fd, 0600);
        w = write(fd, line, n); /* one write per line: appends from one process stay whole */
        close(fd);
    }
    free(line);
    if (w == (ssize_t)n)
        return FBR_OK;
    snprintf(err, errlen, "cannot append to %s: %s", path, w < 0 ? strerror(errno) : "short write");
    return FBR_ERROR;
}

int fbr_dead_letter_read(json_t *j, struct fbr_outreq *o, const char **id, uint64_t *created)
{
    const char *method = json_string_value(json_object_get(j, "method"));
    json_t *url = json_object_get(j, "url");
    json_t *headers = json_object_get(j, "headers");
    json_t *body = json_object_get(j, "body");
    json_t *body64 = json_object_get(j, "body_base64");
    json_t *ct = json_object_get(j, "content_type");
    *id = json_string_value(json_object_get(j, "id"));
    *created = (uint64_t)json_integer_value(json_object_get(j, "created_ms"));
    unsigned mbit = method ? fbr_http_method_parse(method, strlen(method), 0) : 0;
    if (!mbit || !json_is_string(url) || !json_is_array(headers) || !*id || strlen(*id) > ID_MAX)
        return FBR_INVALID;
    size_t i;
    json_t *pair;
    json_array_foreach(headers, i, pair)
    {
        if (!json_is_string(json_array_get(pair, 0)) || !json_is_string(json_array_get(pair, 1)))
            return FBR_INVALID;
    }
    fbr_outreq_init(o);
    o->method = mbit;
    fbr_render_set_copy(&o->url, json_string_value(url), json_string_length(url));
    if (json_is_string(body)) {
        fbr_render_set_copy(&o->body, json_string_value(body), json_string_length(body));
    } else if (json_is_string(body64)) {
        size_t n = json_string_length(body64);
        unsigned char *raw = fbr_xmalloc(n / 4 * 3 + 3);
        int k = EVP_DecodeBlock(raw, (const unsigned char *)json_string_value(body64), (int)n);
        if (k < 0) {
            free(raw);
            fbr_outreq_free(o);
            return FBR_INVALID;
        }
        /* EVP_DecodeBlock counts the '=' padding as zero bytes */
        const char *s = json_string_value(body64);
        while (n && s[n - 1] == '=' && k) {
            n--;
            k--;
        }
        fbr_render_set_copy(&o->body, (const char *)raw, (size_t)k);
        free(raw);
    }
    if (json_is_string(ct))
        o->content_type = fbr_xstrdup(json_string_value(ct));
    o->nheaders = json_array_size(headers);
    if (o->nheaders) {
        o->header_names = fbr_xcalloc(o->nheaders, sizeof(*o->header_names));
        o->headers = fbr_xcalloc(o->nheaders, sizeof(*o->headers));
        json_array_foreach(headers, i, pair)
        {
            json_t *v = json_array_get(pair, 1);
            o->header_names[i] = fbr_xstrdup(json_string_value(json_array_get(pair, 0)));
            fbr_render_init(&o->headers[i]);
            fbr_render_set_copy(&o->headers[i], json_string_value(v), json_string_length(v));
        }
    }
    return FBR_OK;
}

int fbr_delivery_replay_file(struct fbr_delivery_engine *e, const char *path, size_t *count,
                             char *err, size_t errlen)
{
    *count = 0;
    if (!fbr_delivery_accepting(e)) {
        snprintf(err, errlen, "the engine is shut down");
        return FBR_ERROR;
    }
    const char *dl_path = fbr_delivery_dead_letter_path(e);
    FILE *f = fopen(path, "re");
    if (!f) {
        int missing = errno == ENOENT;
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return missing ? FBR_NOTFOUND : FBR_ERROR;
    }
    /* The engine's own file: move it aside first, so what dies during or after the replay goes
     * to a fresh file (never appended to the file being read: no loop) and the replayed lines
     * stay on disk, whole, under the new name (nothing lost if the replay stops half-way). */
    struct stat fst, lst;
    char *aside = NULL;
    if (fstat(fileno(f), &fst) != 0 || !S_ISREG(fst.st_mode)) {
        /* a directory read as nothing to replay, /dev/zero as one endless line */
        snprintf(err, errlen, "cannot replay %s: not a regular file", path);
        fclose(f);
        return FBR_ERROR;
    }
    if (stat(dl_path, &lst) == 0 && fst.st_dev == lst.st_dev && fst.st_ino == lst.st_ino) {
        size_t alen = strlen(dl_path) + 40;
        aside = fbr_xmalloc(alen);
        snprintf(aside, alen, "%s.replayed-%" PRIu64, dl_path, fbr_wall_ms());
        if (rename(dl_path, aside) != 0) {
            snprintf(err, errlen, "cannot move %s aside to %s before replaying it: %s", dl_path,
                     aside, strerror(errno));
            free(aside);
            fclose(f);
            return FBR_ERROR;
        }
        fbr_log_info("moved %s to %s before replaying it; new dead letters go to a fresh %s",
                     dl_path, aside, dl_path);
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned lineno = 0;
    uint64_t offset = 0; /* of the line being read */
    int rc = FBR_OK;
    for (; (n = getline(&line, &cap, f)) > 0; offset += (uint64_t)n) {
        lineno++;
        if (n == 1 && line[0] == '\n')
            continue;
        json_error_t jerr;
        json_t *j = json_loadb(line, (size_t)n, 0, &jerr);
        struct fbr_outreq o;
        const char *id;
        uint64_t created;
        if (!j && line[n - 1] != '\n' && feof(f)) {
            /* the last line has no end: an append that a crash cut short (each line is one
             * write).  The lines before it are whole; it stays in the file, reported. */
            fbr_log_warn("%s ends with a torn line at byte offset %" PRIu64 " (line %u, %zd "
                         "byte(s), no newline): not replayed, left in %s",
                         path, offset, lineno, n, aside ? aside : path);
            break;
        }
        if (!j || fbr_dead_letter_read(j, &o, &id, &created) != FBR_OK) {
            snprintf(err, errlen, "%s line %u: not a dead-letter entry%s%s", path, lineno,
                     j ? "" : ": ", j ? "" : jerr.text);
            json_decref(j);
            rc = FBR_INVALID;
            break;
        }
        /* a replay gets a fresh max age (the operator decided to try again) and goes past
         * max_pending; an unsendable URL is dead again at once, with its reason, in the fresh
         * file */
        (void)created;
        struct fbr_delivery_queue_opts qo = {.id = id, .over_limit = 1};
        if (fbr_delivery_queue(e, &o, &qo) == FBR_OK)
            (*count)++;
        fbr_outreq_free(&o);
        json_decref(j);
    }
    if (rc == FBR_OK && ferror(f)) {
        snprintf(err, errlen, "cannot read %s at byte offset %" PRIu64 ": %s", path, offset,
                 strerror(errno));
        rc = FBR_ERROR;
    }
    free(line);
    fclose(f);
    /* A failed replay leaves the file where the operator named it (the caller drops what was
     * queued), unless something was dead-lettered meanwhile: then it stays aside. */
    if (aside && rc != FBR_OK && access(dl_path, F_OK) != 0 && errno == ENOENT &&
        rename(aside, dl_path) == 0)
        fbr_log_info("replay failed: moved %s back to %s", aside, dl_path);
    free(aside);
    return rc;
}

