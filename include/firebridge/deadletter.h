/*
 * deadletter.h - the dead-letter file: one JSON object per line for every delivery that will not
 * be delivered (a permanent failure, its retry_max_age passed, an unsendable URL, or still
 * pending at shutdown), and the reader that turns such a line back into a request for
 * fbr_delivery_queue() (fbr_delivery_replay_file(), declared in delivery.h, lives in
 * deadletter.c).  The delivery engine decides when a delivery is dead; this module owns the
 * file's format: keys id, method, url, headers ([name, value] pairs, without Content-Type and
 * X-Firebridge-Delivery), content_type, body (or body_base64 when the body is not UTF-8),
 * reason, attempts, destination, created_ms, first_attempt_ms, last_attempt_ms, dead_ms.
 */
#ifndef FIREBRIDGE_DEADLETTER_H
#define FIREBRIDGE_DEADLETTER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "firebridge/webhook.h" /* struct fbr_outreq */

/* One dead delivery as the engine holds it; every field is borrowed for the call. */
struct fbr_dead_letter {
    const char *id;
    const char *method;
    const char *url;
    size_t url_len;
    const char *head; /* "Name: value\r\n" lines as sent */
    size_t head_len;
    const struct iovec *body;
    size_t nbody;
    const char *reason;      /* may be NULL */
    const char *destination; /* the destination key, "" when it was never queued */
    unsigned attempts;
    uint64_t created_ms, first_attempt_ms, last_attempt_ms; /* wall clock */
};

/*
 * Appends dl to the file at path as one line with one write() (created 0600; appends from one
 * process stay whole).  Returns FBR_OK, or FBR_ERROR with the reason in err.
 */
int fbr_dead_letter_append(const char *path, const struct fbr_dead_letter *dl, char *err,
                           size_t errlen);

/*
 * Reads one parsed line (borrowed) into o (initialised here, owning copies of everything; free
 * it with fbr_outreq_free()).  *id points into line.  Returns FBR_OK or FBR_INVALID (not a
 * dead-letter entry; o then needs no freeing).
 */
int fbr_dead_letter_read(json_t *line, struct fbr_outreq *o, const char **id,
                         uint64_t *created_ms);

#endif
