/*
 * datadir.h - the data directory (--data-dir) as one daemon's own: created when missing (with
 * its parents, mode 0700) and locked for the life of the process, so that no second firebridge
 * writes the journal, the dead-letter file or the add-on store beside it.  The lock is an
 * exclusive flock(2) on DATA_DIR/lock, taken without waiting, with the holder's pid written into
 * the file for the message a second instance prints; the kernel drops it when the process ends,
 * kill -9 included, so a stale file never keeps a restart out.  The modules that keep files in
 * the directory (journal.c, deadletter.c through delivery.c, addon_store.c, incidents.c's
 * migration) assume it is held and take no lock of their own.
 *
 * Ownership: fbr_datadir_open() returns a new object the caller frees with fbr_datadir_close(),
 * which releases the lock and sets the caller's pointer to NULL; `dir` is borrowed for the call.
 */
#ifndef FIREBRIDGE_DATADIR_H
#define FIREBRIDGE_DATADIR_H

#include <stddef.h>

struct fbr_datadir;

/* The lock file's name inside the data directory. */
#define FBR_DATADIR_LOCK_FILE "lock"

/*
 * Creates dir when missing and takes its lock.  Returns FBR_OK with *out set, or FBR_ERROR with
 * one line in err: another process holds the lock (the line names the directory and, when the
 * lock file says, the holder's pid), or the directory cannot be created or the lock file opened.
 * Nothing else in the directory is read or written here.
 */
int fbr_datadir_open(const char *dir, struct fbr_datadir **out, char *err, size_t errlen);

/* Releases the lock (the file stays) and frees *d; sets *d to NULL.  NULL or *d NULL is a no-op. */
void fbr_datadir_close(struct fbr_datadir **d);

#endif
