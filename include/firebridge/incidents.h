/*
 * incidents.h - the incident lifecycle: alerts (after the Rules Engine) open, roll into, ack and
 * resolve incidents keyed by routing_key + entity_id, and every alert gets the STATE.* and
 * INCIDENT.* namespaces its webhooks render.  The table is bounded (resolved incidents expire,
 * a maximum count evicts the oldest resolved, else the least recently updated open one; O(1) per
 * alert) and persisted as full records in the daemon's write-ahead journal (journal.h), so a
 * restart keeps the open incidents and the incident number counter.  Single-threaded: call from
 * the event loop only.
 */
#ifndef FIREBRIDGE_INCIDENTS_H
#define FIREBRIDGE_INCIDENTS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "firebridge/common.h"
#include "firebridge/journal.h"
#include "firebridge/template.h" /* FBR_NS_BIT: which namespaces a prepare builds */

/* The REST endpoint's message types; anything unknown acts as INFO. */
/* X(NAME): the platform's upper-case spelling of a message_type. */
#define FBR_MSG_TYPE_MAP(X) X(CRITICAL) X(WARNING) X(ACKNOWLEDGEMENT) X(INFO) X(RECOVERY) X(OK)
enum fbr_msg_type {
#define FBR_X(name) FBR_MT_##name,
    FBR_MSG_TYPE_MAP(FBR_X)
#undef FBR_X
};
/* Parses a message_type case-insensitively; returns FBR_OK or FBR_NOTFOUND (*out = INFO). */
int fbr_msg_type_parse(const char *s, size_t len, enum fbr_msg_type *out);
const char *fbr_msg_type_name(enum fbr_msg_type t); /* upper-case spelling */

#define FBR_INCIDENT_PHASE_MAP(X) X(UNACKED) X(ACKED) X(RESOLVED)
enum fbr_incident_phase {
#define FBR_X(name) FBR_PHASE_##name,
    FBR_INCIDENT_PHASE_MAP(FBR_X)
#undef FBR_X
};
const char *fbr_incident_phase_name(enum fbr_incident_phase p); /* "UNACKED"... */

/* What an alert did to the incident table. */
/*
 * X(NAME, name in logs): NONE is timeline only (INFO, or an ack/recovery with nothing open to act
 * on); TRIGGERED a new incident opened; ROLLED into the open incident (ALERT_COUNT + 1), no new
 * trigger.
 */
#define FBR_TRANSITION_MAP(X)                                                                      \
    X(NONE, "none") X(TRIGGERED, "triggered") X(ROLLED, "rolled") X(ACKED, "acked")                \
        X(RESOLVED, "resolved")
enum fbr_transition {
#define FBR_X(name, text) FBR_TR_##name,
    FBR_TRANSITION_MAP(FBR_X)
#undef FBR_X
};
const char *fbr_transition_name(enum fbr_transition t);


struct fbr_incidents_opts {
    struct fbr_journal *journal; /* borrowed, NULL: in memory only (tests, benchmarks); the
                                    table registers as the owner of its records, so open it
                                    before fbr_journal_recover(), which restores the table */
    size_t max_incidents;     /* 0: 10000 */
    uint64_t resolved_ttl_ms; /* resolved incidents are forgotten after this; 0: 24 h */
    int warning_no_open;      /* 1: WARNING only rolls into an open incident, never opens one (the
                                 platform's per-organisation setting); 0: it opens like CRITICAL */
};

struct fbr_incidents;

/* Creates the table (filled by the journal's recovery when opts->journal is set).  Returns
 * FBR_OK with *out set. */
int fbr_incidents_open(const struct fbr_incidents_opts *opts, struct fbr_incidents **out);
/* Frees everything (close the journal afterwards), sets *t to NULL. */
void fbr_incidents_close(struct fbr_incidents **t);

struct fbr_incident_result {
    enum fbr_transition transition;
    enum fbr_msg_type msg_type;
    json_t *state;    /* new reference: the STATE namespace (set unless not asked for) */
    json_t *incident; /* new reference: the INCIDENT namespace, NULL when no incident applies
                         or not asked for */
};

/*
 * Applies one processed alert (borrowed; reads message_type, routing_key, entity_id, VO_UUID,
 * host_name/hostname, service/entity_display_name, state_start_time, ack_author, ack_msg) at wall
 * time now_ms.  Fills *res (release with fbr_incident_result_clear).  Returns FBR_OK (the change
 * is appended to the journal; whether it reached the disk is the journal's fbr_journal_wait).
 */
int fbr_incidents_apply(struct fbr_incidents *t, json_t *alert, uint64_t now_ms,
                        struct fbr_incident_result *res);
void fbr_incident_result_clear(struct fbr_incident_result *res);

/*
 * The lifecycle's rule, pure: what an alert of type mt does to the incident its key finds in the
 * table (cur: its phase, NULL when there is none); warning_no_open as in fbr_incidents_opts.
 */
enum fbr_transition fbr_incident_transition_for(enum fbr_msg_type mt,
                                               const enum fbr_incident_phase *cur,
                                               int warning_no_open);

/* What an alert would do to the table. */
struct fbr_incident_decision {
    enum fbr_transition transition;
    enum fbr_msg_type msg_type;
    uint64_t start_ms;             /* the state start time: the alert's, else now */
    uint64_t number;               /* the incident opened (the number a commit takes) or found;
                                      0: none */
    enum fbr_incident_phase phase; /* that incident's phase after the change (number != 0) */
};
/*
 * The decision alone, given the table and an alert (both borrowed, only read): changes
 * nothing, leaves nothing pending; the same call gives the same answer.  fbr_incidents_prepare()
 * is this decision followed by building the change it names.
 */
