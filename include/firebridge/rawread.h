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
 * libevhtp) and its sender.  The outbound client (client.c) reads with an event of its own.
 */
#ifndef FIREBRIDGE_RAWREAD_H
#define FIREBRIDGE_RAWREAD_H

struct bufferevent;

/* Bytes asked of the socket per read (libevent's own size). */
#define FBR_RAWREAD_CHUNK 4096

/*
 * Takes over the read event of bev (borrowed), a socket bufferevent libevent made (no filter, no
 * TLS), pending as it was, with the bufferevent's read timeout.  Returns 0, or -1 when bev's read
 * event is not libevent's own socket callback (left as it is: a filter or a TLS bufferevent).
 * Calling it again on the same bufferevent does nothing.
 */
int fbr_rawread_start(struct bufferevent *bev);

#endif
