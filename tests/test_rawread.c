/*
 * test_rawread.c - the FIONREAD-free read (src/rawread.c) that the inbound server, the load
 * generator and the outbound client share: fbr_rawread_into()'s one read of the room a chunk gets
 * and its four outcomes on a real socket pair, and fbr_rawread_start() on real socket bufferevents
 * (the read callback with the bytes, end of file reported as libevent reports it, a second start
 * doing nothing, a filter bufferevent left alone).
 */
#include <check.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "firebridge/rawread.h"
#include "testsupport.h"

static void nonblocking_pair(int sv[2])
{
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(fcntl(sv[i], F_SETFL, fcntl(sv[i], F_GETFL) | O_NONBLOCK), 0);
}

START_TEST(into_reads_into_the_room_it_gets)
{
    int sv[2];
    nonblocking_pair(sv);
    static char out[FBR_RAWREAD_CHUNK * 8 + 100];
    for (size_t i = 0; i < sizeof(out); i++)
        out[i] = (char)('a' + i % 26);
    ck_assert_int_eq(write(sv[1], out, sizeof(out)), (ssize_t)sizeof(out));
    struct evbuffer *in = evbuffer_new();
    /* one read() per call, of at least a chunk while the socket has that much */
    ssize_t n = fbr_rawread_into(sv[0], in);
    ck_assert_int_ge(n, FBR_RAWREAD_CHUNK);
    ck_assert_int_lt(n, (ssize_t)sizeof(out));
    ck_assert_uint_eq(evbuffer_get_length(in), (size_t)n);
    size_t total = (size_t)n;
    int calls = 1;
    while (total < sizeof(out)) {
        n = fbr_rawread_into(sv[0], in);
        ck_assert_int_gt(n, 0);
        total += (size_t)n;
        calls++;
    }
    ck_assert_int_le(calls, 8);
    ck_assert_uint_eq(evbuffer_get_length(in), sizeof(out)); /* appended, in order, whole */
    ck_assert_int_eq(memcmp(evbuffer_pullup(in, -1), out, sizeof(out)), 0);
    /* nothing there: -1 with read()'s errno, the buffer unchanged */
    errno = 0;
    ck_assert_int_eq(fbr_rawread_into(sv[0], in), -1);
    ck_assert(errno == EAGAIN || errno == EWOULDBLOCK);
    ck_assert_uint_eq(evbuffer_get_length(in), sizeof(out));
    /* the peer closes: 0 */
    close(sv[1]);
    ck_assert_int_eq(fbr_rawread_into(sv[0], in), 0);
    evbuffer_free(in);
    close(sv[0]);
}
END_TEST

START_TEST(into_frozen_buffer_reads_nothing)
{
    int sv[2];
    nonblocking_pair(sv);
    ck_assert_int_eq(write(sv[1], "hello", 5), 5);
    struct evbuffer *in = evbuffer_new();
    evbuffer_freeze(in, 0); /* as a socket bufferevent's input is between libevent's reads */
    ck_assert_int_eq(fbr_rawread_into(sv[0], in), -2);
    ck_assert_uint_eq(evbuffer_get_length(in), 0);
    evbuffer_unfreeze(in, 0);
    ck_assert_int_eq(fbr_rawread_into(sv[0], in), 5); /* the bytes waited in the socket */
    evbuffer_free(in);
    close(sv[0]);
    close(sv[1]);
}
END_TEST

struct seen {
    struct event_base *base;
    size_t bytes;
    short events;
    int err;
};

static void on_read(struct bufferevent *bev, void *arg)
{
    struct seen *s = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    s->bytes += evbuffer_get_length(in);
    evbuffer_drain(in, evbuffer_get_length(in));
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
    struct seen *s = arg;
    (void)bev;
    s->events = what;
    s->err = errno;
    event_base_loopbreak(s->base);
}

START_TEST(start_reads_then_reports_eof)
{
    int sv[2];
    nonblocking_pair(sv);
    struct event_base *base = event_base_new();
    struct seen s = {.base = base};
    struct bufferevent *bev = bufferevent_socket_new(base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(bev, on_read, NULL, on_event, &s);
    bufferevent_enable(bev, EV_READ);
    ck_assert_int_eq(fbr_rawread_start(bev), 0);
    ck_assert_int_eq(fbr_rawread_start(bev), 0); /* again: nothing changes */
    static char out[10000];
    memset(out, 'y', sizeof(out));
    ck_assert_int_eq(write(sv[1], out, sizeof(out)), (ssize_t)sizeof(out));
    close(sv[1]);
    errno = EAGAIN; /* a stale value must not reach the event callback */
    event_base_dispatch(base);
    ck_assert_uint_eq(s.bytes, sizeof(out));
    ck_assert_int_eq(s.events, BEV_EVENT_READING | BEV_EVENT_EOF);
    ck_assert_int_eq(s.err, 0);
    bufferevent_free(bev);
    event_base_free(base);
}
END_TEST

START_TEST(start_leaves_a_filter_alone)
{
    int sv[2];
    nonblocking_pair(sv);
    struct event_base *base = event_base_new();
    struct bufferevent *bev = bufferevent_socket_new(base, sv[0], BEV_OPT_CLOSE_ON_FREE);
    struct bufferevent *f =
        bufferevent_filter_new(bev, NULL, NULL, BEV_OPT_CLOSE_ON_FREE, NULL, NULL);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fbr_rawread_start(f), -1);
    ck_assert_int_eq(fbr_rawread_start(NULL), -1);
    bufferevent_free(f);
    event_base_free(base);
    close(sv[1]);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("rawread");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, into_reads_into_the_room_it_gets);
    tcase_add_test(tc, into_frozen_buffer_reads_nothing);
    tcase_add_test(tc, start_reads_then_reports_eof);
    tcase_add_test(tc, start_leaves_a_filter_alone);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