void fbr_incidents_decide(const struct fbr_incidents *t, json_t *alert, uint64_t now_ms,
                          struct fbr_incident_decision *out);

/*
 * The same in two steps, for a caller that may still refuse the alert after seeing its result
 * (the intake when the delivery sink is full): fbr_incidents_prepare() fills *res exactly as
 * fbr_incidents_apply() would but changes nothing (no table change, no incident number taken,
 * no journal record); then exactly one of fbr_incidents_commit() (makes the change: table,
 * counter, journal; returns as fbr_incidents_apply) or fbr_incidents_abort() (forgets it).  A
 * prepare with one still pending aborts that one first.  `alert` is only read during prepare.
 */
void fbr_incidents_prepare(struct fbr_incidents *t, json_t *alert, uint64_t now_ms,
                           struct fbr_incident_result *res);
/*
 * fbr_incidents_prepare() building only the namespaces in `namespaces` (FBR_NS_BIT()s of
 * template.h): res->state only with FBR_NS_STATE, res->incident only with FBR_NS_INCIDENT.  The
 * decision and the pending change are the same whatever is asked for; an intake whose webhooks
 * and observers read neither namespace skips building them (about 30 JSON values per alert).
 */
void fbr_incidents_prepare_for(struct fbr_incidents *t, json_t *alert, uint64_t now_ms,
                               unsigned namespaces, struct fbr_incident_result *res);
int fbr_incidents_commit(struct fbr_incidents *t);
void fbr_incidents_abort(struct fbr_incidents *t);

/*
 * Taking changes back when the journal could not commit them (the intake answers such an alert
 * 503, and its sender sends it again: the retry must find the table as it was, or an incident
 * it triggers would only roll into the refused one and its "triggered" message never go out).
 * fbr_incidents_changes() counts the changes committed so far (a mark); fbr_incidents_undo()
 * takes back every change after mark whose journal record is not committed yet, newest first:
 * an incident it created is forgotten, one it changed gets its previous version back, and each
 * of these is journaled again so a restart sees the same.  A change whose incident left the
 * table since (expiry, eviction) stays undone by that; an incident number taken is not given
 * back (numbers may skip).  Returns how many changes were taken back.  With a journal only;
 * the record of each change is kept until the journal commits it (its committed notification).
 */
uint64_t fbr_incidents_changes(const struct fbr_incidents *t);
size_t fbr_incidents_undo(struct fbr_incidents *t, uint64_t mark);

/*
 * Migrates <data_dir>/incidents.journal, the table's own file from before the shared journal
 * (JSON lines in the form the journal's incident records still have), once the journal is
 * recovered: when the journal held no incident state yet, the file's lines are replayed (later
 * ones win, unreadable ones are skipped and counted in the log line), every incident and the
 * counter are appended to the journal and written, and the file is renamed
 * incidents.journal.migrated (kept, never read again).  When the journal already has incident
 * state (a migration interrupted after the write), the file is only renamed.  No file: nothing
 * happens.  Returns FBR_OK, or FBR_ERROR with err (unreadable file, journal write or rename
 * failed; the file is then left in place for the next start).  Needs a journal.
 */
int fbr_incidents_migrate_legacy(struct fbr_incidents *t, const char *data_dir, char *err,
                                 size_t errlen);

/* Drops resolved incidents past their TTL; writes the rate-limited eviction warning. */
int fbr_incidents_flush(struct fbr_incidents *t, uint64_t now_ms);

struct fbr_incidents_stats {
    size_t count;          /* incidents in the table (any phase) */
    size_t open;           /* UNACKED or ACKED */
    uint64_t next_number;
    uint64_t evicted;      /* dropped because the table was full (since open; expiry is not) */
    uint64_t evicted_open; /* of which open (UNACKED or ACKED) ones: alerts' incidents lost */
};
void fbr_incidents_get_stats(const struct fbr_incidents *t, struct fbr_incidents_stats *out);

/* One open incident as a reader sees it; strings borrowed for the visit only. */
struct fbr_incident_view {
    uint64_t number;
    const char *routing_key, *entity_id, *service, *host, *ack_user;
    enum fbr_incident_phase phase; /* UNACKED or ACKED */
    enum fbr_msg_type state;
    uint64_t alert_count, opened_ms, updated_ms;
};
/* Return nonzero to stop the walk. */
typedef int (*fbr_incident_visit_fn)(const struct fbr_incident_view *v, void *arg);
/* Calls fn for every open (UNACKED or ACKED) incident, least recently updated first.  fn must
 * not change the table. */
void fbr_incidents_each_open(const struct fbr_incidents *t, fbr_incident_visit_fn fn, void *arg);

/*
 * A metrics collector (fbr_metrics_collector_fn, arg: the table, borrowed): appends the
 * firebridge_incidents{phase} gauge and firebridge_incidents_evicted_total{phase} counter.
 */
struct evbuffer;
struct fbr_metrics_samples;
void fbr_incidents_metrics_collect(struct fbr_metrics_samples *s, void *arg);
/* That collector's exposition text appended to out (tests). */
void fbr_incidents_metrics_write(struct evbuffer *out, void *arg);

#endif
