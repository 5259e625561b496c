/*
 * rawread.c - one read() per readiness into a socket bufferevent's input, in place of libevent's
 * read callback, which asks the kernel for the queued byte count (ioctl FIONREAD) before every
 * read (see rawread.h).  Used under the inbound server, the load generator's sink and sender;
 * its one read into an evbuffer (fbr_rawread_into) is also the outbound client's.
 */
#include "firebridge/rawread.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_struct.h> /* ev_read, timeout_read */
#include <event2/event.h>
#include <unistd.h>

/* libevent's own read callback of socket bufferevents (one function for all of them), taken
 * from the first bufferevent started; what is not the plain case goes back to it. */
static event_callback_fn libevent_readcb;

static void raw_read(evutil_socket_t fd, short what, void *arg)
{
    struct bufferevent *bev = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t low, high = 0;
    bufferevent_getwatermark(bev, EV_READ, &low, &high);
    if (what != EV_READ || (high && evbuffer_get_length(in) + FBR_RAWREAD_CHUNK > high)) {
        libevent_readcb(fd, what, arg);
        return;
    }
    evbuffer_unfreeze(in, 0); /* libevent keeps a socket bufferevent's input frozen at its end */
    ssize_t n = fbr_rawread_into(fd, in);
    int err = errno;
    evbuffer_freeze(in, 0);
    if (n > 0) {
        bufferevent_trigger(bev, EV_READ, 0);
    } else if (n == -2) {
        libevent_readcb(fd, what, arg);
    } else if (n == 0 || (err != EAGAIN && err != EWOULDBLOCK && err != EINTR)) {
        /* read() leaves errno alone at end of file: a stale EAGAIN would make a reader such as
         * libevhtp take the end of file for a spurious wake-up */
        errno = n == 0 ? 0 : err;
        bufferevent_disable(bev, EV_READ);
        bufferevent_trigger_event(
            bev, BEV_EVENT_READING | (n == 0 ? BEV_EVENT_EOF : BEV_EVENT_ERROR), 0);
    }
}

ssize_t fbr_rawread_into(evutil_socket_t fd, struct evbuffer *in)
{
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(in, FBR_RAWREAD_CHUNK, &v, 1) != 1)
        return -2;
    ssize_t n = read(fd, v.iov_base, v.iov_len);
    if (n > 0) {
        v.iov_len = (size_t)n;
        evbuffer_commit_space(in, &v, 1);
    }
    return n;
}

int fbr_rawread_start(struct bufferevent *bev)
{
    if (!bev || bufferevent_get_underlying(bev))
        return -1;
    struct event *ev = &bev->ev_read;
    event_callback_fn cb = event_get_callback(ev);
    if (cb == raw_read)
        return 0;
    if (event_get_callback_arg(ev) != bev || (libevent_readcb && cb != libevent_readcb))
        return -1; /* not a socket bufferevent as libevent made it: left as it is */
    libevent_readcb = cb;
    int pending = event_pending(ev, EV_READ, NULL);
    event_del(ev);
    event_assign(ev, event_get_base(ev), event_get_fd(ev), event_get_events(ev), raw_read, bev);
    if (pending)
        event_add(ev, evutil_timerisset(&bev->timeout_read) ? &bev->timeout_read : NULL);
    return 0;
}
