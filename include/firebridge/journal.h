/*
 * journal.h - the write-ahead journal under the data path: what the intake accepted (incident
 * changes, deliveries) is appended here before the alert is answered 200, so that kill -9, a
 * crash or (per --fsync) a power loss loses nothing that was acknowledged.  Owners (the delivery
 * engine, the incident table) append records and say which of them are still live; the journal
 * batches, writes, syncs, rolls, checkpoints and deletes, and hands the records back at start.
 *
 * On disk: <data_dir>/journal/000001.log, 000002.log, ... each a run of records
 *
 *   u32 len (payload bytes, little-endian) | u32 crc32c | u8 type | payload
 *
 * where the CRC32C covers len, type and payload.  Records are only ever appended; the journal
 * appends to the last segment and starts a new one past segment_size.  A segment begins with a
 * header, a nop record whose 16-byte payload is "FBRJ", u32 format (FBR_JOURNAL_FORMAT), u32
 * its id, u32 prev (the id of the dead segment whose file it reuses, 0 for a new file), with the
 * CRC as above; every other record's CRC32C starts from the segment's salt, the CRC32C of "FBRJ"
 * and its u32 id, instead of 0.  So a segment may start in a dead segment's file (renamed, the
 * blocks and cached pages reused: no block freed, none allocated, no size change for fdatasync
 * to commit), and its recovery stops at the first record without its salt: the older bytes past
 * its end never pass for its own.  A segment without the header (format 1, written before reuse
 * existed) is read with no salt, as it was written, and its file is never reused (cut when dead):
 * under a new segment's name, before the new header covers its first record, its records would
 * pass for that segment's own.
 *
 * Writing: fbr_journal_append() copies the record into a buffer that is written with one write per
 * event-loop iteration (a callback activated by the first append of the iteration); a lazy append
 * (fbr_journal_append_lazy) waits up to 10 ms for such a write instead of asking for one.  A caller
 * that must not answer before its records are safe asks fbr_journal_wait(): the callback fires
 * once the records up to that position are written (--fsync off, batch) or written and
 * fdatasync'ed (always; every record written meanwhile shares that fdatasync: group commit).
 * fdatasync runs on one syncer thread, which does nothing else and signals completion back to
 * the loop through a pipe; the loop never waits for the disk.  In batch mode the loop asks for an
 * fdatasync every fsync_interval_ms when something was written since the last one.
 *
 * Disk trouble: a failed write or fdatasync fails every waiting caller with FBR_ERROR (never a
 * success), is logged once per episode, and turns fbr_journal_writable() to 0; the buffer is
 * kept (a partial write is cut off the file first) and retried every 250 ms, on a fresh segment
 * when the old one has data, so the journal recovers by itself once the disk accepts writes.
 * A failed caller must take back what it appended, since its records stay in the buffer and
 * will be written: it appends records that cancel them (a cancelled delivery, an incident's
 * previous version), which land behind them, so recovery ends where the caller started.  Owners
 * make that possible by acting on nothing before it is committed: the delivery engine sends a
 * delivery only once the committed notification (owner.committed) passes its record, so a
 * failed caller's deliveries are still unsent.  After a failed fdatasync the cancelling records
 * are written at once (the failed ones may be in the file, unsynced).
 *
 * Liveness and disk use: every append takes one hold on its record's segment; the owner keeps
 * the returned ref and releases it when the record stops mattering (a delivery finished, an
 * incident replaced).  Segments are deleted oldest first once they and every older segment hold
 * nothing (after the fdatasync that covers what replaced them): renamed NNNNNN.dead.  Once a
 * directory fsync covers that rename, the newest FBR_JOURNAL_SPARES of them wait as spares, each
 * renamed to the next new segment's name and overwritten from the start; older ones are cut
 * 256 KiB at a time by a loop timer and unlinked, so that no single call frees a whole segment's
 * blocks (recovery reads only .log files and removes .dead ones; so does a close).  When the journal holds more
 * than twice its live bytes plus two segments, a checkpoint asks every owner to append again
 * every live record it holds in the segments up to the one being written, and to release the old
 * refs, so those segments can go: disk use follows what is live, not history.
 *
 * Recovery (fbr_journal_recover, before the listeners open): every segment is read in order and
 * each good record handed to the owner of its type with its ref, then each owner's replay_done
 * runs.  A bad record (short, bad CRC) with no good record after it in its segment is a torn tail:
 * it is cut off (ftruncate), logged with the byte offset and counted; in a reused file (prev not
 * 0) it is the segment's end and the older bytes after it stay, neither cut nor counted.  A file
 * whose header names another segment (a spare renamed whose new header never reached the disk:
 * a power loss without --fsync always) holds nothing of its own and gives nothing; a header of a
 * newer format stops recovery.  A bad record followed by
 * good ones is corruption in the middle (a damaged header followed by records with the segment's
 * salt too, at byte 0): recovery fails with a message naming the segment and
 * offset, unless opts.repair, which skips to the next good record and rewrites everything live
 * into a fresh segment.  Appends go to a new segment after the last one found.
 *
 * Single-threaded apart from the syncer: call everything from the loop's thread.
 */
