/*
 * journal.c - the write-ahead journal under the data path (see journal.h for the contract and
 * the format): a record buffer written once per loop iteration, the syncer thread that only calls
 * fdatasync and signals back through a pipe, segment roll, hold counting, prefix deletion and
 * checkpoints, the disk-trouble episode with its retry timer, and recovery at start.
 *
 * Positions (lsn) count bytes appended since open: appended >= written >= synced.  A waiter is
 * done when the commit level of --fsync (written, or synced for always) reaches its position.
 * Invariant that makes deletion safe: a record whose ref names segment S lies in a segment >= S
 * (a retry after a failed write may land on a newer segment), and a segment is deleted only when
 * it and every older one hold nothing.
 */
#include "firebridge/journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "firebridge/defaults.h"
#include "firebridge/log.h"
#include "firebridge/metrics.h"

#define RETRY_MS 250u
#define LAZY_MS 10u /* a lazy record waits at most this long for a write to ride on */

static const char *const type_names[] = {
#define FBR_X(name, value, text) [value] = text,
    FBR_JOURNAL_TYPE_MAP(FBR_X)
#undef FBR_X
};

const char *fbr_journal_type_name(unsigned type)
{
    return type < FBR_JR_COUNT && type_names[type] ? type_names[type] : "unknown";
}

/* ---- CRC32C: the SSE4.2 instruction where the CPU has it, else slicing by 8 ---- */

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static uint32_t (*crc_impl)(uint32_t c, const unsigned char *s, size_t n);

/* Both implementations take and return the inverted register (~crc). */
static uint32_t crc_sliced(uint32_t c, const unsigned char *s, size_t n)
{
    while (n && ((uintptr_t)s & 7)) {
        c = (c >> 8) ^ crc_table[0][(c ^ *s++) & 0xff];
        n--;
    }
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, s, 4);
        memcpy(&hi, s + 4, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        lo = __builtin_bswap32(lo);
        hi = __builtin_bswap32(hi);
#endif
        lo ^= c;
        c = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
            crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^
            crc_table[2][(hi >> 8) & 0xff] ^ crc_table[1][(hi >> 16) & 0xff] ^
            crc_table[0][hi >> 24];
        s += 8;
        n -= 8;
    }
    while (n--)
        c = (c >> 8) ^ crc_table[0][(c ^ *s++) & 0xff];
    return c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_CRC_SSE42 1
/* The crc32 instruction (SSE4.2) computes exactly this polynomial, 8 bytes per instruction. */
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t c, const unsigned char *s,
                                                            size_t n)
{
    uint64_t c64 = c;
    while (n && ((uintptr_t)s & 7)) {
        c64 = __builtin_ia32_crc32qi((uint32_t)c64, *s++);
        n--;
    }
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        c64 = __builtin_ia32_crc32di(c64, v);
        s += 8;
        n -= 8;
    }
    while (n--)
        c64 = __builtin_ia32_crc32qi((uint32_t)c64, *s++);
    return (uint32_t)c64;
}
#endif

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
    crc_impl = crc_sliced;
#ifdef HAVE_CRC_SSE42
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2"))
        crc_impl = crc_sse42;
#endif
}

uint32_t fbr_crc32c(uint32_t crc, const void *p, size_t n)
{
    pthread_once(&crc_once, crc_init);
    return ~crc_impl(~crc, p, n);
}

uint32_t fbr_crc32c_portable(uint32_t crc, const void *p, size_t n)
{
    pthread_once(&crc_once, crc_init);
    return ~crc_sliced(~crc, p, n);
}

