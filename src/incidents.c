/*
 * incidents.c - the incident table behind STATE.* and INCIDENT.*: a hash of incidents keyed by
 * lower-cased routing_key + entity_id, driven by each alert after the Rules Engine and before
 * event derivation.  Every change appends one full record (a JSON object) to the daemon's
 * write-ahead journal (journal.h), which writes, syncs and recovers it with the deliveries; each
 * incident holds its latest record there, and a journal checkpoint writes again the ones held in
 * old segments, so nothing here ever rewrites a file or waits for the disk.  At start the journal
 * replays the records (later ones win; {"del":key} forgets, {"next":n} keeps the counter).
 *
 * Besides the hash, every incident sits on one of two intrusive age lists, kept in order of the
 * time of their last change: the resolved ones by resolution time (TTL expiry pops from the head,
 * so does eviction), the open ones by last update (a full table with nothing resolved drops the
 * head, the least recently updated).  Every change moves an incident to the tail of its list, so
 * expiry and eviction cost O(1) per incident whatever the table size.
 */
#include "firebridge/incidents.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/buffer.h>

#include "firebridge/log.h"
#include "firebridge/metrics.h"
#include "firebridge/strmap.h"

#define DEFAULT_MAX 10000
#define DEFAULT_TTL_MS (24u * 3600u * 1000u)
#define EVICT_WARN_MS 10000u /* at most one "table full" warning per this interval */

static const struct fbr_slice mt_names[] = {
#define FBR_X(name) FBR_SLICE(#name),
    FBR_MSG_TYPE_MAP(FBR_X)
#undef FBR_X
};
static const struct fbr_slice phase_names[] = {
#define FBR_X(name) FBR_SLICE(#name),
    FBR_INCIDENT_PHASE_MAP(FBR_X)
#undef FBR_X
};
static const char *const tr_names[] = {
#define FBR_X(name, text) text,
    FBR_TRANSITION_MAP(FBR_X)
#undef FBR_X
};

int fbr_msg_type_parse(const char *s, size_t len, enum fbr_msg_type *out)
{
    for (size_t i = 0; i < FBR_ARRAY_LEN(mt_names); i++) {
        if (s && mt_names[i].len == len && strncasecmp(mt_names[i].ptr, s, len) == 0) {
            *out = (enum fbr_msg_type)i;
            return FBR_OK;
        }
    }
    *out = FBR_MT_INFO;
    return FBR_NOTFOUND;
}

const char *fbr_msg_type_name(enum fbr_msg_type t)
{
    return (unsigned)t < FBR_ARRAY_LEN(mt_names) ? mt_names[t].ptr : "INFO";
}

const char *fbr_incident_phase_name(enum fbr_incident_phase p)
{
    return (unsigned)p < FBR_ARRAY_LEN(phase_names) ? phase_names[p].ptr : "?";
}

const char *fbr_transition_name(enum fbr_transition t)
{
    return (unsigned)t < FBR_ARRAY_LEN(tr_names) ? tr_names[t] : "?";
}

/* The strings of an incident: index, journal record member.  The record writes them in this
 * order, the key first and the number ("n") right after it. */
#define INCIDENT_STR_MAP(X)                                                                        \
    X(KEY, "k") /* lower-cased routing key, unit separator, entity id */                           \
    X(RK, "rk")                                                                                    \
    X(EID, "eid")                                                                                  \
    X(HOST, "host")                                                                                \
    X(SERVICE, "service")                                                                          \
    X(ACK_USER, "ack_user")                                                                        \
    X(ACK_MSG, "ack_msg")                                                                          \
    X(UUID, "uuid") /* the last alert's VO_UUID */
enum incident_str {
#define FBR_X(name, member) S_##name,
    INCIDENT_STR_MAP(FBR_X)
#undef FBR_X
        S_COUNT
};

/* The numbers the record writes after the phase and the state: field, record member. */
#define INCIDENT_NUM_MAP(X)                                                                        \
    X(alert_count, "count")                                                                        \
    X(ack_ms, "ack_ts")                                                                            \
    X(state_start_ms, "start")                                                                     \
    X(opened_ms, "ts")                                                                             \
    X(updated_ms, "upd")                                                                           \
    X(resolved_ms, "res")

/* One version of an incident, in one allocation with its strings: a change makes a new version
 * (incident_make) and the replaced one is freed with free(). */
struct incident {
    struct incident *next;          /* hash chain */
    uint64_t hash;                  /* hash(key): a chain walk compares it before the key */
    struct incident *older, *newer; /* age list (t->resolved or t->live); NULL when detached */
    struct fbr_journal_ref ref;     /* its latest journal record (held) */
    uint64_t number;
    enum fbr_incident_phase phase;
    enum fbr_msg_type state; /* CRITICAL, WARNING or OK */
    uint64_t alert_count;
    uint64_t ack_ms, state_start_ms, opened_ms, updated_ms, resolved_ms;
    /* String i is text + off[i], NUL-terminated, off[i + 1] - off[i] - 1 bytes long. */
    size_t off[S_COUNT + 1];
    char text[];
};

static const char *str(const struct incident *in, enum incident_str i)
{
    return in->text + in->off[i];
}

static struct fbr_slice str_slice(const struct incident *in, enum incident_str i)
{
    return (struct fbr_slice){in->text + in->off[i], in->off[i + 1] - in->off[i] - 1};
}

/* A detached version (not in the table, no journal record) with the numbers, phase, state and
 * hash of `fields` and the strings s[] (copied; none may hold a NUL): one allocation. */
static struct incident *incident_make(const struct incident *fields,
                                      const struct fbr_slice s[S_COUNT])
{
    size_t total = 0;
    for (size_t i = 0; i < S_COUNT; i++)
        total += s[i].len + 1;
    struct incident *in = fbr_xmalloc(sizeof(*in) + total);
    memcpy(in, fields, offsetof(struct incident, off));
    in->next = in->older = in->newer = NULL;
    in->ref = (struct fbr_journal_ref){0, 0};
    size_t o = 0;
    for (size_t i = 0; i < S_COUNT; i++) {
        in->off[i] = o;
        if (s[i].len)
            memcpy(in->text + o, s[i].ptr, s[i].len);
        o += s[i].len;
        in->text[o++] = '\0';
    }
    in->off[S_COUNT] = o;
    return in;
}

/* A reusable line buffer: journal records are written by hand (one allocation-free pass) because
 * building a jansson object and dumping it cost more than the rest of the incident update. */
struct line {
    char *p;
    size_t len, cap;
};

/* An age list: oldest at the head.  Ordered by age_ms(); ties keep insertion order. */
struct age_list {
    struct incident *head, *tail;
};

/* The alert's members the table reads: index, key. */
#define ALERT_FIELD_MAP(X)                                                                         \
    X(MESSAGE_TYPE, "message_type")                                                                \
    X(STATE_START_TIME, "state_start_time")                                                        \
    X(TIMESTAMP, "timestamp")                                                                      \
    X(ROUTING_KEY, "routing_key")                                                                  \
    X(ENTITY_ID, "entity_id")                                                                      \
    X(HOST_NAME, "host_name")                                                                      \
    X(HOSTNAME, "hostname")                                                                        \
    X(SERVICE, "service")                                                                          \
    X(ENTITY_DISPLAY_NAME, "entity_display_name")                                                  \
    X(VO_UUID, "VO_UUID")                                                                          \
    X(ACK_AUTHOR, "ack_author")                                                                    \
    X(ACK_MSG, "ack_msg")
enum alert_field {
#define FBR_X(name, key) A_##name,
    ALERT_FIELD_MAP(FBR_X)
#undef FBR_X
        A_COUNT
};