#ifndef FIREBRIDGE_JOURNAL_H
#define FIREBRIDGE_JOURNAL_H

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "firebridge/common.h"

struct fbr_journal;
struct fbr_metrics;

/* Record types: value, name (for logs and metrics). */
#define FBR_JOURNAL_TYPE_MAP(X)                                                                    \
    X(NOP, 0, "nop")                                                                               \
    X(DELIVERY_ACCEPTED, 1, "delivery_accepted")                                                   \
    X(DELIVERY_ATTEMPT, 2, "delivery_attempt")                                                     \
    X(DELIVERY_FINISHED, 3, "delivery_finished")                                                   \
    X(INCIDENT, 4, "incident")

enum fbr_journal_type {
#define FBR_X(name, value, text) FBR_JR_##name = (value),
    FBR_JOURNAL_TYPE_MAP(FBR_X)
#undef FBR_X
        FBR_JR_COUNT
};
const char *fbr_journal_type_name(unsigned type);

#define FBR_JOURNAL_HEADER 9u                     /* len, crc, type */
#define FBR_JOURNAL_SEGMENT_HEADER (FBR_JOURNAL_HEADER + 16u) /* a nop: magic, format, id, prev */
#define FBR_JOURNAL_FORMAT 2u  /* the segment header's format; 1: segments without a header */
#define FBR_JOURNAL_SPARES 2u  /* dead segment files kept for reuse by the next rolls */
#define FBR_JOURNAL_MAX_RECORD (256u * 1024 * 1024) /* payload bytes; larger is corruption */

/* CRC32C (Castagnoli), as iSCSI and ext4 use it: crc = fbr_crc32c(0, p, n) for one run,
 * fbr_crc32c(crc, q, m) continues it.  Uses the SSE4.2 crc32 instruction when the CPU has it
 * (fbr_crc32c_hardware() says 1), else the table version, which fbr_crc32c_portable() always
 * uses (tests compare the two). */
uint32_t fbr_crc32c(uint32_t crc, const void *p, size_t n);
uint32_t fbr_crc32c_portable(uint32_t crc, const void *p, size_t n);
int fbr_crc32c_hardware(void);

/* Where a record lives: its segment (0: none) and its size on disk. */
struct fbr_journal_ref {
    uint32_t seg;
    uint32_t len;
};
/* A ref packed in one word (for owners that keep a word per object) and back. */
static inline uint64_t fbr_journal_ref_pack(struct fbr_journal_ref r)
{
    return (uint64_t)r.seg << 32 | r.len;
}
static inline struct fbr_journal_ref fbr_journal_ref_unpack(uint64_t w)
{
    return (struct fbr_journal_ref){(uint32_t)(w >> 32), (uint32_t)w};
}

/*
 * An owner of some record types.  replay gets each good record of those types in journal order
 * (payload borrowed until replay_done returns) and takes a hold (fbr_journal_hold) on every
 * record it keeps; replay_done runs once after the last record.  checkpoint must append again
 * every live record it holds in segments <= upto, release their old refs and keep the new ones.
 */
struct fbr_journal_owner {
    const char *name;
    unsigned types; /* bit (1u << type) per record type */
    void (*replay)(void *arg, unsigned type, struct fbr_slice payload, struct fbr_journal_ref ref);
    void (*replay_done)(void *arg);
    void (*checkpoint)(void *arg, uint32_t upto);
    /* Optional: the commit level (fbr_journal_committed) reached pos; runs from the loop after
     * the waiters it completed.  The delivery engine's gate and the incidents' undo log follow
     * it. */
    void (*committed)(void *arg, uint64_t pos);
    void *arg;
};

struct fbr_journal_opts {
    const char *dir;              /* the segment directory (created), copied */
    enum fbr_fsync_mode fsync;
    unsigned fsync_interval_ms;   /* batch: at most this long between fdatasyncs; 0: 100 */
    uint64_t segment_size;        /* bytes before a new segment starts; 0: 16 MiB */
    int repair;                   /* 1: keep what is readable past corruption (--journal-repair) */
    struct fbr_metrics *metrics;  /* borrowed, may be NULL: where the journal's series go */
};

/*
 * Creates the journal on base (borrowed, must outlive it): makes the directory, starts the syncer
 * thread (not for --fsync off).  Nothing is read yet.  Returns FBR_OK with *out, or FBR_ERROR
 * with the reason in err.
 */
int fbr_journal_open(struct event_base *base, const struct fbr_journal_opts *opts,
                     struct fbr_journal **out, char *err, size_t errlen);

