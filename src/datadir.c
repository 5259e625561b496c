/*
 * datadir.c - the data directory: made when missing (mkdir -p, mode 0700) and held by one process
 * at a time through an exclusive, non-blocking flock(2) on DATA_DIR/lock that stays taken until
 * the process ends.  Two daemons on one directory would both write journal segment 000001.log
 * (opened with O_TRUNC at start) and the alerts answered 200 by one would be lost under the
 * other's writes; the second one now refuses to start.  flock rather than fcntl(F_SETLK): its lock
 * belongs to the open file, so it conflicts within one process too (a test can take it) and is
 * not dropped when some other descriptor of the same file is closed.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "firebridge/common.h"
#include "firebridge/datadir.h"

struct fbr_datadir {
    int lock_fd; /* holds the flock; never closed before fbr_datadir_close() */
};

/* mkdir -p: returns 0 or -1 with errno set. */
static int make_dirs(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* The holder's pid as its lock file gives it (digits only), or 0. */
static long holder_pid(int fd)
{
    char buf[32];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *end;
    errno = 0;
    long pid = strtol(buf, &end, 10);
    if (errno || end == buf || (*end != '\n' && *end != '\0') || pid <= 0)
        return 0;
    return pid;
}

int fbr_datadir_open(const char *dir, struct fbr_datadir **out, char *err, size_t errlen)
{
    *out = NULL;
    if (make_dirs(dir) != 0) {
        snprintf(err, errlen, "cannot create the data directory %s: %s", dir, strerror(errno));
        return FBR_ERROR;
    }
    char path[4096];
    if (snprintf(path, sizeof(path), "%s/%s", dir, FBR_DATADIR_LOCK_FILE) >= (int)sizeof(path)) {
        snprintf(err, errlen, "data directory path too long: %.200s...", dir);
        return FBR_ERROR;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open the lock file %s of the data directory: %s", path,
                 strerror(errno));
        return FBR_ERROR;
    }
    int r;
    while ((r = flock(fd, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR)
        ;
    if (r != 0) {
        int e = errno;
        long pid = e == EWOULDBLOCK ? holder_pid(fd) : 0;
        close(fd);
        char holder[32] = "it";
        if (pid)
            snprintf(holder, sizeof(holder), "pid %ld", pid);
        if (e != EWOULDBLOCK)
            snprintf(err, errlen, "cannot lock the data directory %s (%s): %s", dir, path,
                     strerror(e));
        else
            snprintf(err, errlen,
                     "data directory %s is in use by another firebridge (%s holds %s); each "
                     "instance needs its own --data-dir",
                     dir, holder, path);
        return FBR_ERROR;
    }
    /* Ours now: the pid is only for the message above, a failure to write it changes nothing. */
    char pid[32];
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)n, 0) != n) {
        /* the lock holds without it */
    }
    struct fbr_datadir *d = fbr_xcalloc(1, sizeof(*d));
    d->lock_fd = fd;
    *out = d;
    return FBR_OK;
}

void fbr_datadir_close(struct fbr_datadir **d)
{
    if (!d || !*d)
        return;
    close((*d)->lock_fd); /* drops the flock */
    free(*d);
    *d = NULL;
}
