/*
 * store.c - hipchat-server's rooms and what it keeps of them: each room reachable by id and by
 * name, its configured tokens, and the messages accepted into it (bounded by count and bytes
 * over all rooms, the oldest dropped first), printed on stdout and served back to the tests by
 * GET /rooms/{id}/messages.
 */
#include <stdlib.h>
#include <string.h>

#include "hcs.h"

struct hcs_room *hcs_room_find(const struct hcs *s, const char *key)
{
    return fbr_strmap_get(&s->rooms, key, strlen(key));
}

struct hcs_room *hcs_room_add(struct hcs *s, const char *id, const char *name)
{
    struct hcs_room *r = hcs_room_find(s, id);
    if (r)
        return r;
    r = fbr_xcalloc(1, sizeof(*r));
    r->id = fbr_xstrdup(id);
    fbr_strmap_put(&s->rooms, id, strlen(id), r);
    if (name && *name && strcmp(name, id) != 0 && !hcs_room_find(s, name)) {
        r->name = fbr_xstrdup(name);
        fbr_strmap_put(&s->rooms, name, strlen(name), r);
    }
    s->room_list = fbr_xrealloc(s->room_list, (s->nrooms + 1) * sizeof(*s->room_list));
    s->room_list[s->nrooms++] = r;
    return r;
}

void hcs_room_add_token(struct hcs *s, struct hcs_room *r, const char *token)
{
    r->tokens = fbr_xrealloc(r->tokens, (r->ntokens + 1) * sizeof(*r->tokens));
    r->tokens[r->ntokens++] = fbr_xstrdup(token);
    hcs_token_get(s, token, 1)->configured = 1;
}

int hcs_room_has_token(const struct hcs_room *r, const char *token)
{
    for (size_t i = 0; i < r->ntokens; i++) {
        if (strcmp(r->tokens[i], token) == 0)
            return 1;
    }
    return 0;
}

static void message_free(struct hcs_message *m)
{
    free(m->json);
    free(m);
}

/* Drops the globally oldest message, which is necessarily the head of its own room's FIFO. */
static void drop_oldest(struct hcs *s)
{
    struct hcs_message *m = s->oldest;
    if (!m)
        return;
    s->oldest = m->global_next;
    if (!s->oldest)
        s->newest = NULL;
    struct hcs_room *r = m->room;
    r->head = m->room_next;
    if (!r->head)
        r->tail = NULL;
    r->nmessages--;
    s->nmessages--;
    s->stored_bytes -= m->size;
    s->stats.messages_dropped++;
    message_free(m);
}

void hcs_store_record(struct hcs *s, struct hcs_room *r, json_t *rec)
{
    char *line = json_dumps(rec, JSON_COMPACT);
    json_decref(rec);
    size_t size = strlen(line);
    if (!s->quiet) {
        fputs(line, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    struct hcs_message *m = fbr_xcalloc(1, sizeof(*m));
    m->room = r;
    m->size = size;
    s->stored_bytes += size;
    m->seq = ++s->next_seq;
    m->json = line;
    if (r->tail)
        r->tail->room_next = m;
    else
        r->head = m;
    r->tail = m;
    r->nmessages++;
    if (s->newest)
        s->newest->global_next = m;
    else
        s->oldest = m;
    s->newest = m;
    s->nmessages++;
    while (s->nmessages > s->max_messages || s->stored_bytes > s->max_stored_bytes)
        drop_oldest(s);
}

void hcs_store_room_json(const struct hcs_room *r, uint64_t since, struct evbuffer *out)
{
    /* Spliced from the stored JSON texts: no tree is rebuilt for 100,000 messages. */
    const char *sep = "";
    evbuffer_add(out, "[", 1);
    for (struct hcs_message *msg = r->head; msg; msg = msg->room_next) {
        if (msg->seq <= since)
            continue;
        evbuffer_add(out, sep, strlen(sep));
        evbuffer_add(out, msg->json, msg->size);
        sep = ",";
    }
    evbuffer_add(out, "]", 1);
}

json_t *hcs_rooms_json(const struct hcs *s)
{
    json_t *a = json_array();
    for (size_t i = 0; i < s->nrooms; i++) {
        struct hcs_room *r = s->room_list[i];
        json_array_append_new(a, json_pack("{s:s,s:o,s:I}", "id", r->id, "name",
                                           r->name ? json_string(r->name) : json_null(), "messages",
                                           (json_int_t)r->nmessages));
    }
    return a;
}

void hcs_store_clear(struct hcs *s)
{
    while (s->oldest)
        drop_oldest(s);
    s->stats.messages_dropped = 0;
}

void hcs_rooms_free(struct hcs *s)
{
    hcs_store_clear(s);
    for (size_t i = 0; i < s->nrooms; i++) {
        struct hcs_room *r = s->room_list[i];
        for (size_t k = 0; k < r->ntokens; k++)
            free(r->tokens[k]);
        free(r->tokens);
        free(r->id);
        free(r->name);
        free(r);
    }
    free(s->room_list);
    s->room_list = NULL;
    s->nrooms = 0;
    fbr_strmap_clear(&s->rooms);
}