/* How many segment files (NNNNNN.log) the journal directory dir holds; 0 when it is missing. */
size_t fbr_journal_segments_in(const char *dir);

/* Registers an owner (copied) before fbr_journal_recover(); arg is borrowed. */
void fbr_journal_add_owner(struct fbr_journal *j, const struct fbr_journal_owner *owner);
/* Unregisters the owners with this arg (an owner going away before the journal closes: nothing
 * calls it any more, not even the close's last write). */
void fbr_journal_remove_owner(struct fbr_journal *j, void *arg);

/*
 * Replays the segments into the owners (see the top of this file) and opens a new segment for
 * appending.  Returns FBR_OK, or FBR_ERROR with err saying what and where (corruption without
 * repair, unreadable files, a new segment that cannot be created).  Call once.
 */
int fbr_journal_recover(struct fbr_journal *j, char *err, size_t errlen);

/* What recovery found. */
struct fbr_journal_recovery {
    uint64_t records;   /* good records read */
    uint64_t segments;  /* segment files read */
    uint64_t torn;      /* torn tails cut */
    uint64_t skipped;   /* bytes skipped by repair */
    uint64_t ms;        /* how long it took */
};
const struct fbr_journal_recovery *fbr_journal_recovery(const struct fbr_journal *j);

/*
 * Appends one record (the payload is the concatenation of iov, copied) and returns its ref with
 * one hold taken.  Never fails: an append while writes fail is kept in the buffer and written
 * when the disk works again.
 */
struct fbr_journal_ref fbr_journal_appendv(struct fbr_journal *j, unsigned type,
                                           const struct iovec *iov, int iovcnt);
struct fbr_journal_ref fbr_journal_append(struct fbr_journal *j, unsigned type, const void *p,
                                          size_t n);
/*
 * The same for a record nobody waits for and whose loss costs only a repeat, never a loss (a
 * delivery's "delivered" outcome: without it, recovery sends the delivery once more): it goes
 * out with the next write that another append asks for, or at the latest 10 ms later, instead
 * of with a write of its own.  Where the loop is not busy that is one write per alert instead
 * of two.
 */
struct fbr_journal_ref fbr_journal_append_lazy(struct fbr_journal *j, unsigned type,
                                               const void *p, size_t n);
/* Another hold on a record whose segment still has one; a release gives one back.  A ref with
 * seg 0 is ignored. */
void fbr_journal_hold(struct fbr_journal *j, struct fbr_journal_ref ref);
void fbr_journal_release(struct fbr_journal *j, struct fbr_journal_ref ref);

/* Position after the last record appended (bytes appended since open). */
uint64_t fbr_journal_position(const struct fbr_journal *j);
/* Position up to which every record is committed as --fsync says (written; synced for always). */
uint64_t fbr_journal_committed(const struct fbr_journal *j);

/*
 * Calls cb(arg, FBR_OK) once every record up to pos is committed as --fsync says, or
 * cb(arg, FBR_ERROR) when the write or fdatasync carrying them failed.  cb always runs later,
 * from the loop (never inside this call), exactly once, in the order of the calls; on
 * fbr_journal_close() the ones still waiting get FBR_ERROR.
 */
typedef void (*fbr_journal_done_fn)(void *arg, int status);
void fbr_journal_wait(struct fbr_journal *j, uint64_t pos, fbr_journal_done_fn cb, void *arg);

/* 1 when recovery is done and the last write and fdatasync worked; 0 while not recovered or
 * during a disk-trouble episode (callers answer 503 then). */
int fbr_journal_writable(const struct fbr_journal *j);
/* Why not writable (a static or internal string, borrowed), or NULL when writable. */
const char *fbr_journal_trouble(const struct fbr_journal *j);

/* Writes the buffer now (tests, shutdown); returns FBR_OK or FBR_ERROR. */
int fbr_journal_flush(struct fbr_journal *j);
/* Runs a checkpoint of every segment before the current one now (tests). */
void fbr_journal_checkpoint(struct fbr_journal *j);

struct fbr_journal_stats {
    uint64_t bytes;          /* on disk, all segments */
    uint64_t live_bytes;     /* held records */
    uint64_t segments;       /* files */
    uint32_t first_seg, cur_seg;
    uint64_t records;        /* appended since open */
    uint64_t writes;         /* write calls */
    uint64_t fsyncs;
    uint64_t checkpoints;
    uint64_t write_errors;   /* failed writes and fdatasyncs */
    uint64_t recycled;       /* segments started in a dead segment's file */
};
void fbr_journal_get_stats(const struct fbr_journal *j, struct fbr_journal_stats *out);

/* Writes what is buffered, fdatasyncs (unless off), stops the syncer, fails the callers still
 * waiting, closes the files and frees; sets *j to NULL. */
void fbr_journal_close(struct fbr_journal **j);

#endif
