/*
 * fuzz_room_message.c - libFuzzer target for the HipChat add-on's reading of a room_message
 * webhook body (addon.c, fbr_room_message_parse: the room, the sender, the text and the
 * /ack /resolve /incidents /help commands) together with the JWT check that guards it (the
 * body's oauth_client_id must equal the token's iss).  The input is the body; it is also signed
 * as claims, so both the refusal and the accepted path run on every input.  Aborts when a
 * promise breaks: a person's message without a user, a text longer than FBR_ROOM_TEXT_MAX or
 * than the string, a command that does not start with its word, a note outside the text.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "firebridge/addon.h"
#include "firebridge/jwt.h"

static int lookup(void *arg, struct fbr_slice iss, struct fbr_slice *secret)
{
    (void)arg, (void)iss;
    *secret = FBR_SLICE("fuzz-secret");
    return FBR_OK;
}

static void check(json_t *body)
{
    struct fbr_room_message m;
    fbr_room_message_parse(body, &m);
    if (!m.from_person) {
        if (m.text || m.cmd != FBR_ROOM_CHAT)
            abort();
        return;
    }
    if (!m.user || !m.text || !m.note)
        abort();
    size_t n = strlen(m.text);
    if (m.text_len > n || m.text_len > FBR_ROOM_TEXT_MAX || (m.text[0] == ' '))
        abort();
    static const char *const words[] = {NULL,    "/ack", "/resolve", "/incidents",
                                        "/help", "/ack", "/resolve"};
    if (m.cmd != FBR_ROOM_CHAT && strncasecmp(m.text, words[m.cmd], strlen(words[m.cmd])) != 0)
        abort();
    if ((m.cmd == FBR_ROOM_ACK || m.cmd == FBR_ROOM_RESOLVE) &&
        (m.note < m.text || m.note > m.text + n))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *body = json_loadb((const char *)data, size, 0, NULL);
    check(body);
    if (json_is_object(body)) {
        json_t *claims = json_pack("{s:s, s:I, s:I}", "iss", "oid", "iat", (json_int_t)1700000000,
                                   "exp", (json_int_t)1700000300);
        char *tok = fbr_jwt_sign(claims, FBR_SLICE("fuzz-secret"), NULL);
        char *auth = malloc(strlen(tok) + 5);
        memcpy(auth, "JWT ", 4);
        memcpy(auth + 4, tok, strlen(tok) + 1);
        struct fbr_jwt_claims c;
        enum fbr_jwt_err rc =
            fbr_jwt_verify_request(FBR_SLICE(""), auth, body, lookup, NULL, 1700000010, &c);
        json_t *cid = json_object_get(body, "oauth_client_id");
        int cid_ok = !cid || (json_is_string(cid) && strcmp(json_string_value(cid), "oid") == 0 &&
                              json_string_length(cid) == 3);
        if ((rc == FBR_JWT_OK) != cid_ok)
            abort();
        fbr_jwt_claims_clear(&c);
        free(auth);
        free(tok);
        json_decref(claims);
    }
    json_decref(body);
    return 0;
}