/* Those members' values (borrowed from the alert), NULL where it has none. */
struct alert_fields {
    json_t *v[A_COUNT];
};

static const struct fbr_slice alert_keys[] = {
#define FBR_X(name, key) FBR_SLICE(key),
    ALERT_FIELD_MAP(FBR_X)
#undef FBR_X
};

/* Finding a member's field in a walk over an alert: an open-addressing table of the field
 * indexes (+1; 0: empty), by a hash of a key's length and first and last bytes, built with the
 * incident table. */
#define FIELD_SLOTS 32 /* a power of two, at least twice A_COUNT */
_Static_assert(FIELD_SLOTS >= 2 * A_COUNT, "FIELD_SLOTS too small for ALERT_FIELD_MAP");

static unsigned field_hash(const char *k, size_t n)
{
    return (unsigned)(n + (unsigned char)k[0] + 8u * (unsigned char)k[n - 1]) & (FIELD_SLOTS - 1);
}

static void field_slots_build(uint8_t slot[FIELD_SLOTS])
{
    for (size_t i = 0; i < A_COUNT; i++) {
        unsigned h = field_hash(alert_keys[i].ptr, alert_keys[i].len);
        while (slot[h])
            h = (h + 1) & (FIELD_SLOTS - 1);
        slot[h] = (uint8_t)(i + 1);
    }
}

/* The field of member k (n bytes), A_COUNT for one the table does not read. */
static enum alert_field field_of(const uint8_t slot[FIELD_SLOTS], const char *k, size_t n)
{
    if (n == 0)
        return A_COUNT;
    for (unsigned h = field_hash(k, n); slot[h]; h = (h + 1) & (FIELD_SLOTS - 1)) {
        enum alert_field i = (enum alert_field)(slot[h] - 1);
        if (alert_keys[i].len == n && memcmp(alert_keys[i].ptr, k, n) == 0)
            return i;
    }
    return A_COUNT;
}

struct fbr_incidents {
    struct fbr_incidents_opts opts;
    struct fbr_journal *journal; /* borrowed, NULL: in memory only */
    struct fbr_journal_ref counter_ref; /* the record that carries next_number (held) */
    struct incident **buckets;
    size_t nbuckets; /* power of two */
    size_t count, open;
    struct age_list resolved; /* RESOLVED incidents, by resolved_ms */
    struct age_list live;     /* UNACKED and ACKED incidents, by updated_ms */
    int replaying;            /* journal replay: append unsorted, sort once at the end */
    struct fbr_strmap deferred; /* key -> struct deferred: each key's latest record, during
                                   the replay only (parsed once, at its end) */
    uint64_t next_number;
    /* An alert member's name -> its field (alert_fields_read). */
    uint8_t field_slot[FIELD_SLOTS];
    struct line line;     /* journal record being written */
    uint64_t evicted, evicted_open;
    /* The rate-limited "table full" warning: open incidents dropped since the last line. */
    struct {
        int logged;           /* a line was written (last_ms is meaningful) */
        uint64_t last_ms;     /* when */
        uint64_t pending;     /* drops not yet reported */
        uint64_t last_number; /* the latest dropped incident's number */
    } warn;
    /* The committed changes whose journal record is not committed yet, oldest first (a ring):
     * what each replaced, so fbr_incidents_undo() can take it back if the journal fails. */
    struct undo {
        struct incident *before; /* the replaced version (detached, owned); NULL: it was new */
        struct incident *after;  /* the version put in the table (borrowed); NULL once it left
                                    the table another way (expiry, eviction) */
        uint64_t pos;            /* journal position after the change's record */
    } *undo;
    size_t uhead, ucount, ucap;
    uint64_t changes; /* changes committed since open (fbr_incidents_changes) */
    /* The change prepared by fbr_incidents_prepare, until commit or abort. */
    struct {
        int active;
        enum fbr_transition tr;
        struct incident *cur;  /* the incident in the table, NULL for a new one */
        struct incident *next; /* its changed copy (owned), NULL when tr is FBR_TR_NONE */
        uint64_t now_ms;
    } pend;
};

/* ---- hash table --------------------------------------------------------------------------- */

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static struct incident **slot_h(const struct fbr_incidents *t, const char *key, uint64_t h)
{
    struct incident **pp = &t->buckets[h & (t->nbuckets - 1)];
    while (*pp && ((*pp)->hash != h || strcmp(str(*pp, S_KEY), key) != 0))
        pp = &(*pp)->next;
    return pp;
}

static struct incident **slot(const struct fbr_incidents *t, const char *key)
{
    return slot_h(t, key, hash(key));
}

static void grow(struct fbr_incidents *t)
{
    size_t n = t->nbuckets * 2;
    struct incident **b = fbr_xcalloc(n, sizeof(*b));
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (struct incident *in = t->buckets[i], *nx; in; in = nx) {
            nx = in->next;
            size_t h = in->hash & (n - 1);
            in->next = b[h];
            b[h] = in;
        }
    }
    free(t->buckets);
    t->buckets = b;
    t->nbuckets = n;
}

static int is_open(const struct incident *in)
{
    return in->phase != FBR_PHASE_RESOLVED;
}

/* ---- age lists ---------------------------------------------------------------------------- */

/* The order key: resolution time for a resolved incident (equal to its last update, since a
 * resolved incident changes only by re-opening), last update for an open one. */
static uint64_t age_ms(const struct incident *in)
{
    return is_open(in) ? in->updated_ms : in->resolved_ms;
}

static struct age_list *list_of(struct fbr_incidents *t, const struct incident *in)
{
    return is_open(in) ? &t->live : &t->resolved;
}

static void list_unlink(struct age_list *l, struct incident *in)
{
    if (in->older)
        in->older->newer = in->newer;
    else
        l->head = in->newer;
    if (in->newer)
        in->newer->older = in->older;
    else
        l->tail = in->older;
    in->older = in->newer = NULL;
}

/* Links `in` after `pos` (NULL: at the head). */
static void list_link_after(struct age_list *l, struct incident *pos, struct incident *in)
{
    in->older = pos;
    in->newer = pos ? pos->newer : l->head;
    if (in->newer)
        in->newer->older = in;
    else
        l->tail = in;
    if (pos)
        pos->newer = in;
    else
        l->head = in;
}

/* Inserts in order, searching from the tail: O(1) while the clock moves forward (every change
 * is the newest).  When the wall clock steps back the order still holds, at the cost of walking
 * past the incidents changed "later" until the clock catches up with them. */
static void list_insert(struct age_list *l, struct incident *in)
{
    uint64_t key = age_ms(in);
    struct incident *pos = l->tail;
    while (pos && age_ms(pos) > key)
        pos = pos->older;
    list_link_after(l, pos, in);
}

/* Stable merge sort of a chain linked through ->newer (the ->older links are rebuilt later). */
static struct incident *chain_sort(struct incident *h, size_t n)
{
    if (n < 2) {
        if (h)
            h->newer = NULL;
        return h;
    }
    struct incident *mid = h;
    for (size_t i = 1; i < n / 2; i++)
        mid = mid->newer;
    struct incident *b = mid->newer;
    mid->newer = NULL;
    struct incident *a = chain_sort(h, n / 2);
    b = chain_sort(b, n - n / 2);
    struct incident head = {0}, *tail = &head;
    while (a && b) {
        struct incident **take = age_ms(b) < age_ms(a) ? &b : &a;
        tail->newer = *take;
        tail = *take;
        *take = (*take)->newer;
    }
    tail->newer = a ? a : b;
    return head.newer;
}

