/*
 * rawread.h - reading a plain-socket bufferevent without libevent's extra system call.  libevent
 * 2.1 asks the kernel how many bytes are queued (ioctl FIONREAD) before every read of a socket
 * bufferevent: one more system call per request or response on every connection.  Started on a
 * bufferevent, this puts its own callback in the bufferevent's read event: one read() of at
 * most FBR_RAWREAD_CHUNK bytes into the input, then the bufferevent's read callback as libevent
 * would run it (deferred when the bufferevent defers its callbacks).  Everything that is not the
 * plain case goes to libevent's own callback, which knows it: a timeout, an input within a chunk
 * of the read watermark (where libevent suspends reading), no memory.  End of file and errors are
 * reported as libevent reports them: reading turned off, then the event callback with
 * BEV_EVENT_READING and BEV_EVENT_EOF or BEV_EVENT_ERROR (errno 0 at end of file).
 *
 * Users: the inbound server (server.c, libevhtp's connections), the load generator's sink (also
 * libevhtp) and its sender.  The outbound client (client.c) reads with an event of its own, so
 * that a response is parsed in the loop turn its bytes arrive in, but through the same read
 * (fbr_rawread_into).
 */
#ifndef FIREBRIDGE_RAWREAD_H
#define FIREBRIDGE_RAWREAD_H

#include <event2/util.h> /* evutil_socket_t */
#include <sys/types.h>   /* ssize_t */

struct bufferevent;
struct evbuffer;

/* Room asked of the input per read (libevent's own size); read() is offered all the room the
 * input then gives, at least this. */
#define FBR_RAWREAD_CHUNK 4096

/*
 * Takes over the read event of bev (borrowed), a socket bufferevent libevent made (no filter, no
 * TLS), pending as it was, with the bufferevent's read timeout.  Returns 0, or -1 when bev's read
 * event is not libevent's own socket callback (left as it is: a filter or a TLS bufferevent).
 * Calling it again on the same bufferevent does nothing.
 */
int fbr_rawread_start(struct bufferevent *bev);

/*
 * One read() from fd straight into the end of in (borrowed; offered the room the buffer gives
 * when asked for FBR_RAWREAD_CHUNK bytes, which may be more;
 * its end must not be frozen: a socket bufferevent's input is, outside libevent's own reads).
 * Returns the bytes read (> 0), 0 at end of file, -1 when read() failed (errno as read() left
 * it: EAGAIN or EWOULDBLOCK when nothing was there), or -2, having read nothing, when in could
 * not give the space (no memory, or its end frozen).
 */
ssize_t fbr_rawread_into(evutil_socket_t fd, struct evbuffer *in);

#endif
