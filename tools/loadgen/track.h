/*
 * track.h - the load generator's ledger: which alert (by sequence number) was sent, answered 2xx
 * and expected to reach a room, and what the sink saw.  The sink hands every delivery it answered
 * 2xx to lg_track_delivered() with the sequence number and send time it parsed out of the message;
 * the ledger classifies it (first delivery, duplicate, unknown) and records per room whether it
 * arrived out of order, and the end-to-end latency.  After the drain period lg_track_lost() counts
 * the alerts answered 2xx whose delivery never came.
 *
 * Duplicates: a second delivery of a sequence number is a duplicate.  When both carried an
 * X-Firebridge-Delivery id and the ids are equal it is also counted in dup_same_id (the same
 * delivery sent twice: a retry after a reply was lost); different ids mean two deliveries were made
 * for one alert.
 * Order: the sender numbers alerts in send order, so per room a delivery whose sequence number is
 * below the highest already delivered to that room is an order violation.
 *
 * Memory: two bytes and eight bytes per sequence number of capacity, allocated with calloc (pages
 * are touched only as sequence numbers are used), plus eight bytes per room.
 */
#ifndef FBR_LOADGEN_TRACK_H
#define FBR_LOADGEN_TRACK_H

#include <stddef.h>
#include <stdint.h>

#include "hist.h"

enum lg_match {
    LG_MATCH_FIRST,     /* first delivery of an alert we sent */
    LG_MATCH_DUPLICATE, /* that alert was delivered before */
    LG_MATCH_UNKNOWN,   /* no such sequence number was sent, or the room is out of range */
};

struct lg_track {
    uint64_t cap;      /* sequence numbers 0..cap-1 */
    uint32_t nrooms;   /* rooms 0..nrooms-1 */
    uint8_t *sent;     /* per seq: LG_SENT_* bits, written by the sender side */
    uint8_t *seen;     /* per seq: deliveries seen (saturates at 255), written by the sink side */
    uint64_t *ids;     /* per seq: hash of the first delivery's X-Firebridge-Delivery (0: none) */
    uint64_t *room_hi; /* per room: highest seq delivered + 1 (0: none yet) */
    uint64_t measure_from_ns; /* deliveries of alerts sent before this go uncounted in e2e */
    /* counters */
    uint64_t delivered, duplicates, dup_same_id, unknown, order_violations;
    uint64_t expected; /* answered 2xx and expected to reach a room */
    struct lg_hist e2e;
};

#define LG_SENT_SENT 1u
#define LG_SENT_EXPECTS 2u  /* the scenario expects one delivery of it */
#define LG_SENT_ACCEPTED 4u /* answered 2xx */

/* Sets up a ledger for cap sequence numbers and nrooms rooms; returns 0, or -1 out of memory. */
int lg_track_init(struct lg_track *t, uint64_t cap, uint32_t nrooms);
void lg_track_free(struct lg_track *t);

/* The sender sent seq (seq < cap); expects: whether one delivery of it should reach a room. */
void lg_track_sent(struct lg_track *t, uint64_t seq, int expects);
/* The intake answered seq with status (2xx: accepted). */
void lg_track_answered(struct lg_track *t, uint64_t seq, int status);

/*
 * The sink answered 2xx to a delivery of alert seq for room (index) carrying delivery id (NULL or
 * idlen bytes, borrowed), at now_ns for an alert sent (intended) at sent_ns.  Counts it and
 * records its latency when sent_ns >= measure_from_ns.  Deliveries before the sender's answer are
 * fine (the daemon answers first but the sink can be faster than the sender's read).
 */
enum lg_match lg_track_delivered(struct lg_track *t, uint64_t seq, uint32_t room, const char *id,
                                 size_t idlen, uint64_t now_ns, uint64_t sent_ns);

/* Alerts answered 2xx, expected in a room and not (yet) delivered among seq < upto. */
uint64_t lg_track_lost(const struct lg_track *t, uint64_t upto);

#endif