/* Orders a list appended to in journal order (a compacted journal is not in time order). */
static void list_sort(struct age_list *l)
{
    size_t n = 0;
    for (struct incident *in = l->head; in; in = in->newer)
        n++;
    l->head = chain_sort(l->head, n);
    l->tail = NULL;
    for (struct incident *in = l->head; in; in = in->newer) {
        in->older = l->tail;
        l->tail = in;
    }
}

static void age_insert(struct fbr_incidents *t, struct incident *in)
{
    struct age_list *l = list_of(t, in);
    if (t->replaying) {
        list_link_after(l, l->tail, in);
        return;
    }
    list_insert(l, in);
}

/* Puts in (its hash set, its key not in the table) into the table. */
static void table_insert(struct fbr_incidents *t, struct incident *in)
{
    if (t->count + 1 > t->nbuckets - t->nbuckets / 4)
        grow(t);
    struct incident **pp = slot_h(t, str(in, S_KEY), in->hash);
    in->next = NULL;
    *pp = in;
    t->count++;
    t->open += is_open(in);
    age_insert(t, in);
}

static struct undo *undo_at(struct fbr_incidents *t, size_t i)
{
    return &t->undo[(t->uhead + i) % t->ucap];
}

/* in is about to be freed: no undo entry may name it as the version in the table. */
static void undo_drop_ptr(struct fbr_incidents *t, const struct incident *in)
{
    for (size_t i = 0; i < t->ucount; i++)
        if (undo_at(t, i)->after == in)
            undo_at(t, i)->after = NULL;
}

static void table_remove(struct fbr_incidents *t, struct incident *in)
{
    struct incident **pp = slot_h(t, str(in, S_KEY), in->hash);
    if (*pp != in)
        return;
    undo_drop_ptr(t, in);
    *pp = in->next;
    t->count--;
    t->open -= is_open(in);
    list_unlink(list_of(t, in), in);
    free(in);
}

/* ---- journal ------------------------------------------------------------------------------ */

/* Makes room for n more bytes. */
static void line_room(struct line *l, size_t n)
{
    if (l->len + n > l->cap) {
        l->cap = (l->len + n) * 2 + 256;
        l->p = fbr_xrealloc(l->p, l->cap);
    }
}

static char *put(char *d, struct fbr_slice s)
{
    memcpy(d, s.ptr, s.len);
    return d + s.len;
}

/* Writes s as a JSON string's contents (6 bytes of room per byte of s). */
static char *put_escaped(char *d, struct fbr_slice s)
{
    return d + fbr_json_escape(d, s.ptr, s.len);
}

static char *put_num(char *d, uint64_t v)
{
    return d + fbr_fmt_u64(d, v);
}

/* What a record holds besides its escaped strings: member names and punctuation (about 150
 * bytes), the names of the phase and the state, seven numbers. */
#define RECORD_FIXED_MAX 512

/*
 * The record of an incident, in t->line, in one pass:
 *   {"k":"..","n":N,"rk":"..","eid":"..","host":"..","service":"..","ack_user":"..",
 *    "ack_msg":"..","uuid":"..","phase":"..","state":"..","count":N,"ack_ts":N,"start":N,
 *    "ts":N,"upd":N,"res":N}  and a newline.
 * The replay reads the key and the number from this form (scan_record), and recovery of every
 * journal written so far depends on it: test_incidents records_written_byte_for_byte.
 */
static void record_line(struct line *l, const struct incident *in)
{
    static const struct fbr_slice str_members[] = {
#define FBR_X(name, member) FBR_SLICE(",\"" member "\":\""),
        INCIDENT_STR_MAP(FBR_X)
#undef FBR_X
    };
    l->len = 0;
    line_room(l, 6 * in->off[S_COUNT] + RECORD_FIXED_MAX);
    char *d = put(l->p, FBR_SLICE("{\"k\":\""));
    d = put_escaped(d, str_slice(in, S_KEY));
    d = put(d, FBR_SLICE("\",\"n\":"));
    d = put_num(d, in->number);
    for (size_t i = S_KEY + 1; i < S_COUNT; i++) {
        d = put(d, str_members[i]);
        d = put_escaped(d, str_slice(in, (enum incident_str)i));
        *d++ = '"';
    }
    d = put(d, FBR_SLICE(",\"phase\":\""));
    d = put(d, phase_names[in->phase]);
    d = put(d, FBR_SLICE("\",\"state\":\""));
    d = put(d, mt_names[in->state]);
    *d++ = '"';
#define FBR_X(field, member)                                                                       \
    d = put(d, FBR_SLICE(",\"" member "\":"));                                                     \
    d = put_num(d, in->field);
    INCIDENT_NUM_MAP(FBR_X)
#undef FBR_X
    d = put(d, FBR_SLICE("}\n"));
    l->len = (size_t)(d - l->p);
}

/* Appends the record in t->line; returns its ref (held), or a null ref in memory. */
static struct fbr_journal_ref journal_append(struct fbr_incidents *t)
{
    if (!t->journal)
        return (struct fbr_journal_ref){0, 0};
    return fbr_journal_append(t->journal, FBR_JR_INCIDENT, t->line.p, t->line.len);
}

