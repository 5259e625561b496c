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

static const char *const mt_names[] = {
#define FBR_X(name) #name,
    FBR_MSG_TYPE_MAP(FBR_X)
#undef FBR_X
};
static const char *const phase_names[] = {
#define FBR_X(name) #name,
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
        if (s && strlen(mt_names[i]) == len && strncasecmp(mt_names[i], s, len) == 0) {
            *out = (enum fbr_msg_type)i;
            return FBR_OK;
        }
    }
    *out = FBR_MT_INFO;
    return FBR_NOTFOUND;
}

const char *fbr_msg_type_name(enum fbr_msg_type t)
{
    return (unsigned)t < FBR_ARRAY_LEN(mt_names) ? mt_names[t] : "INFO";
}

const char *fbr_incident_phase_name(enum fbr_incident_phase p)
{
    return (unsigned)p < FBR_ARRAY_LEN(phase_names) ? phase_names[p] : "?";
}

const char *fbr_transition_name(enum fbr_transition t)
{
    return (unsigned)t < FBR_ARRAY_LEN(tr_names) ? tr_names[t] : "?";
}

struct incident {
    struct incident *next;          /* hash chain */
    uint64_t hash;                  /* hash(key): a chain walk compares it before the key */
    struct incident *older, *newer; /* age list (t->resolved or t->live); NULL when detached */
    char *key;
    struct fbr_journal_ref ref; /* its latest journal record (held) */
    uint64_t number;
    char *routing_key, *entity_id, *host, *service, *ack_user, *ack_msg, *last_uuid;
    enum fbr_incident_phase phase;
    enum fbr_msg_type state; /* CRITICAL, WARNING or OK */
    uint64_t alert_count;
    uint64_t ack_ms, state_start_ms, opened_ms, updated_ms, resolved_ms;
};

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
    while (*pp && ((*pp)->hash != h || strcmp((*pp)->key, key) != 0))
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

