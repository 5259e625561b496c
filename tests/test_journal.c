/*
 * test_journal.c - unit tests for journal.c, the write-ahead journal under the intake and the
 * delivery engine: CRC32C, the record format read back in order across segments, a torn tail at
 * every byte offset of the last record, corruption in the middle (refused, then repaired), segment
 * roll, deletion of dead segments and checkpoints, dead segments' files reused by new segments
 * (only a segment's own records come back), segments without a header or with another one's, the
 * commit callbacks of each --fsync mode, and a failed write (RLIMIT_FSIZE) that answers
 * FBR_ERROR and recovers by itself.
 */
#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon_util.h"
#include "firebridge/journal.h"
#include "firebridge/log.h"
#include "testsupport.h"

static char dir[256];
static struct event_base *base;

static void setup(void)
{
    dutil_tmpdir(dir, sizeof(dir), "fbr-journal");
    base = event_base_new();
    fbr_log_setup(FBR_LOG_ERROR, FBR_LOG_TEXT);
}

static void teardown(void)
{
    event_base_free(base);
    dutil_rm_rf(dir);
}

/* ---- a test owner: keeps every record it sees; `live` ones are held and checkpointed ---- */

struct rec {
    unsigned type;
    char data[128];
    size_t n;
    struct fbr_journal_ref ref;
    int live;
};

struct owner {
    struct fbr_journal *j;
    struct rec v[4096];
    size_t n;
    int done;
    int checkpoints;
};

static void own_replay(void *arg, unsigned type, struct fbr_slice p, struct fbr_journal_ref ref)
{
    struct owner *o = arg;
    ck_assert_uint_lt(o->n, FBR_ARRAY_LEN(o->v));
    struct rec *r = &o->v[o->n++];
    r->type = type;
    r->n = p.len < sizeof(r->data) ? p.len : sizeof(r->data);
    memcpy(r->data, p.ptr, r->n);
    r->ref = ref;
    r->live = 1;
    fbr_journal_hold(o->j, ref);
}

static void own_done(void *arg)
{
    ((struct owner *)arg)->done++;
}

static void own_checkpoint(void *arg, uint32_t upto)
{
    struct owner *o = arg;
    o->checkpoints++;
    for (size_t i = 0; i < o->n; i++) {
        struct rec *r = &o->v[i];
        if (!r->live || r->ref.seg > upto)
            continue;
        struct fbr_journal_ref old = r->ref;
        r->ref = fbr_journal_append(o->j, r->type, r->data, r->n);
        fbr_journal_release(o->j, old);
    }
}

static struct fbr_journal *open_j(enum fbr_fsync_mode mode, uint64_t seg, int repair,
                                  struct owner *o, int *rc, char *err, size_t errlen)
{
    char jdir[300];
    snprintf(jdir, sizeof(jdir), "%s/journal", dir);
    struct fbr_journal_opts opts = {.dir = jdir, .fsync = mode, .fsync_interval_ms = 10,
                                    .segment_size = seg, .repair = repair};
    struct fbr_journal *j = NULL;
    ck_assert_int_eq(fbr_journal_open(base, &opts, &j, err, errlen), FBR_OK);
    memset(o, 0, sizeof(*o));
    o->j = j;
    struct fbr_journal_owner ow = {.name = "test", .types = ~0u, .replay = own_replay,
                                   .replay_done = own_done, .checkpoint = own_checkpoint,
                                   .arg = o};
    fbr_journal_add_owner(j, &ow);
    *rc = fbr_journal_recover(j, err, errlen);
    return j;
}

/* Appends a record the owner keeps as live. */
static void add(struct owner *o, unsigned type, const char *s)
{
    struct rec *r = &o->v[o->n++];
    r->type = type;
    r->n = strlen(s);
    memcpy(r->data, s, r->n);
    r->live = 1;
    r->ref = fbr_journal_append(o->j, type, s, r->n);
}

static void seg_file(uint32_t id, char *path, size_t n)
{
    snprintf(path, n, "%s/journal/%06u.log", dir, id);
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

static int file_exists(uint32_t id)
{
    char p[400];
    seg_file(id, p, sizeof(p));
    return access(p, F_OK) == 0;
}

START_TEST(crc32c_known_values)
{
    /* the check value of CRC-32C (RFC 3720 appendix B.4 uses the same polynomial) */
    ck_assert_uint_eq(fbr_crc32c(0, "123456789", 9), 0xE3069283u);
    ck_assert_uint_eq(fbr_crc32c(0, "", 0), 0);
    unsigned char zeros[32] = {0};
    ck_assert_uint_eq(fbr_crc32c(0, zeros, 32), 0x8A9136AAu);
    /* incremental over any split equals one pass, at any alignment */
    char buf[300];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (char)(i * 7 + 3);
    uint32_t whole = fbr_crc32c(0, buf + 1, sizeof(buf) - 1);
    for (size_t cut = 0; cut < sizeof(buf) - 1; cut += 13)
        ck_assert_uint_eq(fbr_crc32c(fbr_crc32c(0, buf + 1, cut), buf + 1 + cut,
                                     sizeof(buf) - 1 - cut),
                          whole);
}
END_TEST

START_TEST(crc32c_hardware_matches_table)
{
    /* the SSE4.2 path (when the CPU has it) and the table agree at every length and alignment */
    unsigned char buf[1100];
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < sizeof(buf); i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        buf[i] = (unsigned char)x;
    }
    ck_assert_uint_eq(fbr_crc32c_portable(0, "123456789", 9), 0xE3069283u);
    for (size_t off = 0; off < 9; off++)
        for (size_t n = 0; n + off <= sizeof(buf); n += n < 40 ? 1 : 97)
            ck_assert_uint_eq(fbr_crc32c(0x1234u, buf + off, n),
                              fbr_crc32c_portable(0x1234u, buf + off, n));
    fprintf(stderr, "crc32c: %s\n", fbr_crc32c_hardware() ? "SSE4.2 instruction" : "table");
}
END_TEST