/* Writes {"next":n} and makes it the counter's record. */
static void journal_counter(struct fbr_incidents *t)
{
    t->line.len = 0;
    line_room(&t->line, RECORD_FIXED_MAX);
    char *d = put(t->line.p, FBR_SLICE("{\"next\":"));
    d = put_num(d, t->next_number);
    *d++ = '}';
    t->line.len = (size_t)(d - t->line.p);
    struct fbr_journal_ref r = journal_append(t);
    fbr_journal_release(t->journal, t->counter_ref);
    t->counter_ref = r;
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

static uint64_t jnum(json_t *o, const char *k)
{
    json_int_t v = json_integer_value(json_object_get(o, k));
    return v > 0 ? (uint64_t)v : 0;
}

/* Makes ref the counter's record (held once more). */
static void counter_at(struct fbr_incidents *t, struct fbr_journal_ref ref)
{
    fbr_journal_hold(t->journal, ref);
    fbr_journal_release(t->journal, t->counter_ref);
    t->counter_ref = ref;
}

static void replay_line(struct fbr_incidents *t, json_t *j, struct fbr_journal_ref ref)
{
    json_t *next = json_object_get(j, "next");
    if (json_is_integer(next)) {
        if ((uint64_t)json_integer_value(next) >= t->next_number) {
            t->next_number = (uint64_t)json_integer_value(next);
            counter_at(t, ref);
        }
        return;
    }
    const char *del = json_string_value(json_object_get(j, "del"));
    if (del) {
        struct incident *in = *slot(t, del);
        if (in) {
            fbr_journal_release(t->journal, in->ref);
            table_remove(t, in);
        }
        return;
    }
    const char *key = json_string_value(json_object_get(j, "k"));
    if (!key)
        return;
    struct incident *old = *slot(t, key);
    if (old) {
        fbr_journal_release(t->journal, old->ref);
        table_remove(t, old);
    }
    static const char *const str_members[] = {
#define FBR_X(name, member) member,
        INCIDENT_STR_MAP(FBR_X)
#undef FBR_X
    };
    struct fbr_slice strs[S_COUNT];
    for (size_t i = 0; i < S_COUNT; i++)
        strs[i] = fbr_slice_from(jstr(j, str_members[i]));
    struct incident f = {.number = jnum(j, "n"), .hash = hash(key), .phase = FBR_PHASE_UNACKED};
    struct fbr_slice ph = fbr_slice_from(jstr(j, "phase"));
    for (size_t i = 0; i < FBR_ARRAY_LEN(phase_names); i++) {
        if (fbr_slice_eq(ph, phase_names[i]))
            f.phase = (enum fbr_incident_phase)i;
    }
    const char *st = jstr(j, "state");
    fbr_msg_type_parse(st, strlen(st), &f.state);
#define FBR_X(field, member) f.field = jnum(j, member);
    INCIDENT_NUM_MAP(FBR_X)
#undef FBR_X
    struct incident *in = incident_make(&f, strs);
    if (in->number >= t->next_number) {
        t->next_number = in->number + 1;
        counter_at(t, ref);
    }
    in->ref = ref;
    fbr_journal_hold(t->journal, ref);
    table_insert(t, in);
}

/* ---- the journal owner ---- */

/*
 * Replay in two passes: while the journal is read, each record only updates a map from key to
 * that key's latest record (a forget removes it, the counter is applied at once), and the
 * records still in the map are parsed and inserted at the end.  A table that keeps 10,000
 * incidents out of 100,000 journaled changes parses 10,000 JSON objects, not 100,000.  The
 * key and number are read from the fixed form record_line(), forget() and journal_counter()
 * write; anything else (an escape in the key) is parsed as JSON on the spot.
 */
struct deferred {
    struct fbr_slice payload; /* borrowed from the journal until replay_done */
    struct fbr_journal_ref ref;
};

enum rec_kind { REC_NONE, REC_INCIDENT, REC_DEL, REC_NEXT };

struct rec_head {
    enum rec_kind kind;
    struct fbr_slice key;
    uint64_t number;
};

/* The value of a lower-case hex digit (what record_line writes), -1 for anything else. */
static int lower_hex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decodes the JSON string starting at p (after its opening quote) into buf (cap bytes): the
 * escapes record_line() writes (\" \\ and \u00xx for a control character other than NUL); returns
 * the position after the closing quote, or NULL for anything else (then parsed as JSON). */
static const char *plain_str(const char *p, const char *end, char *buf, size_t cap,
                             struct fbr_slice *out)
{
    size_t n = 0;
    while (p < end && *p != '"' && n < cap) {
        char c = *p++;
        if (c == '\\') {
            int lo = end - p >= 5 && memcmp(p, "u00", 3) == 0 ? lower_hex(p[4]) : -1;
            if (p < end && (*p == '"' || *p == '\\')) {
                c = *p++;
            } else if (lo >= 0 && (p[3] == '0' || p[3] == '1') && (p[3] - '0') * 16 + lo != 0) {
                c = (char)((p[3] - '0') * 16 + lo);
                p += 5;
            } else {
                return NULL;
            }
        }
        buf[n++] = c;
    }
    if (p == end || *p != '"')
        return NULL;
    *out = (struct fbr_slice){buf, n};
    return p + 1;
}

static const char *digits(const char *p, const char *end, uint64_t *v)
{
    const char *q = p;
    *v = 0;
    while (q < end && *q >= '0' && *q <= '9' && q - p < 19)
        *v = *v * 10 + (uint64_t)(*q++ - '0');
    return q > p ? q : NULL;
}

static int starts(const char *p, const char *end, const char *lit, size_t n)
{
    return (size_t)(end - p) >= n && memcmp(p, lit, n) == 0;
}

/* The kind, key and number of a record in the fixed form; REC_NONE when not in that form. */
static struct rec_head scan_record(struct fbr_slice r, char *buf, size_t cap)
{
    struct rec_head h = {REC_NONE, {NULL, 0}, 0};
    const char *p = r.ptr, *end = r.ptr + r.len;
    if (starts(p, end, "{\"k\":\"", 6)) {
        p = plain_str(p + 6, end, buf, cap, &h.key);
        if (p && starts(p, end, ",\"n\":", 5) && digits(p + 5, end, &h.number))
            h.kind = REC_INCIDENT;
    } else if (starts(p, end, "{\"del\":\"", 8)) {
        p = plain_str(p + 8, end, buf, cap, &h.key);
        if (p && starts(p, end, "}", 1))
            h.kind = REC_DEL;
    } else if (starts(p, end, "{\"next\":", 8)) {
        p = digits(p + 8, end, &h.number);
        if (p && starts(p, end, "}", 1))
            h.kind = REC_NEXT;
    }
    return h;
}

static void owner_replay(void *arg, unsigned type, struct fbr_slice p, struct fbr_journal_ref ref)
{
    struct fbr_incidents *t = arg;
    (void)type;
    char kbuf[4096];
    struct rec_head h = scan_record(p, kbuf, sizeof(kbuf));
    json_t *j = NULL;
    if (h.kind == REC_NONE) {
        j = json_loadb(p.ptr, p.len, 0, NULL);
        json_t *v;
        if (!j) {
            fbr_log_warn("incidents: ignored an unreadable journal record");
            return;
        }
        if (json_is_integer(v = json_object_get(j, "next"))) {
            h.kind = REC_NEXT;
            h.number = (uint64_t)json_integer_value(v);
        } else if (json_is_string(v = json_object_get(j, "del"))) {
            h.kind = REC_DEL;
            h.key = (struct fbr_slice){json_string_value(v), json_string_length(v)};
        } else if (json_is_string(v = json_object_get(j, "k"))) {
            h.kind = REC_INCIDENT;
            h.key = (struct fbr_slice){json_string_value(v), json_string_length(v)};
            json_int_t n = json_integer_value(json_object_get(j, "n"));
            h.number = n > 0 ? (uint64_t)n : 0;
        }
    }
    if (h.kind == REC_NEXT && h.number >= t->next_number) {
        t->next_number = h.number;
        counter_at(t, ref);
    } else if (h.kind == REC_DEL) {
        struct deferred *d = fbr_strmap_del(&t->deferred, h.key.ptr, h.key.len);
        if (d) {
            fbr_journal_release(t->journal, d->ref);
            free(d);
        }
    } else if (h.kind == REC_INCIDENT) {
        if (h.number >= t->next_number) {
            t->next_number = h.number + 1;
            counter_at(t, ref);
        }
        struct deferred *d = fbr_strmap_get(&t->deferred, h.key.ptr, h.key.len);
        if (d) {
            fbr_journal_release(t->journal, d->ref);
        } else {
            d = fbr_xmalloc(sizeof(*d));
            fbr_strmap_put(&t->deferred, h.key.ptr, h.key.len, d);
        }
        *d = (struct deferred){p, ref};
        fbr_journal_hold(t->journal, ref);
    }
    json_decref(j);
}

/* Parses and inserts one key's latest record (the second pass). */
static void replay_deferred(const char *key, void *value, void *arg)
{
    struct fbr_incidents *t = arg;
    struct deferred *d = value;
    (void)key;
    json_t *j = json_loadb(d->payload.ptr, d->payload.len, 0, NULL);
    if (j)
        replay_line(t, j, d->ref); /* takes its own hold */
    else
        fbr_log_warn("incidents: ignored an unreadable journal record");
    json_decref(j);
    fbr_journal_release(t->journal, d->ref);
    free(d);
}

static void free_deferred(const char *key, void *value, void *arg)
{
    (void)key, (void)arg;
    free(value);
}

static void owner_replay_done(void *arg)
{
    struct fbr_incidents *t = arg;
    fbr_strmap_each(&t->deferred, replay_deferred, t);
    fbr_strmap_clear(&t->deferred);
    t->replaying = 0;
    list_sort(&t->resolved);
    list_sort(&t->live);
    if (t->count || t->next_number > 1)
        fbr_log_info("incidents: %zu incident(s) restored, %zu open, next number %" PRIu64,
                     t->count, t->open, t->next_number);
}

/* The journal committed everything below pos: those changes are final. */
static void owner_committed(void *arg, uint64_t pos)
{
    struct fbr_incidents *t = arg;
    while (t->ucount && t->undo[t->uhead].pos <= pos) {
        struct incident *before = t->undo[t->uhead].before;
        if (before)
            free(before);
        t->uhead = (t->uhead + 1) % t->ucap;
        t->ucount--;
    }
}

/* Writes again every incident (and the counter) whose record is in a segment <= upto. */
static void owner_checkpoint(void *arg, uint32_t upto)
{
    struct fbr_incidents *t = arg;
    struct age_list *lists[] = {&t->resolved, &t->live};
    for (size_t i = 0; i < FBR_ARRAY_LEN(lists); i++) {
        for (struct incident *in = lists[i]->head; in; in = in->newer) {
            if (!in->ref.seg || in->ref.seg > upto)
                continue;
            record_line(&t->line, in);
            struct fbr_journal_ref r = journal_append(t);
            fbr_journal_release(t->journal, in->ref);
            in->ref = r;
        }
    }
    if (t->counter_ref.seg && t->counter_ref.seg <= upto)
        journal_counter(t);
}

int fbr_incidents_migrate_legacy(struct fbr_incidents *t, const char *data_dir, char *err,
                                 size_t errlen)
{
    char path[4096], done[4200];
    snprintf(path, sizeof(path), "%s/incidents.journal", data_dir);
    snprintf(done, sizeof(done), "%s.migrated", path);
    FILE *f = fopen(path, "re");
    if (!f) {
        if (errno == ENOENT)
            return FBR_OK;
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return FBR_ERROR;
    }
    if (!t->journal) {
        fclose(f);
        snprintf(err, errlen, "%s can only be migrated into the journal", path);
        return FBR_ERROR;
    }
    size_t lines = 0, bad = 0;
    int had_state = t->count || t->next_number > 1;
    if (!had_state) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        t->replaying = 1;
        while ((n = getline(&line, &cap, f)) > 0) {
            json_t *j = json_loadb(line, (size_t)n, 0, NULL);
            if (j)
                replay_line(t, j, (struct fbr_journal_ref){0, 0});
            json_decref(j);
            lines++;
            bad += !j;
        }
        free(line);
        t->replaying = 0;
        list_sort(&t->resolved);
        list_sort(&t->live);
        /* into the journal: every incident (oldest first), then the counter */
        struct age_list *lists[] = {&t->resolved, &t->live};
        for (size_t i = 0; i < FBR_ARRAY_LEN(lists); i++) {
            for (struct incident *in = lists[i]->head; in; in = in->newer) {
                record_line(&t->line, in);
                in->ref = journal_append(t);
            }
        }
        journal_counter(t);
    }
    int read_err = ferror(f);
    fclose(f);
    if (read_err) {
        snprintf(err, errlen, "cannot read %s", path);
        return FBR_ERROR;
    }
    if (fbr_journal_flush(t->journal) != FBR_OK) {
        snprintf(err, errlen, "cannot write the incidents of %s to the journal: %s", path,
                 fbr_journal_trouble(t->journal));
        return FBR_ERROR;
    }
    if (rename(path, done) != 0) {
        snprintf(err, errlen, "cannot rename %s to %s: %s", path, done, strerror(errno));
        return FBR_ERROR;
    }
    if (had_state)
        fbr_log_warn("incidents: %s was not read: the journal already holds the incident table "
                     "(renamed %s)",
                     path, done);
    else
        fbr_log_info("incidents: migrated %zu incident(s) (%zu line(s), %zu unreadable) from %s "
                     "into the journal, next number %" PRIu64 "; the old file is kept as %s",
                     t->count, lines, bad, path, t->next_number, done);
    return FBR_OK;
}

int fbr_incidents_open(const struct fbr_incidents_opts *opts, struct fbr_incidents **out)
{
    struct fbr_incidents *t = fbr_xcalloc(1, sizeof(*t));
    t->opts = *opts;
    if (!t->opts.max_incidents)
        t->opts.max_incidents = DEFAULT_MAX;
    if (!t->opts.resolved_ttl_ms)
        t->opts.resolved_ttl_ms = DEFAULT_TTL_MS;
    t->nbuckets = 64;
    t->buckets = fbr_xcalloc(t->nbuckets, sizeof(*t->buckets));
    t->next_number = 1;
    field_slots_build(t->field_slot);
    fbr_strmap_init(&t->deferred);
    t->journal = opts->journal;
    if (t->journal) {
        t->replaying = 1; /* until the journal's recovery says it is done */
        struct fbr_journal_owner o = {.name = "incidents", .types = 1u << FBR_JR_INCIDENT,
                                      .replay = owner_replay, .replay_done = owner_replay_done,
                                      .checkpoint = owner_checkpoint,
                                      .committed = owner_committed, .arg = t};
        fbr_journal_add_owner(t->journal, &o);
    }
    *out = t;
    return FBR_OK;
}

void fbr_incidents_close(struct fbr_incidents **tp)
{
    struct fbr_incidents *t = *tp;
    if (!t)
        return;
    fbr_incidents_abort(t);
    if (t->journal)
        fbr_journal_remove_owner(t->journal, t);
    for (size_t i = 0; i < t->ucount; i++)
        if (undo_at(t, i)->before)
            free(undo_at(t, i)->before);
    free(t->undo);
    fbr_strmap_each(&t->deferred, free_deferred, NULL); /* a recovery that failed */
    fbr_strmap_clear(&t->deferred);
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (struct incident *in = t->buckets[i], *nx; in; in = nx) {
            nx = in->next;
            free(in);
        }
    }
    free(t->buckets);
    free(t->line.p);
    free(t);
    *tp = NULL;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void forget(struct fbr_incidents *t, struct incident *in)
{
    if (t->journal) {
        t->line.len = 0;
        struct fbr_slice key = str_slice(in, S_KEY);
        line_room(&t->line, 6 * key.len + RECORD_FIXED_MAX);
        char *d = put(t->line.p, FBR_SLICE("{\"del\":\""));
        d = put_escaped(d, key);
        d = put(d, FBR_SLICE("\"}"));
        t->line.len = (size_t)(d - t->line.p);
        fbr_journal_release(t->journal, journal_append(t)); /* a forget holds nothing */
        fbr_journal_release(t->journal, in->ref);
    }
    table_remove(t, in);
}

/* Forgets the resolved incidents past their TTL: the oldest resolutions, from the list head. */
static void expire(struct fbr_incidents *t, uint64_t now_ms)
{
    struct incident *in;
    while ((in = t->resolved.head) && in->resolved_ms + t->opts.resolved_ttl_ms <= now_ms)
        forget(t, in);
}

/* Writes the "table full" warning for the open incidents dropped since the last one. */
static void warn_evictions(struct fbr_incidents *t, uint64_t now_ms)
{
    if (t->warn.pending == 1)
        fbr_log_warn("incidents: table full (%zu), dropped open incident %" PRIu64,
                     t->opts.max_incidents, t->warn.last_number);
    else
        fbr_log_warn("incidents: table full (%zu), dropped %" PRIu64 " open incidents since "
                     "the last warning, the latest %" PRIu64 " (%" PRIu64 " since start)",
                     t->opts.max_incidents, t->warn.pending, t->warn.last_number,
                     t->evicted_open);
    t->warn.logged = 1;
    t->warn.last_ms = now_ms;
    t->warn.pending = 0;
}

/* Whether the interval since the last warning has passed (or the wall clock stepped back). */
static int warn_due(const struct fbr_incidents *t, uint64_t now_ms)
{
    return !t->warn.logged || now_ms < t->warn.last_ms ||
           now_ms - t->warn.last_ms >= EVICT_WARN_MS;
}

/* Makes room for one more incident: expired first, then the oldest resolved, then (logged, at
 * most once per EVICT_WARN_MS) the least recently updated open one.  Ties on the time go to the
 * incident changed first. */
static void make_room(struct fbr_incidents *t, uint64_t now_ms)
{
    if (t->count < t->opts.max_incidents)
        return;
    expire(t, now_ms);
    if (t->count < t->opts.max_incidents)
        return;
    struct incident *victim = t->resolved.head ? t->resolved.head : t->live.head;
    if (!victim)
        return;
    if (is_open(victim)) {
        t->evicted_open++;
        t->warn.pending++;
        t->warn.last_number = victim->number;
        if (warn_due(t, now_ms))
            warn_evictions(t, now_ms);
    }
    t->evicted++;
    forget(t, victim);
}

/* An alert up to this many members is read in one walk over them (a dozen lookups, each hashing
 * its key, cost more than that); a larger one by one lookup per field, so that an alert's size
 * does not multiply the table's work. */
#define ALERT_WALK_MAX 32

static void alert_fields_read(const struct fbr_incidents *t, json_t *alert, struct alert_fields *f)
{
    if (json_object_size(alert) > ALERT_WALK_MAX) {
        for (size_t i = 0; i < A_COUNT; i++)
            f->v[i] = json_object_getn(alert, alert_keys[i].ptr, alert_keys[i].len);
        return;
    }
    memset(f, 0, sizeof(*f));
    for (void *it = json_object_iter(alert); it; it = json_object_iter_next(alert, it)) {
        enum alert_field i =
            field_of(t->field_slot, json_object_iter_key(it), json_object_iter_key_len(it));
        if (i != A_COUNT)
            f->v[i] = json_object_iter_value(it);
    }
}

/* Field i as a C string reads it (up to a NUL: the table's strings hold none), {NULL, 0} when
 * absent or not a string. */
static struct fbr_slice alert_str(const struct alert_fields *f, enum alert_field i)
{
    return fbr_slice_from(json_string_value(f->v[i]));
}

static struct fbr_slice or_empty(struct fbr_slice s)
{
    return s.ptr ? s : FBR_SLICE("");
}

/* Epoch seconds (number or numeric string) in field i, as ms; 0 when absent or unusable. */
static uint64_t alert_secs_ms(const struct alert_fields *f, enum alert_field i)
{
    json_t *v = f->v[i];
    double secs = 0;
    if (json_is_number(v)) {
        secs = json_number_value(v);
    } else if (json_is_string(v)) {
        char *end;
        secs = strtod(json_string_value(v), &end);
        if (*end)
            secs = 0;
    }
    return secs > 0 && secs < 1e12 ? (uint64_t)(secs * 1000.0) : 0;
}

static struct fbr_slice host_of(const struct alert_fields *f)
{
    struct fbr_slice h = alert_str(f, A_HOST_NAME);
    return or_empty(h.ptr ? h : alert_str(f, A_HOSTNAME));
}

static struct fbr_slice service_of(const struct alert_fields *f)
{
    struct fbr_slice s = alert_str(f, A_SERVICE);
    return or_empty(s.ptr ? s : alert_str(f, A_ENTITY_DISPLAY_NAME));
}

/* The namespaces are built per alert on the hot path: plain setters, no format parsing, no UTF-8
 * re-validation (every string came out of a validated JSON string or a literal). */
static void put_s(json_t *o, const char *k, struct fbr_slice v)
{
    json_object_set_new_nocheck(o, k, json_stringn_nocheck(v.ptr ? v.ptr : "", v.len));
}

static void put_i(json_t *o, const char *k, uint64_t v)
{
    json_object_set_new_nocheck(o, k, json_integer((json_int_t)v));
}

static json_t *state_json(const struct incident *in)
{
    char name[FBR_U64_DIGITS + 1];
    size_t name_len = fbr_fmt_u64(name, in->number);
    json_t *o = json_object();
    put_s(o, "INCIDENT_NAME", (struct fbr_slice){name, name_len});
    put_s(o, "CURRENT_ALERT_PHASE", phase_names[in->phase]);
    put_s(o, "CURRENT_STATE", mt_names[in->state]);
    put_i(o, "ALERT_COUNT", in->alert_count);
    put_s(o, "ACK_USER", str_slice(in, S_ACK_USER));
    put_s(o, "ACK_MSG", str_slice(in, S_ACK_MSG));
    put_i(o, "ACK_TIMESTAMP", in->ack_ms);
    put_s(o, "ENTITY_ID", str_slice(in, S_EID));
    put_s(o, "HOST", str_slice(in, S_HOST));
    put_s(o, "SERVICE", str_slice(in, S_SERVICE));
    put_i(o, "STATE_START_TIME", in->state_start_ms);
    put_i(o, "INCIDENT_TIMESTAMP", in->opened_ms);
    put_s(o, "LAST_UUID", str_slice(in, S_UUID));
    return o;
}

static json_t *incident_json(const struct incident *in)
{
    char name[FBR_U64_DIGITS + 2];
    name[0] = '#';
    size_t id_len = fbr_fmt_u64(name + 1, in->number);
    json_t *o = json_object();
    put_s(o, "INCIDENT_ID", (struct fbr_slice){name + 1, id_len});
    put_s(o, "INCIDENT_NAME", (struct fbr_slice){name, id_len + 1});
    put_s(o, "CURRENT_PHASE", phase_names[in->phase]);
    put_s(o, "ENTITY_STATE", mt_names[in->state]);
    put_i(o, "ALERT_COUNT", in->alert_count);
    put_s(o, "ENTITY_ID", str_slice(in, S_EID));
    put_s(o, "ROUTING_KEY", str_slice(in, S_RK));
    put_s(o, "HOST", str_slice(in, S_HOST));
    put_s(o, "SERVICE", str_slice(in, S_SERVICE));
    if (in->ack_ms == 0)
        json_object_set_new_nocheck(o, "ACKED_BY", json_null());
    else
        put_s(o, "ACKED_BY", str_slice(in, S_ACK_USER));
    put_s(o, "ACK_MSG", str_slice(in, S_ACK_MSG));
    put_i(o, "ACK_TIMESTAMP", in->ack_ms);
    put_i(o, "INCIDENT_TIMESTAMP", in->opened_ms);
    put_i(o, "LAST_ALERT_TIME", in->updated_ms);
    put_i(o, "RESOLVED_TIMESTAMP", in->resolved_ms);
    put_s(o, "LAST_UUID", str_slice(in, S_UUID));
    return o;
}

/* STATE for an alert that touches no incident (eid: its entity id, "" when it has none). */
static json_t *state_no_incident(const struct alert_fields *f, struct fbr_slice eid,
                                 enum fbr_msg_type mt, uint64_t start_ms)
{
    json_t *o = json_object();
    put_s(o, "INCIDENT_NAME", FBR_SLICE(""));
    put_s(o, "CURRENT_ALERT_PHASE", FBR_SLICE(""));
    put_s(o, "CURRENT_STATE", mt_names[mt]);
    put_i(o, "ALERT_COUNT", 0);
    put_s(o, "ACK_USER", FBR_SLICE("SYSTEM"));
    put_s(o, "ACK_MSG", FBR_SLICE(""));
    put_i(o, "ACK_TIMESTAMP", 0);
    put_s(o, "ENTITY_ID", eid);
    put_s(o, "HOST", host_of(f));
    put_s(o, "SERVICE", service_of(f));
    put_i(o, "STATE_START_TIME", start_ms);
    put_i(o, "INCIDENT_TIMESTAMP", 0);
    put_s(o, "LAST_UUID", alert_str(f, A_VO_UUID));
    return o;
}

/* A trigger's fields in v and s[]: takes the number the commit will claim (t->next_number); the
 * commit advances the counter. */
static void reset_for_trigger(const struct fbr_incidents *t, struct incident *v,
                              struct fbr_slice s[S_COUNT], const struct alert_fields *f,
                              enum fbr_msg_type mt, uint64_t now_ms, uint64_t start_ms)
{
    v->number = t->next_number;
    v->phase = FBR_PHASE_UNACKED;
    v->state = mt;
    v->alert_count = 1;
    s[S_ACK_USER] = FBR_SLICE("SYSTEM");
    s[S_ACK_MSG] = FBR_SLICE("");
    v->ack_ms = 0;
    v->state_start_ms = start_ms;
    v->opened_ms = now_ms;
    v->resolved_ms = 0;
    s[S_HOST] = host_of(f);
    s[S_SERVICE] = service_of(f);
}

static void forget(struct fbr_incidents *t, struct incident *in);

static void undo_push(struct fbr_incidents *t, struct incident *before, struct incident *after)
{
    if (t->ucount == t->ucap) {
        size_t ncap = t->ucap ? t->ucap * 2 : 64;
        struct undo *nv = fbr_xmalloc(ncap * sizeof(*nv));
        for (size_t i = 0; i < t->ucount; i++)
            nv[i] = *undo_at(t, i);
        free(t->undo);
        t->undo = nv;
        t->ucap = ncap;
        t->uhead = 0;
    }
    t->undo[(t->uhead + t->ucount) % t->ucap] =
        (struct undo){before, after, fbr_journal_position(t->journal)};
    t->ucount++;
}

void fbr_incidents_abort(struct fbr_incidents *t)
{
    if (t->pend.next)
        free(t->pend.next);
    memset(&t->pend, 0, sizeof(t->pend));
}

enum fbr_transition fbr_incident_transition_for(enum fbr_msg_type mt,
                                               const enum fbr_incident_phase *cur,
                                               int warning_no_open)
{
    int open = cur && *cur != FBR_PHASE_RESOLVED;
    switch (mt) {
    case FBR_MT_CRITICAL:
    case FBR_MT_WARNING:
        if (open)
            return FBR_TR_ROLLED;
        return mt == FBR_MT_WARNING && warning_no_open ? FBR_TR_NONE : FBR_TR_TRIGGERED;
    case FBR_MT_ACKNOWLEDGEMENT:
        return cur && *cur == FBR_PHASE_UNACKED ? FBR_TR_ACKED : FBR_TR_NONE;
    case FBR_MT_RECOVERY:
    case FBR_MT_OK:
        return open ? FBR_TR_RESOLVED : FBR_TR_NONE;
    case FBR_MT_INFO:
        break;
    }
    return FBR_TR_NONE;
}

/* The decision with what the change needs next: the table key and its hash, and the incident it
 * finds (borrowed from the table, NULL for none).  Release with decision_done(). */
struct decision {
    struct fbr_incident_decision d;
    struct alert_fields f;
    struct fbr_slice rk, eid; /* borrowed from the alert, "" when absent */
    char *key;                /* kbuf, or allocated when longer */
    size_t key_len;
    uint64_t hash;
    struct incident *cur;
    char kbuf[256];
};

/* The table key: lower-cased routing_key, a unit separator, entity_id. */
static void decision_key(struct decision *d)
{
    size_t rkl = d->rk.len, n = rkl + 1 + d->eid.len;
    char *key = n < sizeof(d->kbuf) ? d->kbuf : fbr_xmalloc(n + 1);
    for (size_t i = 0; i < rkl; i++) {
        char c = d->rk.ptr[i];
        key[i] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
    }
    key[rkl] = '\x1f';
    memcpy(key + rkl + 1, d->eid.ptr, d->eid.len);
    key[n] = '\0';
    d->key = key;
    d->key_len = n;
    d->hash = hash(key);
}

static void decision_done(struct decision *d)
{
    if (d->key != d->kbuf)
        free(d->key);
    d->key = NULL;
}

/* Reads the alert and the table, changes neither: fills *d (decision_done() it). */
static void decide(const struct fbr_incidents *t, json_t *alert, uint64_t now_ms,
                   struct decision *d)
{
    d->d = (struct fbr_incident_decision){0};
    alert_fields_read(t, alert, &d->f);
    json_t *mtv = d->f.v[A_MESSAGE_TYPE];
    enum fbr_msg_type mt = FBR_MT_INFO;
    if (json_is_string(mtv))
        fbr_msg_type_parse(json_string_value(mtv), json_string_length(mtv), &mt);
    d->d.msg_type = mt;
    uint64_t start_ms = alert_secs_ms(&d->f, A_STATE_START_TIME);
    if (!start_ms)
        start_ms = alert_secs_ms(&d->f, A_TIMESTAMP);
    d->d.start_ms = start_ms ? start_ms : now_ms;
    d->rk = or_empty(alert_str(&d->f, A_ROUTING_KEY));
    d->eid = or_empty(alert_str(&d->f, A_ENTITY_ID));
    decision_key(d);
    d->cur = *slot_h(t, d->key, d->hash);
    enum fbr_transition tr = fbr_incident_transition_for(
        mt, d->cur ? &d->cur->phase : NULL, t->opts.warning_no_open);
    d->d.transition = tr;
    d->d.number = tr == FBR_TR_TRIGGERED ? t->next_number : d->cur ? d->cur->number : 0;
    if (tr == FBR_TR_TRIGGERED)
        d->d.phase = FBR_PHASE_UNACKED;
    else if (tr == FBR_TR_ACKED)
        d->d.phase = FBR_PHASE_ACKED;
    else if (tr == FBR_TR_RESOLVED)
        d->d.phase = FBR_PHASE_RESOLVED;
    else if (d->cur)
        d->d.phase = d->cur->phase;
}

void fbr_incidents_decide(const struct fbr_incidents *t, json_t *alert, uint64_t now_ms,
                          struct fbr_incident_decision *out)
{
    struct decision d;
    decide(t, alert, now_ms, &d);
    decision_done(&d);
    *out = d.d;
}

/* The incident as the decided change leaves it: a detached new version, or NULL when the
 * transition is NONE.  The table is not touched. */
static struct incident *changed(const struct fbr_incidents *t, const struct decision *d,
                                uint64_t now_ms)
{
    enum fbr_transition tr = d->d.transition;
    if (tr == FBR_TR_NONE)
        return NULL;
    struct incident v;
    struct fbr_slice s[S_COUNT];
    if (d->cur) {
        v = *d->cur;
        for (size_t i = 0; i < S_COUNT; i++)
            s[i] = str_slice(d->cur, (enum incident_str)i);
    } else { /* a trigger: reset_for_trigger fills in the rest */
        v = (struct incident){.hash = d->hash};
        for (size_t i = 0; i < S_COUNT; i++)
            s[i] = FBR_SLICE("");
        s[S_KEY] = (struct fbr_slice){d->key, d->key_len};
        s[S_RK] = d->rk;
        s[S_EID] = d->eid;
    }
    enum fbr_msg_type mt = d->d.msg_type;
    switch (tr) {
    case FBR_TR_ROLLED:
        v.alert_count++;
        if (v.state != mt)
            v.state_start_ms = d->d.start_ms;
        v.state = mt;
        break;
    case FBR_TR_TRIGGERED:
        reset_for_trigger(t, &v, s, &d->f, mt, now_ms, d->d.start_ms);
        break;
    case FBR_TR_ACKED: {
        v.phase = FBR_PHASE_ACKED;
        struct fbr_slice who = alert_str(&d->f, A_ACK_AUTHOR);
        s[S_ACK_USER] = who.len ? who : FBR_SLICE("SYSTEM");
        s[S_ACK_MSG] = or_empty(alert_str(&d->f, A_ACK_MSG));
        v.ack_ms = now_ms;
        break;
    }
    case FBR_TR_RESOLVED:
        v.phase = FBR_PHASE_RESOLVED;
        v.state = FBR_MT_OK;
        v.state_start_ms = d->d.start_ms;
        v.resolved_ms = now_ms;
        break;
    case FBR_TR_NONE:
        break;
    }
    s[S_UUID] = or_empty(alert_str(&d->f, A_VO_UUID));
    v.updated_ms = now_ms;
    return incident_make(&v, s);
}

void fbr_incidents_prepare(struct fbr_incidents *t, json_t *alert, uint64_t now_ms,
                           struct fbr_incident_result *res)
{
    fbr_incidents_prepare_for(t, alert, now_ms, FBR_NS_BIT(FBR_NS_STATE) |
                                                    FBR_NS_BIT(FBR_NS_INCIDENT), res);
}

void fbr_incidents_prepare_for(struct fbr_incidents *t, json_t *alert, uint64_t now_ms,
                               unsigned namespaces, struct fbr_incident_result *res)
{
    fbr_incidents_abort(t);
    memset(res, 0, sizeof(*res));
    struct decision d;
    decide(t, alert, now_ms, &d);
    struct incident *in = changed(t, &d, now_ms);
    decision_done(&d);
    t->pend.active = 1;
    t->pend.tr = d.d.transition;
    t->pend.cur = d.cur;
    t->pend.next = in;
    t->pend.now_ms = now_ms;

    res->transition = d.d.transition;
    res->msg_type = d.d.msg_type;
    const struct incident *shown = in ? in : d.cur;
    if (namespaces & FBR_NS_BIT(FBR_NS_STATE))
        res->state = shown ? state_json(shown)
                           : state_no_incident(&d.f, d.eid, d.d.msg_type, d.d.start_ms);
    if (shown && (namespaces & FBR_NS_BIT(FBR_NS_INCIDENT)))
        res->incident = incident_json(shown);
}

int fbr_incidents_commit(struct fbr_incidents *t)
{
    struct incident *in = t->pend.next;
    struct incident *cur = t->pend.cur;
    enum fbr_transition tr = t->pend.tr;
    uint64_t now_ms = t->pend.now_ms;
    int active = t->pend.active;
    memset(&t->pend, 0, sizeof(t->pend));
    if (!active || !in)
        return FBR_OK;
    if (tr == FBR_TR_TRIGGERED)
        t->next_number++;
    if (!cur) {
        make_room(t, now_ms);
        table_insert(t, in);
    } else {
        struct incident **pp = slot_h(t, str(cur, S_KEY), cur->hash);
        in->hash = cur->hash;
        in->next = cur->next;
        *pp = in;
        t->open += (size_t)is_open(in);
        t->open -= (size_t)is_open(cur);
        list_unlink(list_of(t, cur), cur);
        list_insert(list_of(t, in), in);
        if (t->journal)
            fbr_journal_release(t->journal, cur->ref);
        else
            free(cur);
    }
    t->changes++;
    if (t->journal) {
        record_line(&t->line, in);
        in->ref = journal_append(t);
        if (tr == FBR_TR_TRIGGERED) { /* this record carries the newest number: the counter */
            fbr_journal_hold(t->journal, in->ref);
            fbr_journal_release(t->journal, t->counter_ref);
            t->counter_ref = in->ref;
        }
        undo_push(t, cur, in);
    }
    return FBR_OK;
}

uint64_t fbr_incidents_changes(const struct fbr_incidents *t)
{
    return t->changes;
}

/* Takes the newest change back: the version it replaced returns to the table (its record
 * appended again), or the incident it created is forgotten. */
static void undo_one(struct fbr_incidents *t, struct undo *u)
{
    struct incident *after = u->after, *before = u->before;
    if (!after) { /* left the table meanwhile (expired, evicted): it stays gone */
        if (before) {
            undo_drop_ptr(t, before);
            free(before);
        }
        return;
    }
    if (!before) {
        forget(t, after);
        return;
    }
    struct incident **pp = slot_h(t, str(after, S_KEY), after->hash);
    before->hash = after->hash;
    before->next = after->next;
    *pp = before;
    t->open += (size_t)is_open(before);
    t->open -= (size_t)is_open(after);
    list_unlink(list_of(t, after), after);
    list_insert(list_of(t, before), before);
    undo_drop_ptr(t, after);
    fbr_journal_release(t->journal, after->ref);
    free(after);
    record_line(&t->line, before);
    before->ref = journal_append(t);
}

size_t fbr_incidents_undo(struct fbr_incidents *t, uint64_t mark)
{
    fbr_incidents_abort(t);
    size_t n = 0;
    while (t->ucount && t->changes > mark) {
        struct undo u = *undo_at(t, t->ucount - 1);
        t->ucount--;
        t->changes--;
        undo_one(t, &u);
        n++;
    }
    return n;
}

int fbr_incidents_apply(struct fbr_incidents *t, json_t *alert, uint64_t now_ms,
                        struct fbr_incident_result *res)
{
    fbr_incidents_prepare(t, alert, now_ms, res);
    return fbr_incidents_commit(t);
}

void fbr_incident_result_clear(struct fbr_incident_result *res)
{
    json_decref(res->state);
    json_decref(res->incident);
    res->state = res->incident = NULL;
}

int fbr_incidents_flush(struct fbr_incidents *t, uint64_t now_ms)
{
    expire(t, now_ms);
    if (t->warn.pending && warn_due(t, now_ms))
        warn_evictions(t, now_ms);
    return FBR_OK;
}

void fbr_incidents_get_stats(const struct fbr_incidents *t, struct fbr_incidents_stats *out)
{
    out->count = t->count;
    out->open = t->open;
    out->next_number = t->next_number;
    out->evicted = t->evicted;
    out->evicted_open = t->evicted_open;
}

void fbr_incidents_metrics_collect(struct fbr_metrics_samples *s, void *arg)
{
    const struct fbr_incidents *t = arg;
    if (!t)
        return;
    static const char *const inc = "firebridge_incidents", *const ev = "firebridge_incidents_evicted_total";
    const char *h = "Incidents in the table by phase";
    fbr_metrics_sample(s, FBR_METRIC_GAUGE, inc, h, "phase", "open", t->open);
    fbr_metrics_sample(s, FBR_METRIC_GAUGE, inc, h, "phase", "resolved", t->count - t->open);
    h = "Incidents dropped because the table was full";
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, ev, h, "phase", "open", t->evicted_open);
    fbr_metrics_sample(s, FBR_METRIC_COUNTER, ev, h, "phase", "resolved",
                       t->evicted - t->evicted_open);
}

void fbr_incidents_metrics_write(struct evbuffer *out, void *arg)
{
    fbr_metrics_write_collector(fbr_incidents_metrics_collect, arg, out);
}

/* ---- reading the open incidents (the HipChat add-on's /incidents, /ack and /resolve) ------- */

void fbr_incidents_each_open(const struct fbr_incidents *t, fbr_incident_visit_fn fn, void *arg)
{
    for (const struct incident *in = t->live.head; in; in = in->newer) {
        struct fbr_incident_view v = {
            .number = in->number,
            .routing_key = str(in, S_RK),
            .entity_id = str(in, S_EID),
            .service = str(in, S_SERVICE),
            .host = str(in, S_HOST),
            .ack_user = str(in, S_ACK_USER),
            .phase = in->phase,
            .state = in->state,
            .alert_count = in->alert_count,
            .opened_ms = in->opened_ms,
            .updated_ms = in->updated_ms,
        };
        if (fn(&v, arg))
            return;
    }
}
