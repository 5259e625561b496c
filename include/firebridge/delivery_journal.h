/*
 * delivery_journal.h - the delivery engine's records in the write-ahead journal: every accepted
 * delivery (everything needed to send it again: id, method, URL, headers, body, destination,
 * created time, attempts, limits), every attempt started, every outcome.  It is the engine's
 * transition hook and the journal's owner of the delivery record types: at start it gives the
 * pending deliveries back to the engine in their original submission order, with their ids and
 * attempt counts; at a checkpoint it writes again the pending ones held in old segments.
 */
#ifndef FIREBRIDGE_DELIVERY_JOURNAL_H
#define FIREBRIDGE_DELIVERY_JOURNAL_H

#include "firebridge/delivery.h"
#include "firebridge/journal.h"

struct fbr_delivery_journal;

/*
 * Attaches engine and journal (both borrowed, both must outlive it): installs the engine's
 * transition hook, registers as the journal's owner of the delivery records and turns on the
 * engine's holding (fbr_delivery_set_held): a new delivery is sent only once the journal has
 * committed its record (written; fdatasync'ed with --fsync always).  Call before
 * fbr_journal_recover(), which then restores the pending deliveries into the engine.
 */
struct fbr_delivery_journal *fbr_delivery_journal_new(struct fbr_delivery_engine *engine,
                                                      struct fbr_journal *journal);
/* Detaches the hook and frees; sets *dj to NULL.  Deliveries still held stay held (the engine
 * is going away with the journal; their records are in the journal's buffer). */
void fbr_delivery_journal_free(struct fbr_delivery_journal **dj);

/*
 * Where restored deliveries that took their Authorization from a credentials provider at send
 * time (fbr_delivery_submit_auth: the HipChat add-on's installations) find that provider again.
 * The journal keeps only the provider's key (an installation's oauth_id, never a token); at every
 * attempt of such a delivery fn(arg, key, out) is asked: FBR_OK with *out naming the provider,
 * whose get() then supplies the current token, or anything else when it is gone (the delivery
 * dies with that reason).  Until this is set, they wait (call fbr_delivery_auth_ready() after).
 */
typedef int (*fbr_delivery_auth_lookup_fn)(void *arg, const char *key,
                                           struct fbr_delivery_auth_ref *out);
void fbr_delivery_journal_set_auth_lookup(struct fbr_delivery_journal *dj,
                                          fbr_delivery_auth_lookup_fn fn, void *arg);

/* Deliveries restored by the last recovery, and ones the journal had but the engine refused. */
size_t fbr_delivery_journal_restored(const struct fbr_delivery_journal *dj);
size_t fbr_delivery_journal_unreadable(const struct fbr_delivery_journal *dj);

#endif