START_TEST(records_come_back_in_order)
{
    struct owner *o = calloc(1, sizeof(*o)), *o2 = calloc(1, sizeof(*o2));
    char err[512];
    int rc;
    struct fbr_journal *j = open_j(FBR_FSYNC_OFF, 0, 0, o, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    ck_assert_int_eq(o->done, 1);
    ck_assert_uint_eq(o->n, 0);
    ck_assert_int_eq(fbr_journal_writable(j), 1);
    add(o, FBR_JR_DELIVERY_ACCEPTED, "first");
    add(o, FBR_JR_INCIDENT, "");
    add(o, FBR_JR_DELIVERY_FINISHED, "third");
    ck_assert_uint_eq(fbr_journal_position(j), 3 * FBR_JOURNAL_HEADER + 10);
    fbr_journal_close(&j);
    ck_assert_ptr_null(j);
    j = open_j(FBR_FSYNC_OFF, 0, 0, o2, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    ck_assert_uint_eq(o2->n, 3);
    ck_assert_uint_eq(o2->v[0].type, FBR_JR_DELIVERY_ACCEPTED);
    ck_assert_int_eq(memcmp(o2->v[0].data, "first", 5), 0);
    ck_assert_uint_eq(o2->v[1].type, FBR_JR_INCIDENT);
    ck_assert_uint_eq(o2->v[1].n, 0);
    ck_assert_uint_eq(o2->v[2].type, FBR_JR_DELIVERY_FINISHED);
    ck_assert_uint_eq(o2->v[0].ref.seg, 1);
    ck_assert_uint_eq(o2->v[0].ref.len, FBR_JOURNAL_HEADER + 5);
    ck_assert_uint_eq(fbr_journal_recovery(j)->records, 3);
    ck_assert_uint_eq(fbr_journal_recovery(j)->torn, 0);
    /* appends go to a new segment after the last one found */
    add(o2, FBR_JR_NOP, "x");
    ck_assert_uint_eq(o2->v[3].ref.seg, 2);
    fbr_journal_close(&j);
    free(o);
    free(o2);
}
END_TEST

/* Three records; the last one is cut at every byte offset, and also has each byte flipped: every
 * case recovers the first two and cuts the file at the end of the second. */
START_TEST(torn_tail_at_every_offset)
{
    struct owner *o = calloc(1, sizeof(*o));
    char err[512], path[400], saved[400];
    int rc;
    struct fbr_journal *j = open_j(FBR_FSYNC_OFF, 0, 0, o, &rc, err, sizeof(err));
    add(o, FBR_JR_DELIVERY_ACCEPTED, "alpha");
    add(o, FBR_JR_DELIVERY_ATTEMPT, "beta-beta");
    add(o, FBR_JR_DELIVERY_FINISHED, "the last record, torn");
    fbr_journal_close(&j);
    seg_file(1, path, sizeof(path));
    off_t size = file_size(path);
    off_t good = FBR_JOURNAL_SEGMENT_HEADER + 2 * FBR_JOURNAL_HEADER + 5 + 9;
    ck_assert_int_eq(size, good + FBR_JOURNAL_HEADER + 21);
    snprintf(saved, sizeof(saved), "%s/saved.log", dir);
    ck_assert_int_eq(rename(path, saved), 0);
    char *content = malloc((size_t)size);
    int fd = open(saved, O_RDONLY);
    ck_assert_int_eq(read(fd, content, (size_t)size), size);
    close(fd);
    for (int flip = 0; flip < 2; flip++) {
        for (off_t cut = good; cut < size; cut++) {
            dutil_rm_rf(dir);
            ck_assert_int_eq(mkdir(dir, 0700), 0);
            char jdir[300];
            snprintf(jdir, sizeof(jdir), "%s/journal", dir);
            ck_assert_int_eq(mkdir(jdir, 0700), 0);
            fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            if (flip) { /* whole length, one byte of the last record changed */
                content[cut] ^= 0x5a;
                ck_assert_int_eq(write(fd, content, (size_t)size), size);
                content[cut] ^= 0x5a;
            } else {
                ck_assert_int_eq(write(fd, content, (size_t)cut), cut);
            }
            close(fd);
            j = open_j(FBR_FSYNC_OFF, 0, 0, o, &rc, err, sizeof(err));
            ck_assert_msg(rc == FBR_OK, "cut %ld flip %d: %s", (long)cut, flip, err);
            ck_assert_uint_eq(o->n, 2);
            ck_assert_int_eq(memcmp(o->v[1].data, "beta-beta", 9), 0);
            ck_assert_uint_eq(fbr_journal_recovery(j)->torn, (flip || cut > good) ? 1 : 0);
            ck_assert_int_eq(file_size(path), good);
            fbr_journal_close(&j);
        }
    }
    free(content);
    free(o);
}
END_TEST

START_TEST(corruption_in_the_middle_stops_unless_repair)
{
    struct owner *o = calloc(1, sizeof(*o));
    char err[512], path[400];
    int rc;
    struct fbr_journal *j = open_j(FBR_FSYNC_OFF, 0, 0, o, &rc, err, sizeof(err));
    add(o, FBR_JR_DELIVERY_ACCEPTED, "one");
    add(o, FBR_JR_DELIVERY_ACCEPTED, "two");
    add(o, FBR_JR_DELIVERY_ACCEPTED, "three");
    fbr_journal_close(&j);
    seg_file(1, path, sizeof(path));
    int fd = open(path, O_WRONLY);
    const off_t second = FBR_JOURNAL_SEGMENT_HEADER + FBR_JOURNAL_HEADER + 3;
    ck_assert_int_eq(pwrite(fd, "X", 1, second + FBR_JOURNAL_HEADER + 1), 1);
    close(fd);
    off_t before = file_size(path);
    j = open_j(FBR_FSYNC_OFF, 0, 0, o, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_ERROR);
    char where[64];
    snprintf(where, sizeof(where), "corrupt at byte %ld ", (long)second);
    ck_assert_msg(strstr(err, where), "%s", err);
    ck_assert_ptr_nonnull(strstr(err, "--journal-repair"));
    ck_assert_int_eq(fbr_journal_writable(j), 0);
    fbr_journal_close(&j);
    ck_assert_int_eq(file_size(path), before); /* nothing changed */
    j = open_j(FBR_FSYNC_OFF, 0, 1, o, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    ck_assert_uint_eq(o->n, 2);
    ck_assert_int_eq(memcmp(o->v[0].data, "one", 3), 0);
    ck_assert_int_eq(memcmp(o->v[1].data, "three", 5), 0);
    ck_assert_uint_eq(fbr_journal_recovery(j)->skipped, FBR_JOURNAL_HEADER + 3);
    ck_assert_int_eq(o->checkpoints, 1);
    fbr_journal_close(&j); /* writes the rewritten records, drops the damaged segment */
    ck_assert_int_eq(file_exists(1), 0);
    j = open_j(FBR_FSYNC_OFF, 0, 0, o, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    ck_assert_uint_eq(o->n, 2);
    ck_assert_int_eq(memcmp(o->v[1].data, "three", 5), 0);
    fbr_journal_close(&j);
    free(o);
}
END_TEST

/* A segment's header with any one byte changed, records with the segment's salt after it: that
 * is corruption at byte 0, refused with the file untouched, and repair keeps the records.  (Read
 * as a segment without a header, its first record bad and no unsalted record after it, the
 * whole segment was cut as a torn tail: every record lost, without --journal-repair.) */
START_TEST(damaged_header_is_corruption_not_a_torn_tail)
{
    struct owner *o = calloc(1, sizeof(*o));
    char err[512], path[400];
    int rc;
    seg_file(1, path, sizeof(path));
    for (off_t at = 0; at < (off_t)FBR_JOURNAL_SEGMENT_HEADER; at++) {
        dutil_rm_rf(dir);
        ck_assert_int_eq(mkdir(dir, 0700), 0);
        struct fbr_journal *j = open_j(FBR_FSYNC_OFF, 0, 0, o, &rc, err, sizeof(err));
        add(o, FBR_JR_DELIVERY_ACCEPTED, "one");
        add(o, FBR_JR_INCIDENT, "two");
        fbr_journal_close(&j);
        int fd = open(path, O_RDWR);
        unsigned char c;
        ck_assert_int_eq(pread(fd, &c, 1, at), 1);
        c ^= 0x5a;
        ck_assert_int_eq(pwrite(fd, &c, 1, at), 1);
        close(fd);
        off_t before = file_size(path);
        j = open_j(FBR_FSYNC_OFF, 0, 0, o, &rc, err, sizeof(err));
        ck_assert_msg(rc == FBR_ERROR, "byte %ld changed: recovered %zu record(s), file %ld -> %ld",
                      (long)at, o->n, (long)before, (long)file_size(path));
        ck_assert_msg(strstr(err, "corrupt at byte 0 "), "%s", err);
        fbr_journal_close(&j);
        ck_assert_int_eq(file_size(path), before);
        if (at != FBR_JOURNAL_SEGMENT_HEADER - 1)
            continue;
        j = open_j(FBR_FSYNC_OFF, 0, 1, o, &rc, err, sizeof(err));
        ck_assert_msg(rc == FBR_OK, "%s", err);
        ck_assert_uint_eq(o->n, 2);
        ck_assert_int_eq(memcmp(o->v[0].data, "one", 3), 0);
        ck_assert_int_eq(memcmp(o->v[1].data, "two", 3), 0);
        ck_assert_uint_eq(fbr_journal_recovery(j)->skipped, FBR_JOURNAL_SEGMENT_HEADER);
        fbr_journal_close(&j);
    }
    free(o);
}
END_TEST

/* Small segments: they roll; a dead prefix is deleted; one long-lived record pins its segment
 * until a checkpoint copies it forward; what comes back after all that is exactly the live set. */
START_TEST(roll_delete_and_checkpoint)
{
    struct owner *o = calloc(1, sizeof(*o));
    char err[512];
    int rc;
    struct fbr_journal *j = open_j(FBR_FSYNC_OFF, 256, 0, o, &rc, err, sizeof(err));
    add(o, FBR_JR_INCIDENT, "long-lived incident");
    for (int i = 0; i < 200; i++) {
        char s[64];
        snprintf(s, sizeof(s), "delivery %03d ........................", i);
        add(o, FBR_JR_DELIVERY_ACCEPTED, s);
        ck_assert_int_eq(fbr_journal_flush(j), FBR_OK);
        if (i % 10 != 0) { /* nine of ten finish */
            fbr_journal_release(j, o->v[o->n - 1].ref);
            o->v[o->n - 1].live = 0;
            /* as the delivery engine does: the finish is a record too, held by nobody */
            fbr_journal_release(j, fbr_journal_append(j, FBR_JR_DELIVERY_FINISHED, s, strlen(s)));
        }
    }
    struct fbr_journal_stats st;
    fbr_journal_get_stats(j, &st);
    ck_assert_uint_gt(st.cur_seg, 20);
    /* the incident pinned segment 1 until a checkpoint copied it forward; then it went */
    ck_assert_uint_gt(o->v[0].ref.seg, 1);
    ck_assert_int_eq(file_exists(1), 0);
    ck_assert_int_eq(file_exists(o->v[0].ref.seg), 1);
    /* Automatic checkpoints keep the disk near the live set: never more than twice the live
     * bytes plus two segments (and a segment's overshoot). */
    ck_assert_uint_le(st.bytes, 2 * st.live_bytes + 4 * 256 + 256);
    ck_assert_uint_gt(st.checkpoints, 0);
    size_t live_before = 0;
    for (size_t i = 0; i < o->n; i++)
        live_before += o->v[i].live;
    ck_assert_uint_eq(live_before, 21);
    fbr_journal_checkpoint(j);
    ck_assert_int_eq(fbr_journal_flush(j), FBR_OK);
    fbr_journal_get_stats(j, &st);
    ck_assert_uint_eq(st.first_seg, st.cur_seg - 1 + (st.segments == 1)); /* all old ones gone */
    fbr_journal_close(&j);

    struct owner *o2 = calloc(1, sizeof(*o2));
    j = open_j(FBR_FSYNC_OFF, 256, 0, o2, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    /* replayed as an owner does: a finish cancels the acceptance before it */
    struct rec *live[64];
    size_t nlive = 0;
    for (size_t i = 0; i < o2->n; i++) {
        if (o2->v[i].type != FBR_JR_DELIVERY_FINISHED) {
            ck_assert_uint_lt(nlive, 64);
            live[nlive++] = &o2->v[i];
            continue;
        }
        for (size_t k = 0; k < nlive; k++)
            if (live[k]->n == o2->v[i].n && !memcmp(live[k]->data, o2->v[i].data, o2->v[i].n))
                memmove(&live[k], &live[k + 1], (--nlive - k) * sizeof(*live));
    }
    ck_assert_uint_eq(nlive, 21);
    ck_assert_int_eq(memcmp(live[0]->data, "long-lived incident", 19), 0);
    for (size_t i = 1; i < 21; i++) { /* the survivors, in their original order */
        char s[64];
        snprintf(s, sizeof(s), "delivery %03zu", (i - 1) * 10);
        ck_assert_int_eq(memcmp(live[i]->data, s, strlen(s)), 0);
    }
    ck_assert_uint_lt(o2->n, 40); /* not the history: 200 acceptances, 180 finishes */
    fbr_journal_close(&j);
    free(o);
    free(o2);
}
END_TEST

static ino_t file_ino(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_ino : 0;
}

/* Appends records of n bytes nobody keeps, each written at once, until segment seg is the one
 * appended to; *st is the journal's stats then. */
static void fill_until(struct fbr_journal *j, uint32_t seg, const char *rec, size_t n,
                       struct fbr_journal_stats *st)
{
    do {
        fbr_journal_release(j, fbr_journal_append(j, FBR_JR_DELIVERY_ACCEPTED, rec, n));
        ck_assert_int_eq(fbr_journal_flush(j), FBR_OK);
        fbr_journal_get_stats(j, st);
    } while (st->cur_seg < seg);
}

/* A dead segment is not unlinked in one call (that held the loop for milliseconds per 16 MiB):
 * it is renamed NNNNNN.dead; the newest FBR_JOURNAL_SPARES of them are kept for the next rolls
 * to reuse (the file renamed to the new segment's name, same inode), the older ones are cut a
 * step at a time by the loop, then removed; a .dead file left by a crash is removed at the next
 * start and never replayed. */
START_TEST(dead_segments_reused_or_cut_in_steps)
{
    struct owner *o = calloc(1, sizeof(*o));
    char err[512], path[400], dead[400];
    int rc;
    const uint64_t seg = 3u << 20;
    struct fbr_journal *j = open_j(FBR_FSYNC_BATCH, seg, 0, o, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    static char big[100 * 1024];
    memset(big, 'x', sizeof(big));
    struct fbr_journal_stats st;
    fbr_journal_get_stats(j, &st);
    uint32_t first = st.cur_seg;
    /* Four segments filled past their size with records nobody keeps, the loop not run: no
     * fdatasync yet, so none of them may be deleted or reused. */
    fill_until(j, first + 4, big, sizeof(big), &st);
    ck_assert_uint_eq(st.recycled, 0);
    fbr_journal_release(j, fbr_journal_append(j, FBR_JR_NOP, "x", 1));
    ck_assert_int_eq(fbr_journal_flush(j), FBR_OK);
    seg_file(first, path, sizeof(path));
    off_t full = file_size(path);
    ck_assert_int_ge(full, (off_t)seg);
    /* the batch fdatasync makes them deletable; the oldest two are cut, then removed */
    snprintf(dead, sizeof(dead), "%s/journal/%06u.dead", dir, first);
    int saw_dead = 0, saw_cut = 0, gone = 0;
    for (int i = 0; i < 10000 && gone < 2; i++) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        off_t d = file_size(dead);
        if (d >= 0) {
            ck_assert_int_eq(file_exists(first), 0); /* renamed, not copied */
            saw_dead = 1;
            if (d > 0 && d < full)
                saw_cut = 1;
        }
        char second[400];
        snprintf(second, sizeof(second), "%s/journal/%06u.dead", dir, first + 1);
        gone = saw_dead && d < 0 ? 1 + (file_size(second) < 0) : 0;
        usleep(500);
    }
    ck_assert_msg(saw_dead, "the dead segment was never renamed .dead");
    ck_assert_msg(saw_cut, "the dead segment was never seen part-cut");
    ck_assert_msg(gone == 2, "the two oldest .dead files were not both removed");
    ck_assert_int_eq(file_exists(first), 0);
    /* the newest two stay whole, as spares */
    char spare2[400], spare3[400];
    snprintf(spare2, sizeof(spare2), "%s/journal/%06u.dead", dir, first + 2);
    snprintf(spare3, sizeof(spare3), "%s/journal/%06u.dead", dir, first + 3);
    ck_assert_int_ge(file_size(spare2), (off_t)seg);
    ck_assert_int_ge(file_size(spare3), (off_t)seg);
    for (int i = 0; i < 20; i++) { /* cutting stops at the spares */
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        usleep(1000);
    }
    ck_assert_int_ge(file_size(spare2), (off_t)seg);
    ino_t ino3 = file_ino(spare3);
    ck_assert_uint_ne(ino3, 0);
    /* the next roll starts segment first+5 in the newest spare's file: renamed, not created */
    fill_until(j, first + 5, big, sizeof(big), &st);
    ck_assert_uint_eq(st.recycled, 1);
    ck_assert_int_eq(file_size(spare3), -1);
    seg_file(first + 5, path, sizeof(path));
    ck_assert_uint_eq(file_ino(path), ino3);
    ck_assert_int_ge(file_size(path), (off_t)seg); /* the old bytes are still there past the new */
    ck_assert_int_ge(file_size(spare2), (off_t)seg);
    fbr_journal_close(&j);

    /* A crash mid-cut leaves a .dead file, here a whole segment with a record in it: the next
     * start removes it and replays nothing from it. */
    snprintf(dead, sizeof(dead), "%s/journal/%06u.dead", dir, first + 50);
    struct owner *o2 = calloc(1, sizeof(*o2));
    j = open_j(FBR_FSYNC_OFF, seg, 0, o2, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    size_t before = o2->n;
    fbr_journal_close(&j);
    {
        /* a segment holding one good record, renamed as the cutting does */
        struct owner *o3 = calloc(1, sizeof(*o3));
        struct fbr_journal *k = open_j(FBR_FSYNC_OFF, seg, 0, o3, &rc, err, sizeof(err));
        fbr_journal_get_stats(k, &st);
        fbr_journal_release(k, fbr_journal_append(k, FBR_JR_INCIDENT, "ghost", 5));
        ck_assert_int_eq(fbr_journal_flush(k), FBR_OK);
        uint32_t cur = st.cur_seg;
        fbr_journal_close(&k);
        snprintf(path, sizeof(path), "%s/journal/%06u.log", dir, cur);
        ck_assert_int_eq(rename(path, dead), 0);
        free(o3);
    }
    ck_assert_int_gt(file_size(dead), 0);
    struct owner *o4 = calloc(1, sizeof(*o4));
    j = open_j(FBR_FSYNC_OFF, seg, 0, o4, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    ck_assert_int_eq(file_size(dead), -1);
    for (size_t i = 0; i < o4->n; i++)
        ck_assert_msg(o4->v[i].n != 5 || memcmp(o4->v[i].data, "ghost", 5) != 0,
                      "a record of a .dead file was replayed");
    ck_assert_uint_eq(o4->n, before);
    fbr_journal_close(&j);
    free(o);
    free(o2);
    free(o4);
}
END_TEST

/* Small segments (4 KiB), --fsync off (a dead segment is reusable at once): from the third roll
 * on, every segment starts in a dead one's file, whose old records stay past the new ones.  A
 * restart replays exactly what was appended since the last roll and the live records, nothing of
 * the file's earlier use (those records carry another segment's CRC salt), and cuts nothing. */
START_TEST(recycled_segment_replays_only_its_own_records)
{
    struct owner *o = calloc(1, sizeof(*o));
    char err[512], path[400];
    int rc;
    struct fbr_journal *j = open_j(FBR_FSYNC_OFF, 4096, 0, o, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    static char since[64][80]; /* appended since the last roll, in order */
    size_t nsince = 0;
    struct fbr_journal_stats st;
    fbr_journal_get_stats(j, &st);
    uint32_t cur = st.cur_seg;
    for (int i = 0; st.recycled < 4 || nsince < 3; i++) {
        ck_assert_int_lt(i, 10000);
        char rec[80];
        snprintf(rec, sizeof(rec), "filler %05d ..........................................", i);
        fbr_journal_release(j, fbr_journal_append(j, FBR_JR_DELIVERY_ACCEPTED, rec, strlen(rec)));
        ck_assert_uint_lt(nsince, 64);
        memcpy(since[nsince++], rec, sizeof(rec));
        ck_assert_int_eq(fbr_journal_flush(j), FBR_OK);
        fbr_journal_get_stats(j, &st);
        if (st.cur_seg != cur) { /* the roll came after this write: its records stay behind */
            cur = st.cur_seg;
            nsince = 0;
        }
    }
    add(o, FBR_JR_INCIDENT, "live one");
    add(o, FBR_JR_INCIDENT, "live two");
    ck_assert_int_eq(fbr_journal_flush(j), FBR_OK);
    fbr_journal_get_stats(j, &st);
    ck_assert_uint_eq(st.cur_seg, cur);
    ck_assert_uint_eq(st.first_seg, cur); /* the older ones are gone (or spares) */
    fbr_journal_close(&j);
    seg_file(cur, path, sizeof(path));
    off_t size = file_size(path);
    ck_assert_int_ge(size, 4096); /* the file's earlier use is still in it */

    struct owner *o2 = calloc(1, sizeof(*o2));
    j = open_j(FBR_FSYNC_OFF, 4096, 0, o2, &rc, err, sizeof(err));
    ck_assert_msg(rc == FBR_OK, "%s", err);
    ck_assert_uint_eq(o2->n, nsince + 2);
    for (size_t i = 0; i < nsince; i++)
        ck_assert_int_eq(memcmp(o2->v[i].data, since[i], strlen(since[i])), 0);
    ck_assert_int_eq(memcmp(o2->v[nsince].data, "live one", 8), 0);
    ck_assert_int_eq(memcmp(o2->v[nsince + 1].data, "live two", 8), 0);
    ck_assert_uint_eq(fbr_journal_recovery(j)->torn, 0);
    ck_assert_int_eq(file_size(path), size); /* nothing cut */
    fbr_journal_close(&j);
    free(o);
    free(o2);
}
END_TEST

/* Sets the CRC of the record at rec (length, type and payload in place) as a record with no
 * salt has it: a segment header, or any record of a format 1 segment. */
static void seal_unsalted(unsigned char *rec)
{
    uint32_t n = (uint32_t)rec[0] | (uint32_t)rec[1] << 8 | (uint32_t)rec[2] << 16 |
                 (uint32_t)rec[3] << 24;
    uint32_t c = fbr_crc32c(0, rec, 4);
    c = fbr_crc32c(c, rec + 8, 1);
    c = fbr_crc32c(c, rec + FBR_JOURNAL_HEADER, n);
    for (int i = 0; i < 4; i++)
        rec[4 + i] = (unsigned char)(c >> (8 * i));
}

/* A record as a journal without segment headers (format 1, before reuse) wrote it: no salt. */
static size_t v1_record(unsigned char *out, unsigned type, const char *payload)
{
    uint32_t n = (uint32_t)strlen(payload);
    for (int i = 0; i < 4; i++)
        out[i] = (unsigned char)(n >> (8 * i));
    out[8] = (unsigned char)type;
    memcpy(out + FBR_JOURNAL_HEADER, payload, n);
    seal_unsalted(out);
    return FBR_JOURNAL_HEADER + n;
}

/* Segments written before segment headers existed are still read (an upgrade keeps what was
 * pending), their torn tail cut as before; a file whose header names another segment (a spare
 * renamed whose new header never reached the disk) gives nothing; a header of a newer format
 * stops the start. */
START_TEST(segments_without_or_with_a_foreign_header)
{
    char err[512], path[400], jdir[300];
    int rc;
    snprintf(jdir, sizeof(jdir), "%s/journal", dir);
    ck_assert_int_eq(mkdir(jdir, 0700), 0);
    unsigned char buf[512];
    size_t n = v1_record(buf, FBR_JR_DELIVERY_ACCEPTED, "written by format 1");
    n += v1_record(buf + n, FBR_JR_INCIDENT, "its second record");
    memcpy(buf + n, "\x05\x00\x00", 3); /* a torn third */
    seg_file(1, path, sizeof(path));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_eq(write(fd, buf, n + 3), (ssize_t)(n + 3));
    close(fd);
    struct owner *o = calloc(1, sizeof(*o));
    struct fbr_journal *j = open_j(FBR_FSYNC_OFF, 0, 0, o, &rc, err, sizeof(err));
    ck_assert_msg(rc == FBR_OK, "%s", err);
    ck_assert_uint_eq(o->n, 2);
    ck_assert_int_eq(memcmp(o->v[0].data, "written by format 1", 19), 0);
    ck_assert_int_eq(memcmp(o->v[1].data, "its second record", 17), 0);
    ck_assert_uint_eq(fbr_journal_recovery(j)->torn, 1);
    ck_assert_int_eq(file_size(path), (off_t)n);
    add(o, FBR_JR_INCIDENT, "in segment two"); /* a format 2 segment with a header */
    fbr_journal_close(&j);

    /* segment 2's file copied to the name of segment 3: its header says 2 */
    char p2[400], p3[400];
    seg_file(2, p2, sizeof(p2));
    seg_file(3, p3, sizeof(p3));
    fd = open(p2, O_RDONLY);
    ssize_t len = read(fd, buf, sizeof(buf));
    close(fd);
    ck_assert_int_gt(len, FBR_JOURNAL_SEGMENT_HEADER);
    fd = open(p3, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_eq(write(fd, buf, (size_t)len), len);
    close(fd);
    struct owner *o2 = calloc(1, sizeof(*o2));
    j = open_j(FBR_FSYNC_OFF, 0, 0, o2, &rc, err, sizeof(err));
    ck_assert_msg(rc == FBR_OK, "%s", err);
    ck_assert_uint_eq(o2->n, 3); /* two of segment 1, one of segment 2, none of "3" */
    ck_assert_int_eq(memcmp(o2->v[2].data, "in segment two", 14), 0);
    ck_assert_uint_eq(o2->v[2].ref.seg, 2);
    fbr_journal_close(&j);

    /* segment 2's header rewritten as format 3 (its CRC made again): refused, nothing changed */
    fd = open(p2, O_RDWR);
    ck_assert_int_eq(pread(fd, buf, FBR_JOURNAL_SEGMENT_HEADER, 0), FBR_JOURNAL_SEGMENT_HEADER);
    buf[FBR_JOURNAL_HEADER + 4] = 3;
    seal_unsalted(buf);
    ck_assert_int_eq(pwrite(fd, buf, FBR_JOURNAL_SEGMENT_HEADER, 0), FBR_JOURNAL_SEGMENT_HEADER);
    close(fd);
    off_t before = file_size(p2);
    struct owner *o3 = calloc(1, sizeof(*o3));
    j = open_j(FBR_FSYNC_OFF, 0, 0, o3, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_ERROR);
    ck_assert_msg(strstr(err, "newer firebridge") && strstr(err, "format 3"), "%s", err);
    fbr_journal_close(&j);
    ck_assert_int_eq(file_size(p2), before);
    free(o);
    free(o2);
    free(o3);
}
END_TEST

static int done_ok, done_err;

static void on_done(void *arg, int status)
{
    if (status == FBR_OK)
        done_ok++;
    else
        done_err++;
    *(int *)arg += 1;
}

static void run_until(int *counter, int target)
{
    for (int i = 0; i < 2000 && *counter < target; i++)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
}

/* Each mode's commit: the callback never runs inside fbr_journal_wait(), then runs with FBR_OK;
 * one write carries every record appended in the iteration; always counts fdatasyncs. */
START_TEST(commit_per_fsync_mode)
{
    static const enum fbr_fsync_mode modes[] = {FBR_FSYNC_OFF, FBR_FSYNC_BATCH, FBR_FSYNC_ALWAYS};
    for (size_t m = 0; m < 3; m++) {
        dutil_rm_rf(dir);
        ck_assert_int_eq(mkdir(dir, 0700), 0);
        struct owner *o = calloc(1, sizeof(*o));
        char err[512];
        int rc, calls = 0;
        struct fbr_journal *j = open_j(modes[m], 0, 0, o, &rc, err, sizeof(err));
        ck_assert_int_eq(rc, FBR_OK);
        run_until(&calls, 1); /* let the recovery's sync finish */
        done_ok = done_err = 0;
        struct fbr_journal_stats st0, st;
        fbr_journal_get_stats(j, &st0);
        for (int i = 0; i < 50; i++) {
            add(o, FBR_JR_DELIVERY_ACCEPTED, "one alert's delivery");
            fbr_journal_wait(j, fbr_journal_position(j), on_done, &calls);
        }
        ck_assert_int_eq(calls, 0);
        run_until(&calls, 50);
        ck_assert_int_eq(done_ok, 50);
        ck_assert_int_eq(done_err, 0);
        fbr_journal_get_stats(j, &st);
        ck_assert_uint_eq(st.writes - st0.writes, 1); /* group commit: one write */
        if (modes[m] == FBR_FSYNC_ALWAYS)
            ck_assert_uint_ge(st.fsyncs - st0.fsyncs, 1);
        if (modes[m] == FBR_FSYNC_OFF)
            ck_assert_uint_eq(st.fsyncs, 0);
        /* batch: the interval timer syncs what was written */
        if (modes[m] == FBR_FSYNC_BATCH) {
            for (int i = 0; i < 200 && st.fsyncs == st0.fsyncs; i++) {
                event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
                usleep(1000);
                fbr_journal_get_stats(j, &st);
            }
            ck_assert_uint_gt(st.fsyncs, st0.fsyncs);
        }
        /* nothing appended: still answered, later */
        calls = 0;
        fbr_journal_wait(j, fbr_journal_position(j), on_done, &calls);
        ck_assert_int_eq(calls, 0);
        run_until(&calls, 1);
        ck_assert_int_eq(calls, 1);
        fbr_journal_close(&j);
        free(o);
    }
}
END_TEST

/* A lazy record (a delivery's "delivered" outcome) gets no write of its own: it goes out with the
 * next record appended at once, in that record's write, or on its own within the lazy window
 * when nothing follows; recovery reads it back in order either way. */
START_TEST(lazy_record_rides_the_next_write)
{
    struct owner *o = calloc(1, sizeof(*o));
    char err[512];
    int rc, calls = 0;
    struct fbr_journal *j = open_j(FBR_FSYNC_BATCH, 0, 0, o, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    run_until(&calls, 1);
    struct fbr_journal_stats st0, st;
    fbr_journal_get_stats(j, &st0);
    fbr_journal_release(j, fbr_journal_append_lazy(j, FBR_JR_DELIVERY_FINISHED, "lazy one", 8));
    uint64_t lazy_end = fbr_journal_position(j);
    for (int i = 0; i < 3; i++) /* iterations that write nothing else: it waits */
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    fbr_journal_get_stats(j, &st);
    ck_assert_uint_eq(st.writes, st0.writes);
    ck_assert_uint_lt(fbr_journal_committed(j), lazy_end);
    add(o, FBR_JR_DELIVERY_ACCEPTED, "eager after it");
    calls = 0;
    fbr_journal_wait(j, fbr_journal_position(j), on_done, &calls);
    run_until(&calls, 1);
    fbr_journal_get_stats(j, &st);
    ck_assert_uint_eq(st.writes - st0.writes, 1); /* both records, one write */
    ck_assert_uint_eq(fbr_journal_committed(j), fbr_journal_position(j));
    /* alone: written by the lazy timer, without any other append */
    fbr_journal_release(j, fbr_journal_append_lazy(j, FBR_JR_DELIVERY_FINISHED, "lazy two", 8));
    for (int i = 0; i < 2000 && fbr_journal_committed(j) < fbr_journal_position(j); i++)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
    ck_assert_uint_eq(fbr_journal_committed(j), fbr_journal_position(j));
    fbr_journal_get_stats(j, &st);
    ck_assert_uint_eq(st.writes - st0.writes, 2);
    fbr_journal_close(&j);
    j = open_j(FBR_FSYNC_BATCH, 0, 0, o, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    ck_assert_uint_eq(o->n, 3);
    ck_assert(o->v[0].n == 8 && memcmp(o->v[0].data, "lazy one", 8) == 0);
    ck_assert(o->v[1].n == 14 && memcmp(o->v[1].data, "eager after it", 14) == 0);
    ck_assert(o->v[2].n == 8 && memcmp(o->v[2].data, "lazy two", 8) == 0);
    fbr_journal_close(&j);
    free(o);
}
END_TEST

/* A write past RLIMIT_FSIZE fails with EFBIG: the waiting caller gets FBR_ERROR, the journal says
 * it is not writable, then it recovers by itself on a fresh segment and loses no record. */
START_TEST(failed_write_recovers_by_itself)
{
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    struct owner *o = calloc(1, sizeof(*o));
    char err[512];
    int rc, calls = 0;
    struct fbr_journal *j = open_j(FBR_FSYNC_ALWAYS, 0, 0, o, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    char big[100];
    memset(big, 'b', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    lim = old;
    lim.rlim_cur = 1000;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int refused = 0;
    for (int i = 0; i < 30 && !refused; i++) {
        add(o, FBR_JR_DELIVERY_ACCEPTED, big);
        done_ok = done_err = calls = 0;
        fbr_journal_wait(j, fbr_journal_position(j), on_done, &calls);
        run_until(&calls, 1);
        ck_assert_int_eq(calls, 1);
        refused = done_err;
    }
    ck_assert_int_eq(refused, 1);
    ck_assert_int_eq(fbr_journal_writable(j), 0);
    ck_assert_ptr_nonnull(strstr(fbr_journal_trouble(j), "File too large"));
    /* the retry timer rolls to a fresh segment, where the buffered record fits */
    for (int i = 0; i < 2000 && !fbr_journal_writable(j); i++) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        usleep(1000);
    }
    ck_assert_int_eq(fbr_journal_writable(j), 1);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    size_t appended = o->n;
    struct fbr_journal_stats st;
    fbr_journal_get_stats(j, &st);
    ck_assert_uint_ge(st.write_errors, 1);
    fbr_journal_close(&j);
    struct owner *o2 = calloc(1, sizeof(*o2));
    j = open_j(FBR_FSYNC_OFF, 0, 0, o2, &rc, err, sizeof(err));
    ck_assert_int_eq(rc, FBR_OK);
    ck_assert_uint_eq(o2->n, appended); /* the refused one too: it was kept and written later */
    ck_assert_uint_eq(fbr_journal_recovery(j)->torn, 0);
    fbr_journal_close(&j);
    free(o);
    free(o2);
}
END_TEST

/* A dead segment without a header (format 1, from before an upgrade) is never a spare: renamed
 * to a new segment's name, its unsalted records would be that segment's own until the new header
 * is written over them.  Here that header write fails (RLIMIT_FSIZE 0, as a failed disk would):
 * the next start must replay the live record only, not the dead format 1 ones (it replayed both
 * under segment 3's name when the file was reused). */
START_TEST(format1_segment_file_never_reused)
{
    char err[512], path[400], dead[400], jdir[300];
    int rc, calls = 0;
    snprintf(jdir, sizeof(jdir), "%s/journal", dir);
    ck_assert_int_eq(mkdir(jdir, 0700), 0);
    unsigned char buf[512];
    size_t n = v1_record(buf, FBR_JR_DELIVERY_ACCEPTED, "old delivery");
    n += v1_record(buf + n, FBR_JR_INCIDENT, "old incident");
    seg_file(1, path, sizeof(path));
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ck_assert_int_eq(write(fd, buf, n), (ssize_t)n);
    close(fd);
    struct owner *o = calloc(1, sizeof(*o));
    struct fbr_journal *j = open_j(FBR_FSYNC_OFF, 4096, 0, o, &rc, err, sizeof(err));
    ck_assert_msg(rc == FBR_OK, "%s", err);
    ck_assert_uint_eq(o->n, 2);
    for (size_t i = 0; i < o->n; i++) { /* both finished: segment 1 dies */
        fbr_journal_release(j, o->v[i].ref);
        o->v[i].live = 0;
    }
    add(o, FBR_JR_INCIDENT, "live");
    ck_assert_int_eq(fbr_journal_flush(j), FBR_OK);
    ck_assert_int_eq(file_exists(1), 0);
    /* not kept as a spare: cut and removed (--fsync off: at once) */
    snprintf(dead, sizeof(dead), "%s/000001.dead", jdir);
    for (int i = 0; i < 200 && file_size(dead) >= 0; i++)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
    ck_assert_int_eq(file_size(dead), -1);
    /* every write fails from now: the retry's roll to segment 3 cannot write its header */
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 0;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    fbr_journal_release(j, fbr_journal_append(j, FBR_JR_NOP, "x", 1));
    fbr_journal_wait(j, fbr_journal_position(j), on_done, &calls);
    run_until(&calls, 1);
    for (int i = 0; i < 600; i++) /* two retries at least */
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
    ck_assert_int_eq(fbr_journal_writable(j), 0);
    struct fbr_journal_stats st;
    fbr_journal_get_stats(j, &st);
    ck_assert_uint_eq(st.recycled, 0);
    fbr_journal_close(&j);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    struct owner *o2 = calloc(1, sizeof(*o2));
    j = open_j(FBR_FSYNC_OFF, 4096, 0, o2, &rc, err, sizeof(err));
    ck_assert_msg(rc == FBR_OK, "%s", err);
    for (size_t i = 0; i < o2->n; i++)
        ck_assert_msg(memcmp(o2->v[i].data, "old ", 4) != 0, "dead record \"%.*s\" replayed",
                      (int)o2->v[i].n, o2->v[i].data);
    ck_assert_uint_eq(o2->n, 1);
    ck_assert_int_eq(memcmp(o2->v[0].data, "live", 4), 0);
    fbr_journal_close(&j);
    free(o);
    free(o2);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("journal");
    TCase *tc = tcase_create("journal");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, crc32c_known_values);
    tcase_add_test(tc, crc32c_hardware_matches_table);
    tcase_add_test(tc, records_come_back_in_order);
    tcase_add_test(tc, torn_tail_at_every_offset);
    tcase_add_test(tc, corruption_in_the_middle_stops_unless_repair);
    tcase_add_test(tc, damaged_header_is_corruption_not_a_torn_tail);
    tcase_add_test(tc, roll_delete_and_checkpoint);
    tcase_add_test(tc, dead_segments_reused_or_cut_in_steps);
    tcase_add_test(tc, recycled_segment_replays_only_its_own_records);
    tcase_add_test(tc, segments_without_or_with_a_foreign_header);
    tcase_add_test(tc, commit_per_fsync_mode);
    tcase_add_test(tc, lazy_record_rides_the_next_write);
    tcase_add_test(tc, failed_write_recovers_by_itself);
    tcase_add_test(tc, format1_segment_file_never_reused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return fbr_test_run(suite());
}
