/*
 * jwt.c - what hipchat-server signs and decodes for the Connect add-on flow: JWTs for
 * room_message webhooks (HS256 keyed with the installation's oauthSecret, hipchat-api.md
 * section 5; other algorithms only on request, to test that add-ons refuse them), base64url,
 * base64 for the token endpoint's Basic credentials, and random credentials and ids.  Written
 * here with OpenSSL, independent of firebridge's verifier, so that one cannot hide the other's
 * bug.
 */
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hcs.h"

static const char b64url_chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Appends base64url (no padding) of in[0..n) to out at *pos; out has room (caller sized it). */
static void b64url(const unsigned char *in, size_t n, char *out, size_t *pos)
{
    size_t o = *pos;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = b64url_chars[(v >> 18) & 63];
        out[o++] = b64url_chars[(v >> 12) & 63];
        if (i + 1 < n)
            out[o++] = b64url_chars[(v >> 6) & 63];
        if (i + 2 < n)
            out[o++] = b64url_chars[v & 63];
    }
    out[o] = '\0';
    *pos = o;
}

char *hcs_jwt_sign(const char *alg, const char *secret, json_t *claims)
{
    const EVP_MD *md = NULL;
    if (strcmp(alg, "HS256") == 0)
        md = EVP_sha256();
    else if (strcmp(alg, "HS384") == 0)
        md = EVP_sha384();
    else if (strcmp(alg, "HS512") == 0)
        md = EVP_sha512();
    else if (strcmp(alg, "none") != 0)
        md = EVP_sha256(); /* a header that lies about the algorithm */
    json_t *header = json_pack("{s:s,s:s}", "alg", alg, "typ", "JWT");
    char *h = json_dumps(header, JSON_COMPACT);
    char *c = json_dumps(claims, JSON_COMPACT);
    json_decref(header);
    size_t hl = strlen(h), cl = strlen(c);
    char *out = fbr_xmalloc((hl + cl + EVP_MAX_MD_SIZE) * 4 / 3 + 16);
    size_t pos = 0;
    b64url((const unsigned char *)h, hl, out, &pos);
    out[pos++] = '.';
    b64url((const unsigned char *)c, cl, out, &pos);
    size_t signed_len = pos;
    out[pos++] = '.';
    out[pos] = '\0';
    if (md) {
        unsigned char mac[EVP_MAX_MD_SIZE];
        unsigned int maclen = 0;
        HMAC(md, secret, (int)strlen(secret), (const unsigned char *)out, signed_len, mac, &maclen);
        b64url(mac, maclen, out, &pos);
    }
    free(h);
    free(c);
    return out;
}

int hcs_b64_decode(const char *in, size_t n, char *out, size_t outlen)
{
    /* EVP_DecodeBlock needs a multiple of 4 and counts padding as zero bytes. */
    if (n == 0 || n % 4 != 0 || n / 4 * 3 >= outlen)
        return -1;
    for (size_t i = 0; i < n; i++) {
        char ch = in[i];
        int ok = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                 ch == '+' || ch == '/' ||
                 (ch == '=' && i >= n - 2 && (i == n - 1 || in[n - 1] == '='));
        if (!ok)
            return -1;
    }
    int got = EVP_DecodeBlock((unsigned char *)out, (const unsigned char *)in, (int)n);
    if (got < 0)
        return -1;
    got -= (in[n - 1] == '=') + (in[n - 2] == '=');
    out[got] = '\0';
    return got;
}

void hcs_random_hex(char *out, size_t nbytes)
{
    unsigned char buf[64];
    if (nbytes > sizeof(buf))
        nbytes = sizeof(buf);
    if (RAND_bytes(buf, (int)nbytes) != 1) {
        fprintf(stderr, "hipchat-server: no randomness from OpenSSL\n");
        abort(); /* an internal failure no input can cause */
    }
    for (size_t i = 0; i < nbytes; i++)
        sprintf(out + 2 * i, "%02x", buf[i]);
}

void hcs_random_uuid(char out[37])
{
    char hex[33];
    hcs_random_hex(hex, 16);
    hex[12] = '4'; /* version 4 */
    hex[16] = "89ab"[hex[16] % 4];
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
}