int fbr_crc32c_hardware(void)
{
    pthread_once(&crc_once, crc_init);
    return crc_impl != crc_sliced;
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* CRC of a record: its length field, its type, its payload, continuing from salt (0 for a
 * segment header and every record of a segment without one; see journal.h). */
static uint32_t record_crc(uint32_t salt, const unsigned char *hdr, const void *payload, size_t n)
{
    uint32_t c = fbr_crc32c(salt, hdr, 4);
    c = fbr_crc32c(c, hdr + 8, 1);
    return fbr_crc32c(c, payload, n);
}

static const char seg_magic[4] = {'F', 'B', 'R', 'J'};

/* The salt of segment id's records: the CRC32C of the magic and the id, distinct for every id
 * (the CRC of a fixed-length message is one-to-one in its last 32 bits). */
static uint32_t seg_salt(uint32_t id)
{
    unsigned char b[8];
    memcpy(b, seg_magic, 4);
    put32(b + 4, id);
    return fbr_crc32c(0, b, sizeof(b));
}

/* Fills in the CRC of the record at h (its length and type set, its payload after them) with
 * salt; returns its size on disk. */
static size_t seal_record(unsigned char *h, uint32_t salt)
{
    uint32_t n = get32(h);
    put32(h + 4, record_crc(salt, h, h + FBR_JOURNAL_HEADER, n));
    return FBR_JOURNAL_HEADER + n;
}

/* ---- state ---- */

struct segment {
    uint32_t id;
    uint64_t bytes;
    uint64_t holds;
    uint64_t live_bytes;
    int unsalted; /* read without a header (format 1): its file is never reused (see dying) */
};

struct waiter {
    uint64_t pos;
    fbr_journal_done_fn cb;
    void *arg;
};

enum trouble_kind { TK_NONE, TK_WRITE, TK_SYNC };

/* A dead segment renamed NNNNNN.dead, kept as a spare for the next roll or waiting to be cut
 * and unlinked; mark orders it against the directory fsyncs that cover its rename.  A segment
 * read without a header (format 1) is never a spare: its records carry no salt, so under a new
 * segment's name, until the new header is written over its first record (a kill -9 or power
 * loss right after the rename, a header write that fails), they would read as that segment's
 * own.  Format 1 segments are older than every segment with a header, so they lead the list and
 * are cut first (a file read with no header and no record of its own is not reused either; it
 * waits for its turn, or the close). */
struct dying {
    uint32_t id;
    uint64_t mark;
    int reusable;
};

struct fbr_journal {
    struct event_base *base;
    struct fbr_journal_opts opts;
    char *dir;
    int dirfd;
    struct segment *segs; /* ascending ids; the last is the one appended to */
    size_t nsegs, capsegs;
    int cur_fd;           /* -1 until recovered */
    int need_roll;        /* a write failed on a segment with data: retry on a fresh one */
    unsigned char *buf;   /* records not yet written */
    size_t len, cap;
    uint64_t appended, written, synced;
    uint64_t notified; /* the commit level the owners were last told (notify_committed) */
    struct waiter *w;     /* ring of waiters, ascending pos */
    size_t whead, wcount, wcap;
    struct event *flush_ev, *batch_timer, *retry_timer, *sync_ev;
    struct event *lazy_timer; /* pending while the buffer holds only lazy records */
    int flush_active;
    struct fbr_journal_owner *owners;
    size_t nowners;
    int recovered, checkpointing;
    uint32_t cp_upto;     /* the last checkpoint's range: no new one until it is deleted */
    uint64_t cp_at;       /* when it ran (ms) */
    /* disk trouble */
    enum trouble_kind trouble;
    uint64_t trouble_since, trouble_failures;
    char trouble_msg[256];
    /* syncer: the job fields belong to the thread while sync_inflight */
    pthread_t thread;
    int thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pipe_fds[2];
    int job_posted, job_stop, job_done;
    int job_fds[64];
    size_t job_nfds, job_nowned; /* job_fds[0 .. nowned) are closed after the job */
    int job_dirsync;
    int job_err;
    uint64_t job_ns;
    uint64_t job_pos;
    uint32_t job_delete_upto;
    size_t job_waiters; /* waiters the job may complete (group commit size) */
    int sync_inflight;
    int *retired; /* fds of rolled segments not yet covered by an fdatasync */
    size_t nretired, capretired;
    int dir_dirty;
    /* dead segments being removed a step at a time (see schedule_shrink) */
    struct dying *dying;
    size_t ndying, capdying;
    uint64_t dying_marks;    /* renames made so far */
    uint64_t dying_ready;    /* renames a directory fsync covers: those may be cut */
    uint64_t job_dying_mark; /* dying_marks when the running job's directory fsync was asked */
    int dying_fd;            /* the first dying segment, open while it is cut */
    struct event *shrink_timer;
    struct fbr_journal_recovery rec;
    struct fbr_journal_stats st;
    /* metrics */
    struct fbr_metrics *own_metrics;
    uint64_t *m_records[FBR_JR_COUNT];
    uint64_t *m_bytes_written, *m_writes, *m_fsyncs, *m_checkpoints, *m_torn, *m_recycled;
    uint64_t *m_err_write, *m_err_sync;
    int64_t *m_bytes, *m_live, *m_segments, *m_writable, *m_rec_ms, *m_rec_records;
    struct fbr_histogram *m_fsync_s, *m_group;
};

static void schedule_flush(struct fbr_journal *j)
{
    if (!j->flush_active) {
        j->flush_active = 1;
        event_active(j->flush_ev, EV_TIMEOUT, 1);
    }
}

static struct segment *cur_seg(struct fbr_journal *j)
{
    return j->nsegs ? &j->segs[j->nsegs - 1] : NULL;
}

static struct segment *find_seg(struct fbr_journal *j, uint32_t id)
{
    size_t lo = 0, hi = j->nsegs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (j->segs[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < j->nsegs && j->segs[lo].id == id ? &j->segs[lo] : NULL;
}

static void seg_path(const struct fbr_journal *j, uint32_t id, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%06" PRIu32 ".log", j->dir, id);
}

static void dead_path(const struct fbr_journal *j, uint32_t id, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%06" PRIu32 ".dead", j->dir, id);
}

static void update_gauges(struct fbr_journal *j)
{
    uint64_t bytes = 0, live = 0;
    for (size_t i = 0; i < j->nsegs; i++) {
        bytes += j->segs[i].bytes;
        live += j->segs[i].live_bytes;
    }
    j->st.bytes = bytes;
    j->st.live_bytes = live;
    j->st.segments = j->nsegs;
    *j->m_bytes = (int64_t)bytes;
    *j->m_live = (int64_t)live;
    *j->m_segments = (int64_t)j->nsegs;
    *j->m_writable = fbr_journal_writable(j);
}

/* ---- waiters ---- */

static void waiter_push(struct fbr_journal *j, uint64_t pos, fbr_journal_done_fn cb, void *arg)
{
    if (j->wcount == j->wcap) {
        size_t ncap = j->wcap ? j->wcap * 2 : 64;
        struct waiter *nw = fbr_xmalloc(ncap * sizeof(*nw));
        for (size_t i = 0; i < j->wcount; i++)
            nw[i] = j->w[(j->whead + i) % j->wcap];
        free(j->w);
        j->w = nw;
        j->wcap = ncap;
        j->whead = 0;
    }
    j->w[(j->whead + j->wcount) % j->wcap] = (struct waiter){pos, cb, arg};
    j->wcount++;
}

static uint64_t committed(const struct fbr_journal *j)
{
    return j->opts.fsync == FBR_FSYNC_ALWAYS ? j->synced : j->written;
}

/* Completes the waiters at or below the commit level; returns how many.  A callback may append
 * and wait again: its waiter goes behind the ones being completed. */
static size_t complete_waiters(struct fbr_journal *j)
{
    size_t n = 0;
    while (j->wcount && j->w[j->whead].pos <= committed(j)) {
        struct waiter w = j->w[j->whead];
        j->whead = (j->whead + 1) % j->wcap;
        j->wcount--;
        n++;
        w.cb(w.arg, FBR_OK);
    }
    return n;
}

/* Tells the owners that follow it where the commit level is now (after the waiters). */
static void notify_committed(struct fbr_journal *j)
{
    uint64_t pos = committed(j);
    if (pos <= j->notified)
        return;
    j->notified = pos;
    for (size_t i = 0; i < j->nowners; i++)
        if (j->owners[i].committed)
            j->owners[i].committed(j->owners[i].arg, pos);
}

/* Fails every waiter but the oldest keep (none of them may be told "safe").  A callback may
 * append and wait again: its waiter is not one of these. */
static void fail_waiters_but(struct fbr_journal *j, size_t keep)
{
    size_t n = j->wcount - keep;
    if (!n)
        return;
    struct waiter *v = fbr_xmalloc(n * sizeof(*v));
    for (size_t i = 0; i < n; i++)
        v[i] = j->w[(j->whead + keep + i) % j->wcap];
    j->wcount = keep;
    for (size_t i = 0; i < n; i++)
        v[i].cb(v[i].arg, FBR_ERROR);
    free(v);
}

/* Fails every waiter (an fdatasync failed, or the journal closes). */
static void fail_waiters(struct fbr_journal *j)
{
    fail_waiters_but(j, 0);
}

/*
 * A write failed: fails the waiters whose records it did not write.  The ones below j->written
 * (--fsync always: written, waiting for their fdatasync) keep waiting for it, since the failed
 * write says nothing about them.  Failing them would answer 503 for records already in the file:
 * the records taking them back could not be written while writes fail, so a kill -9 then would
 * replay, and deliver, what the sender was told to retry.
 */
static void fail_unwritten_waiters(struct fbr_journal *j)
{
    size_t keep = 0;
    while (keep < j->wcount && j->w[(j->whead + keep) % j->wcap].pos <= j->written)
        keep++;
    fail_waiters_but(j, keep);
}

/* ---- disk trouble ---- */

static void trouble_begin(struct fbr_journal *j, enum trouble_kind kind, const char *what, int err)
{
    j->st.write_errors++;
    (*(kind == TK_WRITE ? j->m_err_write : j->m_err_sync))++;
    j->trouble_failures++;
    if (j->trouble == TK_NONE) {
        j->trouble = kind;
        j->trouble_since = fbr_now_ms();
        j->trouble_failures = 1;
        snprintf(j->trouble_msg, sizeof(j->trouble_msg), "journal: %s in %s failed: %s", what,
                 j->dir, strerror(err));
        fbr_log(FBR_LOG_ERROR, NULL, what, "%s/%06" PRIu32 ".log: %s; alerts get 503 until the "
                "journal can be written again (retrying every %u ms)",
                j->dir, cur_seg(j) ? cur_seg(j)->id : 0, strerror(err), RETRY_MS);
    }
    if (!event_pending(j->retry_timer, EV_TIMEOUT, NULL)) {
        struct timeval tv = {0, RETRY_MS * 1000};
        evtimer_add(j->retry_timer, &tv);
    }
    *j->m_writable = 0;
}

static void trouble_end(struct fbr_journal *j, enum trouble_kind kind)
{
    if (j->trouble != kind)
        return;
    fbr_log_info("journal: writes work again after %" PRIu64 " failure(s) over %" PRIu64 " ms",
                 j->trouble_failures, fbr_now_ms() - j->trouble_since);
    j->trouble = TK_NONE;
    j->trouble_msg[0] = '\0';
    evtimer_del(j->retry_timer);
    *j->m_writable = fbr_journal_writable(j);
}

/* ---- segments ---- */

static void push_seg(struct fbr_journal *j, uint32_t id, uint64_t bytes)
{
    if (j->nsegs == j->capsegs) {
        j->capsegs = j->capsegs ? j->capsegs * 2 : 16;
        j->segs = fbr_xrealloc(j->segs, j->capsegs * sizeof(*j->segs));
    }
    j->segs[j->nsegs++] = (struct segment){.id = id, .bytes = bytes};
}

/* The newest dead segment whose rename a directory fsync covers (a spare a roll may take), or
 * -1.  The ones before it are older; the first may be part-cut (dying_fd). */
static ssize_t ready_spare(const struct fbr_journal *j)
{
    ssize_t k = -1;
    for (size_t i = 0; i < j->ndying && j->dying[i].mark <= j->dying_ready; i++)
        if (j->dying[i].reusable)
            k = (ssize_t)i;
    return k;
}

/* Opens the file for segment id at path: a spare renamed to it (its blocks and pages reused;
 * *prev is the id it had), else a new empty file (*prev 0).  Returns the fd, or -1 with errno. */
static int open_segment_file(struct fbr_journal *j, uint32_t id, const char *path, uint32_t *prev)
{
    *prev = 0;
    ssize_t k = ready_spare(j);
    if (k >= 0) {
        char dead[4096];
        uint32_t old = j->dying[k].id;
        dead_path(j, old, dead, sizeof(dead));
        if (k == 0 && j->dying_fd >= 0) {
            close(j->dying_fd);
            j->dying_fd = -1;
        }
        memmove(j->dying + k, j->dying + k + 1, (j->ndying - (size_t)k - 1) * sizeof(*j->dying));
        j->ndying--;
        if (rename(dead, path) == 0) {
            int fd = open(path, O_WRONLY | O_CLOEXEC);
            if (fd >= 0) {
                *prev = old;
                j->st.recycled++;
                (*j->m_recycled)++;
                return fd;
            }
        } else if (errno != ENOENT) {
            fbr_log_warn("journal: cannot reuse %s as segment %06" PRIu32 ": %s (deleting it)",
                         dead, id, strerror(errno));
            if (unlink(dead) != 0 && errno != ENOENT)
                fbr_log_warn("journal: cannot delete %s: %s", dead, strerror(errno));
        }
    }
    return open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
}

/*
 * Starts segment last+1 and makes it the one appended to: its file (a spare, or new) begins with
 * the segment header, written at once.  Returns 0, or -1 with errno.
 */
static int roll(struct fbr_journal *j)
{
    uint32_t id = j->nsegs ? cur_seg(j)->id + 1 : 1;
    char path[4096];
    seg_path(j, id, path, sizeof(path));
    uint32_t prev;
    int fd = open_segment_file(j, id, path, &prev);
    if (fd < 0)
        return -1;
    unsigned char h[FBR_JOURNAL_SEGMENT_HEADER];
    size_t n = FBR_JOURNAL_SEGMENT_HEADER - FBR_JOURNAL_HEADER;
    put32(h, (uint32_t)n);
    h[8] = FBR_JR_NOP;
    unsigned char *p = h + FBR_JOURNAL_HEADER;
    memcpy(p, seg_magic, 4);
    put32(p + 4, FBR_JOURNAL_FORMAT);
    put32(p + 8, id);
    put32(p + 12, prev);
    seal_record(h, 0);
    ssize_t w = pwrite(fd, h, sizeof(h), 0);
    if (w != (ssize_t)sizeof(h)) {
        int e = w < 0 ? errno : EIO; /* a short write leaves errno as it was */
        close(fd);
        errno = e;
        return -1;
    }
    if (j->cur_fd >= 0) {
        if (j->opts.fsync == FBR_FSYNC_OFF) {
            close(j->cur_fd);
        } else {
            if (j->nretired == j->capretired) {
                j->capretired = j->capretired ? j->capretired * 2 : 8;
                j->retired = fbr_xrealloc(j->retired, j->capretired * sizeof(int));
            }
            j->retired[j->nretired++] = j->cur_fd;
        }
    }
    j->cur_fd = fd;
    j->need_roll = 0;
    j->dir_dirty = 1;
    push_seg(j, id, FBR_JOURNAL_SEGMENT_HEADER);
    j->st.cur_seg = id;
    update_gauges(j);
    return 0;
}

/* The newest segment id up to which every segment holds nothing (0: none), current excluded. */
static uint32_t dead_prefix(const struct fbr_journal *j)
{
    uint32_t upto = 0;
    for (size_t i = 0; i + 1 < j->nsegs && j->segs[i].holds == 0; i++)
        upto = j->segs[i].id;
    return upto;
}

/* Removing a dead segment.  unlink() of a 16 MiB segment frees its blocks and pages in one call,
 * which held the loop for 7-12 ms once per segment (ext4 here; it was the intake's p99 at half
 * load).  So a dead segment is renamed NNNNNN.dead (recovery reads only .log files, and removes
 * the .dead ones a crash left behind), then cut by SHRINK_STEP bytes every SHRINK_MS, under a
 * millisecond of work each, and unlinked once empty.  Cutting starts only when a directory fsync
 * covers the rename (with --fsync off at once), so a power loss cannot bring a cut segment back
 * under its .log name, where recovery would find a delivery whose "finished" record was cut.
 * The newest FBR_JOURNAL_SPARES dead segments are not cut: roll() reuses their files (the same
 * rule keeps a file from being overwritten before its rename is on disk), so that in steady
 * state nothing is cut at all; a format 1 segment is never a spare (struct dying). */
#define SHRINK_STEP (256u * 1024)
#define SHRINK_MS 2

/* Whether the first dying segment is to be cut now: beyond the spares, or not reusable. */
static int shrink_due(const struct fbr_journal *j)
{
    return j->ndying && (j->ndying > FBR_JOURNAL_SPARES || !j->dying[0].reusable) &&
           j->dying[0].mark <= j->dying_ready;
}

static void schedule_shrink(struct fbr_journal *j)
{
    if (j->shrink_timer && shrink_due(j) && !evtimer_pending(j->shrink_timer, NULL)) {
        struct timeval tv = {0, SHRINK_MS * 1000};
        evtimer_add(j->shrink_timer, &tv);
    }
}

/* One step on the first dying segment: cut SHRINK_STEP bytes off it, or unlink it when no more
 * than that is left. */
static void shrink_step(struct fbr_journal *j)
{
    char path[4096];
    dead_path(j, j->dying[0].id, path, sizeof(path));
    if (j->dying_fd < 0)
        j->dying_fd = open(path, O_WRONLY | O_CLOEXEC);
    struct stat st;
    if (j->dying_fd >= 0 && fstat(j->dying_fd, &st) == 0 && st.st_size > (off_t)SHRINK_STEP &&
        ftruncate(j->dying_fd, st.st_size - (off_t)SHRINK_STEP) == 0)
        return;
    if (j->dying_fd >= 0)
        close(j->dying_fd);
    j->dying_fd = -1;
    if (unlink(path) != 0 && errno != ENOENT)
        fbr_log_warn("journal: cannot delete %s: %s", path, strerror(errno));
    memmove(j->dying, j->dying + 1, (j->ndying - 1) * sizeof(*j->dying));
    j->ndying--;
}

static void on_shrink(evutil_socket_t fd, short what, void *arg)
{
    struct fbr_journal *j = arg;
    if (shrink_due(j))
        shrink_step(j);
    schedule_shrink(j);
}

static void delete_upto(struct fbr_journal *j, uint32_t upto)
{
    size_t k = 0;
    while (k + 1 < j->nsegs && j->segs[k].id <= upto && j->segs[k].holds == 0) {
        char path[4096], dead[4096];
        seg_path(j, j->segs[k].id, path, sizeof(path));
        dead_path(j, j->segs[k].id, dead, sizeof(dead));
        if (rename(path, dead) != 0) {
            if (errno != ENOENT) {
                fbr_log_warn("journal: cannot delete %s: %s", path, strerror(errno));
                break;
            }
        } else {
            if (j->ndying == j->capdying) {
                j->capdying = j->capdying ? j->capdying * 2 : 8;
                j->dying = fbr_xrealloc(j->dying, j->capdying * sizeof(*j->dying));
            }
            j->dying[j->ndying++] =
                (struct dying){j->segs[k].id, ++j->dying_marks, !j->segs[k].unsalted};
        }
        k++;
    }
    if (!k)
        return;
    if (j->opts.fsync == FBR_FSYNC_OFF) /* no power-loss promise: cutting may start at once */
        j->dying_ready = j->dying_marks;
    schedule_shrink(j);
    memmove(j->segs, j->segs + k, (j->nsegs - k) * sizeof(*j->segs));
    j->nsegs -= k;
    j->dir_dirty = 1;
    j->st.first_seg = j->segs[0].id;
    update_gauges(j);
}

/* ---- the syncer thread ---- */

static void *syncer_main(void *arg)
{
    struct fbr_journal *j = arg;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        while (!j->job_stop && !j->job_posted)
            pthread_cond_wait(&j->cv, &j->mu);
        if (!j->job_posted)
            break;
        j->job_posted = 0;
        size_t n = j->job_nfds;
        int dirsync = j->job_dirsync;
        pthread_mutex_unlock(&j->mu);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        int err = 0;
        for (size_t i = 0; i < n; i++)
            if (fdatasync(j->job_fds[i]) != 0 && !err)
                err = errno;
        if (dirsync && fsync(j->dirfd) != 0 && !err)
            err = errno;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        pthread_mutex_lock(&j->mu);
        j->job_err = err;
        j->job_ns = (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000u +
                    (uint64_t)(t1.tv_nsec - t0.tv_nsec);
        j->job_done = 1;
        pthread_mutex_unlock(&j->mu);
        char c = 1;
        while (write(j->pipe_fds[1], &c, 1) < 0 && errno == EINTR)
            ;
        pthread_mutex_lock(&j->mu);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

/* Hands the written data to the syncer (one job at a time; more is asked for when it ends). */
static void request_sync(struct fbr_journal *j)
{
    if (j->sync_inflight || j->opts.fsync == FBR_FSYNC_OFF || j->cur_fd < 0)
        return;
    if (j->written == j->synced && !j->nretired && !j->dir_dirty)
        return;
    size_t n = 0;
    while (j->nretired && n < FBR_ARRAY_LEN(j->job_fds) - 1)
        j->job_fds[n++] = j->retired[--j->nretired];
    j->job_nowned = n;
    j->job_fds[n++] = j->cur_fd;
    j->job_nfds = n;
    j->job_dirsync = j->dir_dirty;
    j->job_dying_mark = j->dying_marks;
    j->dir_dirty = 0;
    j->job_pos = j->written;
    j->job_delete_upto = dead_prefix(j);
    j->job_waiters = 0;
    for (size_t i = 0; i < j->wcount && j->w[(j->whead + i) % j->wcap].pos <= j->written; i++)
        j->job_waiters++;
    j->sync_inflight = 1;
    pthread_mutex_lock(&j->mu);
    j->job_posted = 1;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static int write_buffer(struct fbr_journal *j);

static void on_sync_done(evutil_socket_t fd, short what, void *arg)
{
    struct fbr_journal *j = arg;
    char drain[64];
    while (read(fd, drain, sizeof(drain)) > 0)
        ;
    pthread_mutex_lock(&j->mu);
    int done = j->job_done, err = j->job_err;
    uint64_t ns = j->job_ns;
    j->job_done = 0;
    pthread_mutex_unlock(&j->mu);
    if (!done)
        return;
    j->sync_inflight = 0;
    for (size_t i = 0; i < j->job_nowned; i++)
        close(j->job_fds[i]);
    j->job_nowned = 0;
    j->st.fsyncs++;
    (*j->m_fsyncs)++;
    fbr_histogram_observe(j->m_fsync_s, (double)ns / 1e9);
    if (err) {
        j->dir_dirty = 1;
        trouble_begin(j, TK_SYNC, "syncing the journal", err);
        fail_waiters(j);
        /* What the failed callers' owners appended to take their changes back (cancelled
         * deliveries, undone incidents) goes out now if writes still work: their first
         * records may be in the file already, unsynced, and a kill -9 keeps those. */
        if (j->len)
            write_buffer(j);
        return;
    }
    trouble_end(j, TK_SYNC);
    if (j->job_dirsync && j->job_dying_mark > j->dying_ready) {
        j->dying_ready = j->job_dying_mark;
        schedule_shrink(j);
    }
    if (j->job_pos > j->synced)
        j->synced = j->job_pos;
    if (j->opts.fsync == FBR_FSYNC_ALWAYS)
        fbr_histogram_observe(j->m_group, (double)j->job_waiters);
    complete_waiters(j);
    notify_committed(j);
    delete_upto(j, j->job_delete_upto);
    if (j->opts.fsync == FBR_FSYNC_ALWAYS && j->written > j->synced)
        request_sync(j);
}

/* ---- writing ---- */

static void maybe_checkpoint(struct fbr_journal *j);

/* Writes the buffer to the current segment; returns FBR_OK or FBR_ERROR (episode begun). */
static int write_buffer(struct fbr_journal *j)
{
    if (!j->len || j->cur_fd < 0)
        return FBR_OK;
    if (j->need_roll && roll(j) != 0) {
        trouble_begin(j, TK_WRITE, "starting a journal segment", errno);
        fail_unwritten_waiters(j);
        return FBR_ERROR;
    }
    struct segment *s = &j->segs[j->nsegs - 1]; /* cur_seg(): cur_fd is open, so it exists */
    /* The CRCs are made here, with the salt of the segment the records land in (after a failed
     * write that may be a newer one than when they were appended). */
    uint32_t salt = seg_salt(s->id);
    for (size_t at = 0; at < j->len;)
        at += seal_record(j->buf + at, salt);
    size_t off = 0;
    int err = 0;
    while (off < j->len) {
        ssize_t w = pwrite(j->cur_fd, j->buf + off, j->len - off, (off_t)(s->bytes + off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            err = w < 0 ? errno : EIO;
            break;
        }
        off += (size_t)w;
    }
    j->st.writes++;
    (*j->m_writes)++;
    if (err) {
        /* Cut the partial batch off so the file ends on a whole record; the whole buffer is
         * written again later, on a fresh segment when this one has data (EFBIG, or a cut that
         * failed: the bad tail is then a torn tail of a closed segment). */
        if (off && ftruncate(j->cur_fd, (off_t)s->bytes) != 0)
            s->bytes += off;
        j->need_roll = s->bytes > 0 || off > 0;
        trouble_begin(j, TK_WRITE, "writing the journal", err);
        fail_unwritten_waiters(j);
        return FBR_ERROR;
    }
    s->bytes += j->len;
    *j->m_bytes_written += j->len;
    j->written = j->appended;
    j->len = 0;
    evtimer_del(j->lazy_timer); /* what it waited for went out with this write */
    trouble_end(j, TK_WRITE);
    if (j->opts.fsync != FBR_FSYNC_ALWAYS) {
        size_t n = complete_waiters(j);
        if (n)
            fbr_histogram_observe(j->m_group, (double)n);
        notify_committed(j);
    }
    if (s->bytes >= j->opts.segment_size) { /* s is stale after a roll (the array may move) */
        if (roll(j) != 0)
            fbr_log_warn("journal: cannot start a new segment in %s: %s (appending to the old "
                         "one)",
                         j->dir, strerror(errno));
        else if (j->nretired >= 16)
            request_sync(j); /* close the rolled segments' files soon */
    }
    update_gauges(j);
    if (j->opts.fsync == FBR_FSYNC_OFF)
        delete_upto(j, dead_prefix(j));
    else if (j->opts.fsync == FBR_FSYNC_ALWAYS)
        request_sync(j);
    maybe_checkpoint(j);
    return FBR_OK;
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    struct fbr_journal *j = arg;
    j->flush_active = 0;
    if (j->trouble == TK_NONE)
        write_buffer(j);
    complete_waiters(j);
    if (j->trouble != TK_NONE)
        fail_unwritten_waiters(j);
}

static void on_batch_timer(evutil_socket_t fd, short what, void *arg)
{
    request_sync(arg);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    struct fbr_journal *j = arg;
    if (j->trouble == TK_NONE)
        return;
    if (!j->len) /* something to try the disk with */
        fbr_journal_release(j, fbr_journal_append(j, FBR_JR_NOP, NULL, 0));
    if (write_buffer(j) == FBR_OK && j->trouble == TK_SYNC)
        request_sync(j); /* the episode ends when this fdatasync works */
    if (j->trouble != TK_NONE && !event_pending(j->retry_timer, EV_TIMEOUT, NULL)) {
        struct timeval tv = {0, RETRY_MS * 1000};
        evtimer_add(j->retry_timer, &tv);
    }
}

static void on_lazy(evutil_socket_t fd, short what, void *arg)
{
    schedule_flush(arg);
}

static struct fbr_journal_ref append_record(struct fbr_journal *j, unsigned type,
                                            const struct iovec *iov, int iovcnt, int lazy)
{
    size_t n = 0;
    for (int i = 0; i < iovcnt; i++)
        n += iov[i].iov_len;
    size_t need = j->len + FBR_JOURNAL_HEADER + n;
    if (need > j->cap) {
        j->cap = need * 2 > 65536 ? need * 2 : 65536;
        j->buf = fbr_xrealloc(j->buf, j->cap);
    }
    unsigned char *h = j->buf + j->len;
    put32(h, (uint32_t)n);
    h[8] = (unsigned char)type;
    unsigned char *p = h + FBR_JOURNAL_HEADER;
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len)
            memcpy(p, iov[i].iov_base, iov[i].iov_len);
        p += iov[i].iov_len;
    }
    j->len = need; /* its CRC is made when it is written (write_buffer) */
    j->appended += FBR_JOURNAL_HEADER + n;
    j->st.records++;
    if (type < FBR_JR_COUNT)
        (*j->m_records[type])++;
    struct fbr_journal_ref ref = {cur_seg(j) ? cur_seg(j)->id : 0,
                                  (uint32_t)(FBR_JOURNAL_HEADER + n)};
    fbr_journal_hold(j, ref);
    if (j->trouble != TK_NONE)
        return ref; /* the retry timer writes it */
    if (!lazy) {
        schedule_flush(j);
    } else if (!j->flush_active && !evtimer_pending(j->lazy_timer, NULL)) {
        struct timeval tv = {0, LAZY_MS * 1000};
        evtimer_add(j->lazy_timer, &tv);
    }
    return ref;
}

struct fbr_journal_ref fbr_journal_appendv(struct fbr_journal *j, unsigned type,
                                           const struct iovec *iov, int iovcnt)
{
    return append_record(j, type, iov, iovcnt, 0);
}

struct fbr_journal_ref fbr_journal_append_lazy(struct fbr_journal *j, unsigned type,
                                               const void *p, size_t n)
{
    struct iovec iov = {(void *)p, n};
    return append_record(j, type, &iov, 1, 1);
}

struct fbr_journal_ref fbr_journal_append(struct fbr_journal *j, unsigned type, const void *p,
                                          size_t n)
{
    struct iovec iov = {(void *)p, n};
    return fbr_journal_appendv(j, type, &iov, 1);
}

void fbr_journal_hold(struct fbr_journal *j, struct fbr_journal_ref ref)
{
    struct segment *s = ref.seg ? find_seg(j, ref.seg) : NULL;
    if (!s)
        return;
    s->holds++;
    s->live_bytes += ref.len;
}

void fbr_journal_release(struct fbr_journal *j, struct fbr_journal_ref ref)
{
    struct segment *s = ref.seg ? find_seg(j, ref.seg) : NULL;
    if (!s || !s->holds)
        return;
    s->holds--;
    s->live_bytes -= ref.len < s->live_bytes ? ref.len : s->live_bytes;
}

uint64_t fbr_journal_position(const struct fbr_journal *j)
{
    return j->appended;
}

uint64_t fbr_journal_committed(const struct fbr_journal *j)
{
    return committed(j);
}

void fbr_journal_wait(struct fbr_journal *j, uint64_t pos, fbr_journal_done_fn cb, void *arg)
{
    waiter_push(j, pos, cb, arg);
    schedule_flush(j);
}

int fbr_journal_writable(const struct fbr_journal *j)
{
    return j->recovered && j->trouble == TK_NONE;
}

const char *fbr_journal_trouble(const struct fbr_journal *j)
{
    if (!j->recovered)
        return "journal: recovery is not done";
    return j->trouble == TK_NONE ? NULL : j->trouble_msg;
}

int fbr_journal_flush(struct fbr_journal *j)
{
    if (j->trouble != TK_NONE)
        return FBR_ERROR;
    int rc = write_buffer(j);
    complete_waiters(j);
    return rc;
}

/* ---- checkpoints ---- */

static void run_checkpoint(struct fbr_journal *j, uint32_t upto)
{
    if (j->checkpointing || !upto)
        return;
    j->checkpointing = 1;
    for (size_t i = 0; i < j->nowners; i++)
        if (j->owners[i].checkpoint)
            j->owners[i].checkpoint(j->owners[i].arg, upto);
    j->checkpointing = 0;
    j->cp_upto = upto;
    j->cp_at = fbr_now_ms();
    j->st.checkpoints++;
    (*j->m_checkpoints)++;
    schedule_flush(j);
}

static void maybe_checkpoint(struct fbr_journal *j)
{
    if (j->checkpointing || j->nsegs < 2)
        return;
    /* What the last checkpoint copied is deleted after the fdatasync that covers the copies;
     * until then the old bytes still count, and checkpointing again would copy the same live
     * records over and over.  Wait for the deletion (or a second, if something stays held). */
    if (j->segs[0].id <= j->cp_upto && fbr_now_ms() - j->cp_at < 1000)
        return;
    if (j->st.bytes > 2 * j->st.live_bytes + 2 * j->opts.segment_size)
        run_checkpoint(j, j->segs[j->nsegs - 1].id - 1);
}

void fbr_journal_checkpoint(struct fbr_journal *j)
{
    if (j->nsegs >= 2)
        run_checkpoint(j, cur_seg(j)->id - 1);
}

/* ---- recovery ---- */

/* Whether a good record starts at off; sets *len to its payload length. */
static int good_at(const unsigned char *m, size_t size, size_t off, uint32_t salt, uint32_t *len)
{
    if (size - off < FBR_JOURNAL_HEADER)
        return 0;
    uint32_t n = get32(m + off);
    if (n > FBR_JOURNAL_MAX_RECORD || n > size - off - FBR_JOURNAL_HEADER)
        return 0;
    if (get32(m + off + 4) != record_crc(salt, m + off, m + off + FBR_JOURNAL_HEADER, n))
        return 0;
    *len = n;
    return 1;
}

/* The next offset after off where a good record of a known type starts, or size. */
static size_t next_good(const unsigned char *m, size_t size, size_t off, uint32_t salt)
{
    uint32_t n;
    for (size_t p = off + 1; p + FBR_JOURNAL_HEADER <= size; p++)
        if (m[p + 8] < FBR_JR_COUNT && good_at(m, size, p, salt, &n))
            return p;
    return size;
}

struct mapped {
    void *p;
    size_t n;
};

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* Ids of the segment files (NNNNNN + suffix) in dir, ascending; returns the count (*ids new,
 * caller frees). */
static size_t list_segments_in(const char *dir, const char *suffix, uint32_t **ids)
{
    size_t n = 0, cap = 0;
    *ids = NULL;
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *s = de->d_name;
        size_t k = strspn(s, "0123456789");
        if (k < 6 || k > 9 || strcmp(s + k, suffix) != 0)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            *ids = fbr_xrealloc(*ids, cap * sizeof(**ids));
        }
        (*ids)[n++] = (uint32_t)strtoul(s, NULL, 10);
    }
    closedir(d);
    if (n)
        qsort(*ids, n, sizeof(**ids), cmp_u32);
    return n;
}

static size_t list_segments(struct fbr_journal *j, uint32_t **ids)
{
    return list_segments_in(j->dir, ".log", ids);
}

size_t fbr_journal_segments_in(const char *dir)
{
    uint32_t *ids;
    size_t n = list_segments_in(dir, ".log", &ids);
    free(ids);
    return n;
}

/* Removes the NNNNNN.dead files (a crash left them mid-cut); runs before recovery. */
static void remove_dead_files(struct fbr_journal *j)
{
    uint32_t *ids;
    size_t n = list_segments_in(j->dir, ".dead", &ids);
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        dead_path(j, ids[i], path, sizeof(path));
        if (unlink(path) != 0)
            fbr_log_warn("journal: cannot delete %s: %s", path, strerror(errno));
    }
    free(ids);
}

static void dispatch(struct fbr_journal *j, unsigned type, struct fbr_slice p,
                     struct fbr_journal_ref ref)
{
    for (size_t i = 0; i < j->nowners; i++)
        if (type < 32 && (j->owners[i].types & (1u << type)) && j->owners[i].replay)
            j->owners[i].replay(j->owners[i].arg, type, p, ref);
}

/* Reads one segment (mapping kept in *mp for the owners); returns 0 or -1 with err set. */
static int replay_segment(struct fbr_journal *j, uint32_t id, struct mapped *mp, int *repaired,
                          char *err, size_t errlen)
{
    char path[4096];
    seg_path(j, id, path, sizeof(path));
    int fd = open(path, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "cannot open journal segment %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    const unsigned char *m = NULL;
    if (size) {
        void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            snprintf(err, errlen, "cannot map journal segment %s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        *mp = (struct mapped){p, size};
        m = p;
    }
    push_seg(j, id, size);
    struct segment *seg = &j->segs[j->nsegs - 1];
    j->rec.segments++;
    size_t off = 0;
    uint32_t salt = 0, prev = 0, hlen;
    const unsigned char *hp = m + FBR_JOURNAL_HEADER;
    int first_good = good_at(m, size, 0, 0, &hlen);
    if (first_good && m[8] == FBR_JR_NOP &&
        hlen == FBR_JOURNAL_SEGMENT_HEADER - FBR_JOURNAL_HEADER && !memcmp(hp, seg_magic, 4)) {
        /* A segment header (journal.h): its records carry the segment's salt. */
        if (get32(hp + 4) > FBR_JOURNAL_FORMAT) {
            snprintf(err, errlen,
                     "journal segment %s was written by a newer firebridge (format %" PRIu32
                     ", this one reads up to %u); nothing was changed",
                     path, get32(hp + 4), FBR_JOURNAL_FORMAT);
            close(fd);
            return -1;
        }
        if (get32(hp + 8) != id) {
            /* A spare renamed to this id whose new header and records never reached the disk
             * (a power loss with --fsync batch or off): the old ones are not this segment's. */
            fbr_log_warn("journal: %s holds segment %06" PRIu32 "'s old records, none of its "
                         "own: nothing replayed from it",
                         path, get32(hp + 8));
            close(fd);
            return 0;
        }
        salt = seg_salt(id);
        prev = get32(hp + 12);
        off = FBR_JOURNAL_SEGMENT_HEADER;
    } else if (!first_good && next_good(m, size, 0, seg_salt(id)) < size) {
        /* No readable header, yet records with this segment's salt follow: the header itself
         * is damaged.  That is corruption at byte 0 (below), not a format 1 segment whose
         * first record is torn, which would be cut with every record after it. */
        salt = seg_salt(id);
    } else {
        seg->unsalted = 1;
    }
    while (off < size) {
        uint32_t n;
        if (good_at(m, size, off, salt, &n)) {
            dispatch(j, m[off + 8],
                     (struct fbr_slice){(const char *)m + off + FBR_JOURNAL_HEADER, n},
                     (struct fbr_journal_ref){id, FBR_JOURNAL_HEADER + n});
            j->rec.records++;
            off += FBR_JOURNAL_HEADER + n;
            continue;
        }
        size_t next = next_good(m, size, off, salt);
        if (next == size && prev) {
            /* A reused file: past this segment's last record lie the bytes of the segment it
             * was before (another salt), or what a crash tore; both are its end, kept as is. */
            seg->bytes = off;
            break;
        }
        if (next == size) {
            fbr_log_warn("journal: torn tail in %s at byte %zu: cut %zu byte(s) after the last "
                         "good record",
                         path, off, size - off);
            if (ftruncate(fd, (off_t)off) != 0) {
                snprintf(err, errlen, "cannot cut the torn tail of %s at byte %zu: %s", path, off,
                         strerror(errno));
                close(fd);
                return -1;
            }
            j->rec.torn++;
            (*j->m_torn)++;
            seg->bytes = off;
            break;
        }
        if (!j->opts.repair) {
            snprintf(err, errlen,
                     "journal segment %s is corrupt at byte %zu (%zu unreadable byte(s) before "
                     "the next good record at byte %zu); nothing was changed.  Start with "
                     "--journal-repair to keep every readable record and drop the unreadable "
                     "ones (deliveries or incident changes in them are lost)",
                     path, off, next - off, next);
            close(fd);
            return -1;
        }
        fbr_log(FBR_LOG_ERROR, NULL, "repairing the journal",
                "%s: skipped %zu unreadable byte(s) at byte %zu", path, next - off, off);
        j->rec.skipped += next - off;
        *repaired = 1;
        off = next;
    }
    close(fd);
    return 0;
}

int fbr_journal_recover(struct fbr_journal *j, char *err, size_t errlen)
{
    uint64_t t0 = fbr_now_ms();
    remove_dead_files(j);
    uint32_t *ids;
    size_t n = list_segments(j, &ids);
    struct mapped *maps = fbr_xcalloc(n ? n : 1, sizeof(*maps));
    int rc = FBR_OK, repaired = 0;
    for (size_t i = 0; i < n && rc == FBR_OK; i++)
        if (replay_segment(j, ids[i], &maps[i], &repaired, err, errlen) != 0)
            rc = FBR_ERROR;
    if (rc == FBR_OK)
        for (size_t i = 0; i < j->nowners; i++)
            if (j->owners[i].replay_done)
                j->owners[i].replay_done(j->owners[i].arg);
    for (size_t i = 0; i < n; i++)
        if (maps[i].p)
            munmap(maps[i].p, maps[i].n);
    free(maps);
    free(ids);
    if (rc != FBR_OK)
        return rc;
    if (roll(j) != 0) {
        snprintf(err, errlen, "cannot create a journal segment in %s: %s", j->dir,
                 strerror(errno));
        return FBR_ERROR;
    }
    j->st.first_seg = j->segs[0].id;
    j->recovered = 1;
    if (repaired) /* everything live goes to the new segment; the damaged ones can go */
        fbr_journal_checkpoint(j);
    j->rec.ms = fbr_now_ms() - t0;
    *j->m_rec_ms = (int64_t)j->rec.ms;
    *j->m_rec_records = (int64_t)j->rec.records;
    if (j->opts.fsync == FBR_FSYNC_OFF)
        delete_upto(j, dead_prefix(j));
    else
        request_sync(j); /* the new segment's directory entry; deletes what is dead */
    update_gauges(j);
    if (n)
        fbr_log_info("journal: recovered %" PRIu64 " record(s) from %" PRIu64
                     " segment(s) in %" PRIu64 " ms (%" PRIu64 " torn tail(s) cut)",
                     j->rec.records, j->rec.segments, j->rec.ms, j->rec.torn);
    return FBR_OK;
}

const struct fbr_journal_recovery *fbr_journal_recovery(const struct fbr_journal *j)
{
    return &j->rec;
}

/* ---- lifecycle ---- */

static void register_metrics(struct fbr_journal *j, struct fbr_metrics *m)
{
    for (unsigned t = 0; t < FBR_JR_COUNT; t++)
        j->m_records[t] = fbr_metrics_counter(m, "firebridge_journal_records_total",
                                              "Journal records appended, by type", "type",
                                              type_names[t]);
    j->m_bytes_written = fbr_metrics_counter(m, "firebridge_journal_written_bytes_total",
                                             "Bytes written to the journal", NULL, NULL);
    j->m_writes = fbr_metrics_counter(m, "firebridge_journal_writes_total",
                                      "Journal write calls (one per loop iteration with records)",
                                      NULL, NULL);
    j->m_fsyncs = fbr_metrics_counter(m, "firebridge_journal_fsyncs_total",
                                      "fdatasync calls made by the journal's syncer", NULL, NULL);
    j->m_checkpoints = fbr_metrics_counter(m, "firebridge_journal_checkpoints_total",
                                           "Journal checkpoints (live records rewritten)", NULL,
                                           NULL);
    j->m_torn = fbr_metrics_counter(m, "firebridge_journal_torn_tails_total",
                                    "Torn or corrupt segment tails cut at recovery", NULL, NULL);
    j->m_recycled = fbr_metrics_counter(m, "firebridge_journal_segments_recycled_total",
                                        "Journal segments started in a dead segment's file",
                                        NULL, NULL);
    j->m_err_write = fbr_metrics_counter(m, "firebridge_journal_errors_total",
                                         "Failed journal writes and fdatasyncs", "op", "write");
    j->m_err_sync = fbr_metrics_counter(m, "firebridge_journal_errors_total", NULL, "op", "fsync");
    j->m_bytes = fbr_metrics_gauge(m, "firebridge_journal_bytes", "Journal bytes on disk", NULL,
                                   NULL);
    j->m_live = fbr_metrics_gauge(m, "firebridge_journal_live_bytes",
                                  "Journal bytes of records still live", NULL, NULL);
    j->m_segments = fbr_metrics_gauge(m, "firebridge_journal_segments", "Journal segment files",
                                      NULL, NULL);
    j->m_writable = fbr_metrics_gauge(m, "firebridge_journal_writable",
                                      "1 when the journal accepts writes (else alerts get 503)",
                                      NULL, NULL);
    j->m_rec_ms = fbr_metrics_gauge(m, "firebridge_journal_recovery_milliseconds",
                                    "Time the last start spent replaying the journal", NULL, NULL);
    j->m_rec_records = fbr_metrics_gauge(m, "firebridge_journal_recovered_records",
                                         "Records replayed at the last start", NULL, NULL);
    static const double fs_bounds[] = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5};
    j->m_fsync_s = fbr_metrics_histogram(m, "firebridge_journal_fsync_seconds",
                                         "fdatasync latency of the journal", NULL, NULL, fs_bounds,
                                         FBR_ARRAY_LEN(fs_bounds));
    static const double g_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 1024};
    j->m_group = fbr_metrics_histogram(m, "firebridge_journal_group_commit_size",
                                       "Callers answered per commit (write, or fdatasync for "
                                       "--fsync always)",
                                       NULL, NULL, g_bounds, FBR_ARRAY_LEN(g_bounds));
}

int fbr_journal_open(struct event_base *base, const struct fbr_journal_opts *opts,
                     struct fbr_journal **out, char *err, size_t errlen)
{
    *out = NULL;
    if (mkdir(opts->dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create the journal directory %s: %s", opts->dir,
                 strerror(errno));
        return FBR_ERROR;
    }
    int dirfd = open(opts->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
        snprintf(err, errlen, "cannot open the journal directory %s: %s", opts->dir,
                 strerror(errno));
        return FBR_ERROR;
    }
    struct fbr_journal *j = fbr_xcalloc(1, sizeof(*j));
    j->base = base;
    j->opts = *opts;
    j->dir = fbr_xstrdup(opts->dir);
    j->opts.dir = j->dir;
    if (!j->opts.fsync_interval_ms)
        j->opts.fsync_interval_ms = FBR_DEFAULT_FSYNC_INTERVAL_MS;
    if (!j->opts.segment_size)
        j->opts.segment_size = FBR_DEFAULT_JOURNAL_SEGMENT_SIZE;
    j->dirfd = dirfd;
    j->cur_fd = -1;
    j->dying_fd = -1;
    j->pipe_fds[0] = j->pipe_fds[1] = -1;
    struct fbr_metrics *m = opts->metrics;
    if (!m)
        m = j->own_metrics = fbr_metrics_new();
    register_metrics(j, m);
    j->flush_ev = event_new(base, -1, 0, on_flush, j);
    j->lazy_timer = evtimer_new(base, on_lazy, j);
    j->retry_timer = evtimer_new(base, on_retry, j);
    j->shrink_timer = evtimer_new(base, on_shrink, j);
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    if (j->opts.fsync != FBR_FSYNC_OFF) {
        if (pipe2(j->pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0 ||
            pthread_create(&j->thread, NULL, syncer_main, j) != 0) {
            snprintf(err, errlen, "cannot start the journal's syncer: %s", strerror(errno));
            fbr_journal_close(&j);
            return FBR_ERROR;
        }
        j->thread_started = 1;
        j->sync_ev = event_new(base, j->pipe_fds[0], EV_READ | EV_PERSIST, on_sync_done, j);
        event_add(j->sync_ev, NULL);
    }
    if (j->opts.fsync == FBR_FSYNC_BATCH) {
        j->batch_timer = event_new(base, -1, EV_PERSIST, on_batch_timer, j);
        struct timeval tv = {(time_t)(j->opts.fsync_interval_ms / 1000),
                             (suseconds_t)(j->opts.fsync_interval_ms % 1000) * 1000};
        event_add(j->batch_timer, &tv);
    }
    *out = j;
    return FBR_OK;
}

void fbr_journal_add_owner(struct fbr_journal *j, const struct fbr_journal_owner *owner)
{
    j->owners = fbr_xrealloc(j->owners, (j->nowners + 1) * sizeof(*j->owners));
    j->owners[j->nowners++] = *owner;
}

void fbr_journal_remove_owner(struct fbr_journal *j, void *arg)
{
    size_t k = 0;
    for (size_t i = 0; i < j->nowners; i++)
        if (j->owners[i].arg != arg)
            j->owners[k++] = j->owners[i];
    j->nowners = k;
}

void fbr_journal_get_stats(const struct fbr_journal *j, struct fbr_journal_stats *out)
{
    *out = j->st;
}

void fbr_journal_close(struct fbr_journal **jp)
{
    struct fbr_journal *j = *jp;
    if (!j)
        return;
    if (j->recovered && j->trouble == TK_NONE)
        write_buffer(j);
    if (j->thread_started) {
        pthread_mutex_lock(&j->mu);
        j->job_stop = 1;
        pthread_cond_signal(&j->cv);
        pthread_mutex_unlock(&j->mu);
        pthread_join(j->thread, NULL);
        if (j->sync_inflight) /* its result is in; its fds were not closed yet */
            for (size_t i = 0; i < j->job_nowned; i++)
                close(j->job_fds[i]);
    }
    /* The last fdatasync runs here, on the loop's thread: the process is going away. */
    for (size_t i = 0; i < j->nretired; i++) {
        if (j->opts.fsync != FBR_FSYNC_OFF)
            fdatasync(j->retired[i]);
        close(j->retired[i]);
    }
    if (j->cur_fd >= 0) {
        if (j->opts.fsync != FBR_FSYNC_OFF && j->written > j->synced && !fdatasync(j->cur_fd))
            j->synced = j->written;
        close(j->cur_fd);
    }
    if (j->opts.fsync != FBR_FSYNC_OFF)
        fsync(j->dirfd);
    complete_waiters(j);
    fail_waiters(j);
    if (j->flush_ev)
        event_free(j->flush_ev);
    if (j->lazy_timer)
        event_free(j->lazy_timer);
    if (j->retry_timer)
        event_free(j->retry_timer);
    if (j->shrink_timer)
        event_free(j->shrink_timer);
    if (j->dying_fd >= 0)
        close(j->dying_fd);
    for (size_t i = 0; i < j->ndying; i++) { /* the process is ending: what is left goes now */
        char path[4096];
        dead_path(j, j->dying[i].id, path, sizeof(path));
        if (unlink(path) != 0 && errno != ENOENT)
            fbr_log_warn("journal: cannot delete %s: %s", path, strerror(errno));
    }
    if (j->batch_timer)
        event_free(j->batch_timer);
    if (j->sync_ev)
        event_free(j->sync_ev);
    for (int i = 0; i < 2; i++)
        if (j->pipe_fds[i] >= 0)
            close(j->pipe_fds[i]);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    close(j->dirfd);
    fbr_metrics_free(&j->own_metrics);
    free(j->w);
    free(j->segs);
    free(j->retired);
    free(j->dying);
    free(j->buf);
    free(j->owners);
    free(j->dir);
    free(j);
    *jp = NULL;
}