static void incident_free(struct incident *in)
{
    free(in->key);
    free(in->routing_key);
    free(in->entity_id);
    free(in->host);
    free(in->service);
    free(in->ack_user);
    free(in->ack_msg);
    free(in->last_uuid);
    free(in);
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

static void table_insert(struct fbr_incidents *t, struct incident *in)
{
    if (t->count + 1 > t->nbuckets - t->nbuckets / 4)
        grow(t);
    in->hash = hash(in->key);
    struct incident **pp = slot_h(t, in->key, in->hash);
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
    struct incident **pp = slot_h(t, in->key, in->hash);
    if (*pp != in)
        return;
    undo_drop_ptr(t, in);
    *pp = in->next;
    t->count--;
    t->open -= is_open(in);
    list_unlink(list_of(t, in), in);
    incident_free(in);
}

static void set_str(char **dst, const char *src)
{
    free(*dst);
    *dst = fbr_xstrdup(src ? src : "");
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

static void line_put(struct line *l, const char *s, size_t n)
{
    line_room(l, n);
    memcpy(l->p + l->len, s, n);
    l->len += n;
}

/* Appends ,"key":"escaped value" (or without the comma for the first member). */
static void line_str(struct line *l, const char *key, const char *v)
{
    size_t klen = strlen(key), vlen = strlen(v);
    line_room(l, klen + 6 * vlen + 8);
    char *d = l->p + l->len;
    if (l->len > 1)
        *d++ = ',';
    *d++ = '"';
    memcpy(d, key, klen);
    d += klen;
    memcpy(d, "\":\"", 3);
    d += 3;
    d += fbr_json_escape(d, v, vlen);
    *d++ = '"';
    l->len = (size_t)(d - l->p);
}

static void line_num(struct line *l, const char *key, uint64_t v)
{
    size_t klen = strlen(key);
    line_room(l, klen + FBR_U64_DIGITS + 5);
    char *d = l->p + l->len;
    if (l->len > 1)
        *d++ = ',';
    *d++ = '"';
    memcpy(d, key, klen);
    d += klen;
    *d++ = '"';
    *d++ = ':';
    d += fbr_fmt_u64(d, v);
    l->len = (size_t)(d - l->p);
}

static void record_line(struct line *l, const struct incident *in)
{
    l->len = 0;
    line_put(l, "{", 1);
    line_str(l, "k", in->key);
    line_num(l, "n", in->number);
    line_str(l, "rk", in->routing_key);
    line_str(l, "eid", in->entity_id);
    line_str(l, "host", in->host);
    line_str(l, "service", in->service);
    line_str(l, "ack_user", in->ack_user);
    line_str(l, "ack_msg", in->ack_msg);
    line_str(l, "uuid", in->last_uuid);
    line_str(l, "phase", phase_names[in->phase]);
    line_str(l, "state", mt_names[in->state]);
    line_num(l, "count", in->alert_count);
    line_num(l, "ack_ts", in->ack_ms);
    line_num(l, "start", in->state_start_ms);
    line_num(l, "ts", in->opened_ms);
    line_num(l, "upd", in->updated_ms);
    line_num(l, "res", in->resolved_ms);
    line_put(l, "}\n", 2);
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
    char head[64];
    t->line.len = 0;
    int hl = snprintf(head, sizeof(head), "{\"next\":%" PRIu64 "}", t->next_number);
    line_put(&t->line, head, (size_t)hl);
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
    struct incident *in = fbr_xcalloc(1, sizeof(*in));
    in->key = fbr_xstrdup(key);
    in->number = jnum(j, "n");
    in->routing_key = fbr_xstrdup(jstr(j, "rk"));
    in->entity_id = fbr_xstrdup(jstr(j, "eid"));
    in->host = fbr_xstrdup(jstr(j, "host"));
    in->service = fbr_xstrdup(jstr(j, "service"));
    in->ack_user = fbr_xstrdup(jstr(j, "ack_user"));
    in->ack_msg = fbr_xstrdup(jstr(j, "ack_msg"));
    in->last_uuid = fbr_xstrdup(jstr(j, "uuid"));
    const char *ph = jstr(j, "phase");
    in->phase = FBR_PHASE_UNACKED;
    for (size_t i = 0; i < FBR_ARRAY_LEN(phase_names); i++) {
        if (strcmp(ph, phase_names[i]) == 0)
            in->phase = (enum fbr_incident_phase)i;
    }
    const char *st = jstr(j, "state");
    fbr_msg_type_parse(st, strlen(st), &in->state);
    in->alert_count = jnum(j, "count");
    in->ack_ms = jnum(j, "ack_ts");
    in->state_start_ms = jnum(j, "start");
    in->opened_ms = jnum(j, "ts");
    in->updated_ms = jnum(j, "upd");
    in->resolved_ms = jnum(j, "res");
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

/* The value of a lower-case hex digit (what line_str writes), -1 for anything else. */
static int lower_hex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Decodes the JSON string starting at p (after its opening quote) into buf (cap bytes): the
 * escapes line_str() writes (\" \\ and \u00xx for a control character other than NUL); returns
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
            incident_free(before);
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
            incident_free(undo_at(t, i)->before);
    free(t->undo);
    fbr_strmap_each(&t->deferred, free_deferred, NULL); /* a recovery that failed */
    fbr_strmap_clear(&t->deferred);
    for (size_t i = 0; i < t->nbuckets; i++) {
        for (struct incident *in = t->buckets[i], *nx; in; in = nx) {
            nx = in->next;
            incident_free(in);
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
        line_put(&t->line, "{", 1);
        line_str(&t->line, "del", in->key);
        line_put(&t->line, "}", 1);
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

static const char *alert_str(json_t *alert, const char *k)
{
    return json_string_value(json_object_get(alert, k));
}

/* Epoch seconds (number or numeric string) in field k, as ms; 0 when absent or unusable. */
static uint64_t alert_secs_ms(json_t *alert, const char *k)
{
    json_t *v = json_object_get(alert, k);
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

static const char *host_of(json_t *alert)
{
    const char *h = alert_str(alert, "host_name");
    return h ? h : alert_str(alert, "hostname");
}

static const char *service_of(json_t *alert)
{
    const char *s = alert_str(alert, "service");
    return s ? s : alert_str(alert, "entity_display_name");
}

/* The namespaces are built per alert on the hot path: plain setters, no format parsing, no UTF-8
 * re-validation (every string came out of a validated JSON string or a literal). */
static void put_s(json_t *o, const char *k, const char *v)
{
    json_object_set_new_nocheck(o, k, json_string_nocheck(v ? v : ""));
}

static void put_i(json_t *o, const char *k, uint64_t v)
{
    json_object_set_new_nocheck(o, k, json_integer((json_int_t)v));
}

static json_t *state_json(const struct incident *in)
{
    char name[FBR_U64_DIGITS + 1];
    fbr_fmt_u64(name, in->number);
    json_t *o = json_object();
    put_s(o, "INCIDENT_NAME", name);
    put_s(o, "CURRENT_ALERT_PHASE", phase_names[in->phase]);
    put_s(o, "CURRENT_STATE", mt_names[in->state]);
    put_i(o, "ALERT_COUNT", in->alert_count);
    put_s(o, "ACK_USER", in->ack_user);
    put_s(o, "ACK_MSG", in->ack_msg);
    put_i(o, "ACK_TIMESTAMP", in->ack_ms);
    put_s(o, "ENTITY_ID", in->entity_id);
    put_s(o, "HOST", in->host);
    put_s(o, "SERVICE", in->service);
    put_i(o, "STATE_START_TIME", in->state_start_ms);
    put_i(o, "INCIDENT_TIMESTAMP", in->opened_ms);
    put_s(o, "LAST_UUID", in->last_uuid);
    return o;
}

static json_t *incident_json(const struct incident *in)
{
    char id[FBR_U64_DIGITS + 1], name[FBR_U64_DIGITS + 2];
    fbr_fmt_u64(id, in->number);
    name[0] = '#';
    memcpy(name + 1, id, strlen(id) + 1);
    json_t *o = json_object();
    put_s(o, "INCIDENT_ID", id);
    put_s(o, "INCIDENT_NAME", name);
    put_s(o, "CURRENT_PHASE", phase_names[in->phase]);
    put_s(o, "ENTITY_STATE", mt_names[in->state]);
    put_i(o, "ALERT_COUNT", in->alert_count);
    put_s(o, "ENTITY_ID", in->entity_id);
    put_s(o, "ROUTING_KEY", in->routing_key);
    put_s(o, "HOST", in->host);
    put_s(o, "SERVICE", in->service);
    json_object_set_new_nocheck(o, "ACKED_BY", in->ack_ms == 0 ? json_null()
                                                               : json_string_nocheck(in->ack_user));
    put_s(o, "ACK_MSG", in->ack_msg);
    put_i(o, "ACK_TIMESTAMP", in->ack_ms);
    put_i(o, "INCIDENT_TIMESTAMP", in->opened_ms);
    put_i(o, "LAST_ALERT_TIME", in->updated_ms);
    put_i(o, "RESOLVED_TIMESTAMP", in->resolved_ms);
    put_s(o, "LAST_UUID", in->last_uuid);
    return o;
}

/* STATE for an alert that touches no incident. */
static json_t *state_no_incident(json_t *alert, enum fbr_msg_type mt, uint64_t start_ms)
{
    json_t *o = json_object();
    put_s(o, "INCIDENT_NAME", "");
    put_s(o, "CURRENT_ALERT_PHASE", "");
    put_s(o, "CURRENT_STATE", mt_names[mt]);
    put_i(o, "ALERT_COUNT", 0);
    put_s(o, "ACK_USER", "SYSTEM");
    put_s(o, "ACK_MSG", "");
    put_i(o, "ACK_TIMESTAMP", 0);
    put_s(o, "ENTITY_ID", alert_str(alert, "entity_id"));
    put_s(o, "HOST", host_of(alert));
    put_s(o, "SERVICE", service_of(alert));
    put_i(o, "STATE_START_TIME", start_ms);
    put_i(o, "INCIDENT_TIMESTAMP", 0);
    put_s(o, "LAST_UUID", alert_str(alert, "VO_UUID"));
    return o;
}

/* Takes the number the commit will claim (t->next_number); the commit advances the counter. */
static void reset_for_trigger(const struct fbr_incidents *t, struct incident *in, json_t *alert,
                              enum fbr_msg_type mt, uint64_t now_ms, uint64_t start_ms)
{
    in->number = t->next_number;
    in->phase = FBR_PHASE_UNACKED;
    in->state = mt;
    in->alert_count = 1;
    set_str(&in->ack_user, "SYSTEM");
    set_str(&in->ack_msg, "");
    in->ack_ms = 0;
    in->state_start_ms = start_ms;
    in->opened_ms = now_ms;
    in->resolved_ms = 0;
    set_str(&in->host, host_of(alert));
    set_str(&in->service, service_of(alert));
}

static char *dup_or_null(const char *s)
{
    return s ? fbr_xstrdup(s) : NULL;
}

/* A detached deep copy (not in the table): the prepared change is made on it. */
static struct incident *incident_copy(const struct incident *in)
{
    struct incident *c = fbr_xmalloc(sizeof(*c));
    *c = *in;
    c->next = c->older = c->newer = NULL;
    c->key = fbr_xstrdup(in->key);
    c->routing_key = dup_or_null(in->routing_key);
    c->entity_id = dup_or_null(in->entity_id);
    c->host = dup_or_null(in->host);
    c->service = dup_or_null(in->service);
    c->ack_user = dup_or_null(in->ack_user);
    c->ack_msg = dup_or_null(in->ack_msg);
    c->last_uuid = dup_or_null(in->last_uuid);
    return c;
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
        incident_free(t->pend.next);
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

/* The decision with what the change needs next: the table key (owned) and the incident it
 * finds (borrowed from the table, NULL for none). */
struct decision {
    struct fbr_incident_decision d;
    char *key;
    const char *rk, *eid;
    struct incident *cur;
};

/* Lower-cased routing_key, a unit separator, entity_id: a new string. */
static char *table_key(const char *rk, const char *eid)
{
    size_t rkl = strlen(rk), eidl = strlen(eid);
    char *key = fbr_xmalloc(rkl + eidl + 2);
    for (size_t i = 0; i < rkl; i++)
        key[i] = (char)((rk[i] >= 'A' && rk[i] <= 'Z') ? rk[i] + 32 : rk[i]);
    key[rkl] = '\x1f';
    memcpy(key + rkl + 1, eid, eidl + 1);
    return key;
}

/* Reads the alert and the table, changes neither: fills *d (free d->key). */
static void decide(const struct fbr_incidents *t, json_t *alert, uint64_t now_ms,
                   struct decision *d)
{
    memset(d, 0, sizeof(*d));
    json_t *mtv = json_object_get(alert, "message_type");
    enum fbr_msg_type mt = FBR_MT_INFO;
    if (json_is_string(mtv))
        fbr_msg_type_parse(json_string_value(mtv), json_string_length(mtv), &mt);
    d->d.msg_type = mt;
    uint64_t start_ms = alert_secs_ms(alert, "state_start_time");
    if (!start_ms)
        start_ms = alert_secs_ms(alert, "timestamp");
    d->d.start_ms = start_ms ? start_ms : now_ms;
    d->rk = alert_str(alert, "routing_key");
    d->eid = alert_str(alert, "entity_id");
    d->rk = d->rk ? d->rk : "";
    d->eid = d->eid ? d->eid : "";
    d->key = table_key(d->rk, d->eid);
    d->cur = *slot(t, d->key);
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
    free(d.key);
    *out = d.d;
}

/* The incident as the decided change leaves it: a detached new one (takes d->key), or NULL when
 * the transition is NONE.  The table is not touched. */
static struct incident *changed(const struct fbr_incidents *t, struct decision *d, json_t *alert,
                                uint64_t now_ms)
{
    enum fbr_transition tr = d->d.transition;
    if (tr == FBR_TR_NONE)
        return NULL;
    struct incident *in;
    if (d->cur) {
        in = incident_copy(d->cur);
    } else {
        in = fbr_xcalloc(1, sizeof(*in));
        in->key = d->key;
        d->key = NULL;
        in->routing_key = fbr_xstrdup(d->rk);
        in->entity_id = fbr_xstrdup(d->eid);
    }
    enum fbr_msg_type mt = d->d.msg_type;
    switch (tr) {
    case FBR_TR_ROLLED:
        in->alert_count++;
        if (in->state != mt)
            in->state_start_ms = d->d.start_ms;
        in->state = mt;
        break;
    case FBR_TR_TRIGGERED:
        reset_for_trigger(t, in, alert, mt, now_ms, d->d.start_ms);
        break;
    case FBR_TR_ACKED: {
        in->phase = FBR_PHASE_ACKED;
        const char *who = alert_str(alert, "ack_author");
        const char *msg = alert_str(alert, "ack_msg");
        set_str(&in->ack_user, who && *who ? who : "SYSTEM");
        set_str(&in->ack_msg, msg);
        in->ack_ms = now_ms;
        break;
    }
    case FBR_TR_RESOLVED:
        in->phase = FBR_PHASE_RESOLVED;
        in->state = FBR_MT_OK;
        in->state_start_ms = d->d.start_ms;
        in->resolved_ms = now_ms;
        break;
    case FBR_TR_NONE:
        break;
    }
    set_str(&in->last_uuid, alert_str(alert, "VO_UUID"));
    in->updated_ms = now_ms;
    return in;
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
    struct incident *in = changed(t, &d, alert, now_ms);
    free(d.key);
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
                           : state_no_incident(alert, d.d.msg_type, d.d.start_ms);
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
        struct incident **pp = slot_h(t, cur->key, cur->hash);
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
            incident_free(cur);
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
            incident_free(before);
        }
        return;
    }
    if (!before) {
        forget(t, after);
        return;
    }
    struct incident **pp = slot_h(t, after->key, after->hash);
    before->hash = after->hash;
    before->next = after->next;
    *pp = before;
    t->open += (size_t)is_open(before);
    t->open -= (size_t)is_open(after);
    list_unlink(list_of(t, after), after);
    list_insert(list_of(t, before), before);
    undo_drop_ptr(t, after);
    fbr_journal_release(t->journal, after->ref);
    incident_free(after);
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
            .routing_key = in->routing_key ? in->routing_key : "",
            .entity_id = in->entity_id ? in->entity_id : "",
            .service = in->service ? in->service : "",
            .host = in->host ? in->host : "",
            .ack_user = in->ack_user ? in->ack_user : "",
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
