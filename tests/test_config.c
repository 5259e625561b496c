/*
 * test_config.c - unit tests for config.c, the first thing the daemon runs: every flag and every
 * file key accepted with its bounds, every rejection with the flag or JSON path it names, flag
 * precedence over the file, --help and the README reference kept in sync with the table.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "firebridge/addon.h"
#include "firebridge/config.h"
#include "testsupport.h"

#define MAXARGS 8

/* ---- flags ---- */

static const struct flag_case {
    const char *argv[MAXARGS];
    int ok;
    const char *err; /* substring of the error, when !ok */
} flag_cases[] = {
    {{"-l", "127.0.0.1:0"}, 1, NULL},
    {{"--listen", "[::1]:8080", "-l", "0.0.0.0:80"}, 1, NULL},
    {{"--listen", "localhost:80"}, 0, "--listen: expected ADDR:PORT"},
    {{"--listen", "127.0.0.1"}, 0, "--listen"},
    {{"--listen", "127.0.0.1:65536"}, 0, "--listen"},
    {{"--listen", "[::1:80"}, 0, "--listen"},
    {{"--listen", "127.0.0.1:-1"}, 0, "--listen"},
    {{"--listen"}, 0, "--listen: needs a value"},
    {{"--tls-cert", "/dev/null", "--tls-key", "/dev/null"}, 1, NULL},
    {{"--tls-cert", ""}, 0, "--tls-cert: expected a non-empty string"},
    {{"-d", "/tmp/x"}, 1, NULL},
    {{"--api-key", "a", "--api-key", "b"}, 1, NULL},
    {{"--api-key", ""}, 0, "--api-key"},
    {{"--public-url", "https://fb.example.com"}, 1, NULL},
    {{"--max-body", "2M"}, 1, NULL},
    {{"--max-body", "1023"}, 0, "--max-body: expected a byte count between 1024"},
    {{"--max-body", "2G"}, 0, "--max-body"},
    {{"--max-body", "12x"}, 0, "--max-body"},
    {{"--max-body", "-5"}, 0, "--max-body"},
    {{"--max-body", "99999999999999999999999"}, 0, "--max-body"},
    {{"--max-connections", "0"}, 0, "--max-connections: expected an integer between 1"},
    {{"--max-connections", "2000"}, 1, NULL},
    {{"--read-timeout", "5"}, 0, "--read-timeout"},
    {{"--read-timeout", "500"}, 1, NULL},
    {{"--idle-timeout", "abc"}, 0, "--idle-timeout"},
    {{"--max-pending", "0"}, 0, "--max-pending"},
    {{"--connect-timeout", "1000"}, 1, NULL},
    {{"--request-timeout", "1k"}, 0, "--request-timeout"},
    {{"--pool-size", "1025"}, 0, "--pool-size"},
    {{"--pipeline", "0"}, 0, "--pipeline: expected an integer between 1 and 64"},
    {{"--pipeline", "65"}, 0, "--pipeline"},
    {{"--pipeline", "8"}, 1, NULL},
    {{"--room-rate", "30/60"}, 1, NULL},
    {{"--room-rate", "30"}, 0, "--room-rate: expected N/SECONDS"},
    {{"--room-rate", "0/60"}, 0, "--room-rate"},
    {{"--room-rate", "30/0"}, 0, "--room-rate"},
    {{"--room-rate", "/60"}, 0, "--room-rate"},
    {{"--token-rate", "500/300"}, 1, NULL},
    {{"--token-rate", "5/x"}, 0, "--token-rate"},
    {{"--retry-initial", "0"}, 0, "--retry-initial"},
    {{"--retry-max-interval", "1000"}, 1, NULL},
    {{"--retry-max-age", "2592001"}, 0, "--retry-max-age"},
    {{"--ca-file", "/etc/ssl/certs/ca-certificates.crt"}, 1, NULL},
    {{"--fsync", "always"}, 1, NULL},
    {{"--fsync", "sometimes"}, 0, "--fsync: expected one of always|batch|off"},
    {{"--drain-timeout", "0"}, 1, NULL},
    {{"--drain-timeout", "3601"}, 0, "--drain-timeout"},
    {{"--log-level", "debug"}, 1, NULL},
    {{"--log-level", "verbose"}, 0, "--log-level"},
    {{"--log-format", "json"}, 1, NULL},
    {{"--log-format", "xml"}, 0, "--log-format"},
    {{"--replay-dead-letters", "dead.jsonl"}, 1, NULL},
    {{"--organization-id", "acme"}, 1, NULL},
    {{"--check-config"}, 1, NULL},
    {{"--bogus"}, 0, "--bogus: unknown flag"},
    {{"-x"}, 0, "-x: unknown flag"},
    {{"stray"}, 0, "stray: unexpected argument"},
    {{"--help=1"}, 0, "unknown flag"},
};

START_TEST(flags_table)
{
    const struct flag_case *fc = &flag_cases[_i];
    const char *argv[MAXARGS + 2] = {"firebridge"};
    int argc = 1;
    for (int k = 0; k < MAXARGS && fc->argv[k]; k++)
        argv[argc++] = fc->argv[k];
    struct fbr_cli cli;
    char err[512];
    int rc = fbr_cli_parse(&cli, argc, (char **)argv, err, sizeof(err));
    if (fc->ok) {
        ck_assert_msg(rc == FBR_OK, "case %d rejected: %s", _i, err);
        struct fbr_config cfg;
        int brc = fbr_config_build(&cfg, &cli, err, sizeof(err));
        /* the files exist (/dev/null): building must succeed; a missing one is file_table's */
        ck_assert_msg(brc == FBR_OK, "case %d build failed: %s", _i, err);
        fbr_config_free(&cfg);
    } else {
        ck_assert_msg(rc == FBR_INVALID, "case %d accepted", _i);
        ck_assert_msg(strstr(err, fc->err), "case %d: '%s' lacks '%s'", _i, err, fc->err);
        ck_assert_msg(!strchr(err, '\n'), "case %d: more than one line", _i);
    }
    fbr_cli_free(&cli);
}
END_TEST

START_TEST(flags_values)
{
    const char *argv[] = {"firebridge", "-l", "127.0.0.1:1", "--listen", "[::1]:2",
                          "--max-body", "2M",
                    "--room-rate", "7/9", "--fsync", "off", "--log-level", "debug",
                    "--api-key", "k1", "--api-key", "k2", "--read-timeout", "250", NULL};
    struct fbr_cli cli;
    struct fbr_config cfg;
    char err[512];
    ck_assert_int_eq(fbr_cli_parse(&cli, 19, (char **)argv, err, sizeof(err)), FBR_OK);
    ck_assert_int_eq(fbr_config_build(&cfg, &cli, err, sizeof(err)), FBR_OK);
    ck_assert_uint_eq(cfg.listen.n, 2);
    ck_assert_str_eq(cfg.listen.v[1], "[::1]:2");
    ck_assert_uint_eq(cfg.max_body, 2 * 1024 * 1024);
    ck_assert_uint_eq(cfg.room_rate.n, 7);
    ck_assert_uint_eq(cfg.room_rate.secs, 9);
    ck_assert_int_eq(cfg.fsync, FBR_FSYNC_OFF);
    ck_assert_int_eq(cfg.log_level, FBR_LOG_DEBUG);
    ck_assert_uint_eq(cfg.api_keys.n, 2);
    ck_assert_uint_eq(cfg.read_timeout_ms, 250);
    fbr_config_free(&cfg);
    fbr_cli_free(&cli);
}
END_TEST

START_TEST(defaults)
{
    struct fbr_config cfg;
    fbr_config_defaults(&cfg);
    ck_assert_uint_eq(cfg.listen.n, 1);
    ck_assert_str_eq(cfg.listen.v[0], "127.0.0.1:8080");
    ck_assert_str_eq(cfg.data_dir, "./firebridge-data");
    ck_assert_uint_eq(cfg.max_body, 1048576);
    ck_assert_uint_eq(cfg.room_rate.n, 30);
    ck_assert_uint_eq(cfg.room_rate.secs, 60);
    ck_assert_uint_eq(cfg.token_rate.n, 500);
    ck_assert_uint_eq(cfg.token_rate.secs, 300);
    ck_assert_ptr_null(cfg.webhooks);
    fbr_config_free(&cfg);
}
END_TEST

START_TEST(actions)
{
    static const struct {
        const char *arg;
        enum fbr_cli_action action;
    } cases[] = {{"--help", FBR_CLI_HELP}, {"-h", FBR_CLI_HELP}, {"-V", FBR_CLI_VERSION},
                 {"--version", FBR_CLI_VERSION}, {"--check-config", FBR_CLI_CHECK}};
    for (size_t i = 0; i < FBR_ARRAY_LEN(cases); i++) {
        const char *argv[] = {"firebridge", cases[i].arg, NULL};
        struct fbr_cli cli;
        char err[256];
        ck_assert_int_eq(fbr_cli_parse(&cli, 2, (char **)argv, err, sizeof(err)), FBR_OK);
        ck_assert_int_eq(cli.action, cases[i].action);
        fbr_cli_free(&cli);
    }
}
END_TEST

/* ---- file ---- */

static const struct file_case {
    const char *json;
    const char *err; /* NULL: accepted */
} file_cases[] = {
    {"{}", NULL},
    {"{\"listen\": [\"127.0.0.1:9000\", \"[::]:9001\"], \"max_body\": 4096}", NULL},
    {"{\"rules\": [], \"webhooks\": [{\"name\": \"x\"}], \"hipchat\": {}}", NULL},
    {"{\"organization_id\": \"acme\", \"api_keys\": [\"a\", \"b\"]}", NULL},
    {"{\"room_rate\": \"5/10\", \"fsync\": \"always\", \"log_format\": \"json\"}", NULL},
    {"{\"drain_timeout\": 0, \"public_url\": \"https://x\", \"ca_file\": \"/dev/null\"}", NULL},
    {"{\"tls_cert\": \"/dev/null\", \"tls_key\": \"/dev/null\"}", NULL},
    {"{\"ca_file\": \"/nonexistent/ca.pem\"}", "ca_file: cannot read /nonexistent/ca.pem"},
    {"[]", "(top level): expected an object"},
    {"{\"metod\": 1}", "metod: unknown key"},
    {"{\"max_body\": \"1M\"}", "max_body: expected a byte count"},
    {"{\"max_body\": 10}", "max_body: expected a byte count between 1024"},
    {"{\"max_body\": -1}", "max_body"},
    {"{\"max_body\": 1.5}", "max_body"},
    {"{\"max_connections\": 0}", "max_connections: expected an integer between 1"},
    {"{\"listen\": \"127.0.0.1:1\"}", "listen: expected an array of strings, got a string"},
    {"{\"listen\": []}", "listen: expected at least one address"},
    {"{\"listen\": [\"127.0.0.1:1\", 5]}", "listen[1]: expected ADDR:PORT"},
    {"{\"listen\": [\"example.com:80\"]}", "listen[0]: expected ADDR:PORT"},
    {"{\"api_keys\": [\"\"]}", "api_keys[0]: expected a non-empty string"},
    {"{\"api_keys\": \"k\"}", "api_keys: expected an array of strings"},
    {"{\"rules\": {}}", "rules: expected an array, got an object"},
    {"{\"webhooks\": {}}", "webhooks: expected an array, got an object"},
    {"{\"hipchat\": []}", "hipchat: expected an object, got an array"},
    {"{\"room_rate\": 30}", "room_rate: expected N/SECONDS"},
    {"{\"token_rate\": \"1/100000\"}", "token_rate: expected N/SECONDS"},
    {"{\"fsync\": true}", "fsync: expected one of always|batch|off, got a boolean"},
    {"{\"log_level\": \"loud\"}", "log_level: expected one of error|warn|info|debug"},
    {"{\"log_format\": null}", "log_format: expected one of text|json, got null"},
    {"{\"organization_id\": 5}", "organization_id: expected a non-empty string"},
    {"{\"data_dir\": \"\"}", "data_dir: expected a non-empty string"},
    {"{\"replay_dead_letters\": \"x\"}", "replay_dead_letters: unknown key"},
    {"{\"check_config\": true}", "check_config: unknown key"},
    {"{\"tls_cert\": \"c\"}", "tls_cert, tls_key: give both or neither"},
    {"{\"retry_initial\": 5000, \"retry_max_interval\": 1000}",
     "retry_initial: must not exceed retry_max_interval"},
    {"{\"max_body\": 1, \"metod\": 2}", "max_body"},
    {"{\"max_body\": 1, \"metod\": 2}", "metod: unknown key"},
    {"{broken", ":1:"},
    {"{\"a\": 1, \"a\": 2}", "duplicate"},
};

static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/fbr-test-config-XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, text, strlen(text)), (int)strlen(text));
    close(fd);
    return path;
}

START_TEST(file_table)
{
    const struct file_case *fc = &file_cases[_i];
    char *path = write_tmp(fc->json);
    const char *argv[] = {"firebridge", "-c", path, NULL};
    struct fbr_cli cli;
    struct fbr_config cfg;
    char err[2048];
    ck_assert_int_eq(fbr_cli_parse(&cli, 3, (char **)argv, err, sizeof(err)), FBR_OK);
    int rc = fbr_config_build(&cfg, &cli, err, sizeof(err));
    if (!fc->err) {
        ck_assert_msg(rc == FBR_OK, "case %d rejected: %s", _i, err);
        fbr_config_free(&cfg);
    } else {
        ck_assert_msg(rc == FBR_INVALID, "case %d accepted", _i);
        ck_assert_msg(strstr(err, fc->err), "case %d: '%s' lacks '%s'", _i, err, fc->err);
        ck_assert_msg(strncmp(err, path, strlen(path)) == 0, "case %d: no file name: %s", _i,
                      err);
    }
    fbr_cli_free(&cli);
    unlink(path);
    free(path);
}
END_TEST

START_TEST(file_values_and_precedence)
{
    char *path = write_tmp("{\"listen\": [\"127.0.0.1:9000\", \"127.0.0.1:9001\"],"
                           " \"max_body\": 4096, \"webhooks\": [{\"name\": \"w\"}],"
                           " \"hipchat\": {\"x\": 1}, \"api_keys\": [\"f1\"],"
                           " \"read_timeout\": 1234}");
    const char *argv[] = {"firebridge", "--max-body", "8192", "-c", path,
                          "-l", "127.0.0.1:1", NULL};
    struct fbr_cli cli;
    struct fbr_config cfg;
    char err[1024];
    ck_assert_int_eq(fbr_cli_parse(&cli, 7, (char **)argv, err, sizeof(err)), FBR_OK);
    ck_assert_int_eq(fbr_config_build(&cfg, &cli, err, sizeof(err)), FBR_OK);
    ck_assert_uint_eq(cfg.max_body, 8192);           /* flag wins */
    ck_assert_uint_eq(cfg.listen.n, 1);              /* a flag list replaces the file's */
    ck_assert_str_eq(cfg.listen.v[0], "127.0.0.1:1");
    ck_assert_uint_eq(cfg.read_timeout_ms, 1234);    /* file wins over the default */
    ck_assert_uint_eq(cfg.api_keys.n, 1);
    ck_assert(json_is_array(cfg.webhooks));
    ck_assert_uint_eq(json_array_size(cfg.webhooks), 1);
    ck_assert(json_is_object(cfg.hipchat));
    ck_assert_str_eq(cfg.config_file, path);
    fbr_config_free(&cfg);
    fbr_cli_free(&cli);
    unlink(path);
    free(path);
}
END_TEST

/* A configuration file that cannot be read says so with its path and the reason (jansson's own
 * message was ":-1:-1: unable to open ..." without the path, and "'[' or '{' expected near end
 * of file" for a directory); one that was read but is not JSON keeps PATH:LINE:COLUMN. */
START_TEST(missing_file)
{
    static const struct {
        const char *path, *err;
    } cases[] = {
        {"/nonexistent/firebridge.json",
         "cannot read config /nonexistent/firebridge.json: No such file or directory"},
        {"/tmp", "cannot read config /tmp: Is a directory"},
        {"/dev/null", "/dev/null:1:0: '[' or '{' expected near end of file"},
    };
    for (size_t i = 0; i < FBR_ARRAY_LEN(cases); i++) {
        const char *argv[] = {"firebridge", "-c", cases[i].path, NULL};
        struct fbr_cli cli;
        struct fbr_config cfg;
        char err[1024];
        ck_assert_int_eq(fbr_cli_parse(&cli, 3, (char **)argv, err, sizeof(err)), FBR_OK);
        ck_assert_int_eq(fbr_config_build(&cfg, &cli, err, sizeof(err)), FBR_INVALID);
        ck_assert_str_eq(err, cases[i].err);
        fbr_cli_free(&cli);
    }
}
END_TEST

/* ---- the helper later modules use for their sections ---- */

static const struct fbr_field webhook_fields[] = {
    {"name", FBR_F_STRING, 1, 0, 0},
    {"method", FBR_F_STRING, 1, 0, 0},
    {"retries", FBR_F_INT, 0, 0, 10},
    {"enabled", FBR_F_BOOL, 0, 0, 0},
    {"headers", FBR_F_OBJECT, 0, 0, 0},
};

static const struct {
    const char *json;
    int errors;
    const char *err;
} object_cases[] = {
    {"{\"name\":\"a\",\"method\":\"POST\"}", 0, ""},
    {"{\"name\":\"a\",\"metod\":\"POST\"}", 2, "webhooks[2].metod: unknown key\n"
                                                 "webhooks[2].method: required key missing"},
    {"{\"name\":1,\"method\":\"GET\"}", 1, "webhooks[2].name: expected a string, got an integer"},
    {"{\"name\":\"a\",\"method\":\"GET\",\"retries\":11}", 1,
     "webhooks[2].retries: expected an integer between 0 and 10"},
    {"{\"name\":\"a\",\"method\":\"GET\",\"enabled\":\"yes\"}", 1,
     "webhooks[2].enabled: expected a boolean, got a string"},
    {"{\"name\":\"a\",\"method\":\"GET\",\"headers\":[]}", 1,
     "webhooks[2].headers: expected an object, got an array"},
    {"[]", 1, "webhooks[2]: expected an object, got an array"},
};

START_TEST(check_object_table)
{
    json_t *obj = json_loads(object_cases[_i].json, 0, NULL);
    ck_assert_ptr_nonnull(obj);
    char err[512] = "";
    int n = fbr_config_check_object(obj, "webhooks[2]", webhook_fields,
                                    FBR_ARRAY_LEN(webhook_fields), err, sizeof(err));
    ck_assert_int_eq(n, object_cases[_i].errors);
    ck_assert_str_eq(err, object_cases[_i].err);
    /* errors append to what is already there */
    if (n) {
        strcpy(err, "first");
        fbr_config_check_object(obj, "webhooks[2]", webhook_fields,
                                FBR_ARRAY_LEN(webhook_fields), err, sizeof(err));
        ck_assert(strncmp(err, "first\n", 6) == 0);
    }
    json_decref(obj);
}
END_TEST

/* The same table in the words of a list item (a rule, a webhook): what the rules and webhook
 * compilers get from the one checker. */
static const struct {
    const char *json;
    const char *err;
} item_cases[] = {
    {"{\"name\":\"a\",\"method\":\"POST\"}", ""},
    {"{\"name\":\"a\",\"metod\":\"POST\"}",
     "webhooks[2]: unknown key \"metod\"\nwebhooks[2].method: missing"},
    {"{\"name\":1,\"method\":\"GET\"}", "webhooks[2].name: must be a string"},
    {"{\"name\":\"a\",\"method\":\"GET\",\"enabled\":\"yes\"}",
     "webhooks[2].enabled: must be true or false"},
    {"{\"name\":\"a\",\"method\":\"GET\",\"retries\":11}",
     "webhooks[2].retries: must be an integer between 0 and 10"},
    {"[]", "webhooks[2]: must be an object {name, method, retries, enabled, headers}"},
};

START_TEST(check_item_table)
{
    json_t *obj = json_loads(item_cases[_i].json, 0, NULL);
    ck_assert_ptr_nonnull(obj);
    struct fbr_cfgerr errs = {0};
    int n = fbr_config_check_item(obj, "webhooks[2]", webhook_fields,
                                  FBR_ARRAY_LEN(webhook_fields), &errs);
    ck_assert_int_eq(n, (int)errs.n);
    char err[512] = "";
    fbr_cfgerr_join(&errs, err, sizeof(err));
    ck_assert_str_eq(err, item_cases[_i].err);
    fbr_cfgerr_clear(&errs);
    json_decref(obj);
}
END_TEST

/* ---- help and README ---- */

static char *capture(void (*fn)(FILE *))
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fn(f);
    fclose(f);
    return buf;
}

static void help_to(FILE *f)
{
    fbr_config_print_help(f, "firebridge");
}

static const char *const issue_flags[] = {
    "--config", "--listen", "--tls-cert", "--tls-key", "--data-dir", "--api-key", "--public-url",
    "--max-body", "--max-connections", "--read-timeout", "--idle-timeout", "--max-pending",
    "--connect-timeout", "--request-timeout", "--pool-size", "--room-rate", "--token-rate",
    "--retry-initial", "--retry-max-interval", "--retry-max-age", "--ca-file", "--fsync",
    "--drain-timeout", "--log-level", "--log-format", "--check-config", "--version", "--help",
    "--replay-dead-letters", "-c,", "-l,", "-d,", "-V,", "-h,"};

START_TEST(help_lists_every_flag)
{
    char *help = capture(help_to);
    for (size_t i = 0; i < FBR_ARRAY_LEN(issue_flags); i++)
        ck_assert_msg(strstr(help, issue_flags[i]), "--help lacks %s", issue_flags[i]);
    ck_assert_ptr_nonnull(strstr(help, "[default: 127.0.0.1:8080]"));
    ck_assert_ptr_nonnull(strstr(help, "[default: 30/60]"));
    free(help);
}
END_TEST

START_TEST(readme_documents_every_flag_and_key)
{
    const char *readme = getenv("FBR_README");
    if (!readme)
        return; /* run outside meson */
    FILE *f = fopen(readme, "r");
    ck_assert_ptr_nonnull(f);
    char *text = NULL;
    size_t cap = 0;
    ssize_t n = getdelim(&text, &cap, '\0', f);
    fclose(f);
    ck_assert_int_gt(n, 0);
    char *ref = capture(fbr_config_print_reference);
    /* Every row of the generated reference must appear verbatim in README.md. */
    for (char *line = strtok(ref, "\n"); line; line = strtok(NULL, "\n"))
        ck_assert_msg(strstr(text, line), "README.md lacks the reference row:\n%s\n"
                      "(regenerate with: firebridge-reference)", line);
    free(ref);
    /* and every key of the `hipchat` and `oncall_api` sections (addon.c's table) */
    ref = capture(fbr_addon_print_reference);
    for (char *line = strtok(ref, "\n"); line; line = strtok(NULL, "\n"))
        ck_assert_msg(strstr(text, line), "README.md lacks the reference row:\n%s\n"
                      "(regenerate with: firebridge-reference)", line);
    free(ref);
    free(text);
}
END_TEST

/* One collector (cfgerr) for every error: the file's errors one message each, prefixed with the
 * file's name, and the section checker's messages straight into the same list. */
START_TEST(one_error_collector)
{
    char path[] = "/tmp/fbr-cfgerr-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *text = "{\"max_body\": 1, \"metod\": 2}";
    ck_assert_int_eq(write(fd, text, strlen(text)), (int)strlen(text));
    close(fd);
    struct fbr_cli cli = {0};
    cli.config_file = strdup(path);
    struct fbr_config cfg;
    struct fbr_cfgerr errs = {0};
    ck_assert_int_eq(fbr_config_build_errs(&cfg, &cli, &errs), FBR_INVALID);
    ck_assert_uint_eq(errs.n, 2);
    for (size_t i = 0; i < errs.n; i++)
        ck_assert_msg(strncmp(errs.msgs[i], path, strlen(path)) == 0 &&
                          !strchr(errs.msgs[i], '\n'),
                      "message %zu: %s", i, errs.msgs[i]);
    fbr_cfgerr_clear(&errs);
    fbr_cli_free(&cli);
    unlink(path);

    static const struct fbr_field fields[] = {{"url", FBR_F_STRING, 1, 0, 0},
                                              {"n", FBR_F_INT, 0, 1, 5}};
    json_t *obj = json_loads("{\"n\": 9, \"x\": 1}", 0, NULL);
    ck_assert_int_eq(fbr_config_check_fields(obj, "oncall_api", fields, 2, &errs), 3);
    ck_assert_uint_eq(errs.n, 3);
    ck_assert_str_eq(errs.msgs[0], "oncall_api.n: expected an integer between 1 and 5");
    ck_assert_str_eq(errs.msgs[1], "oncall_api.x: unknown key");
    ck_assert_str_eq(errs.msgs[2], "oncall_api.url: required key missing");
    fbr_cfgerr_clear(&errs);
    json_decref(obj);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    tcase_add_loop_test(tc, flags_table, 0, FBR_ARRAY_LEN(flag_cases));
    tcase_add_test(tc, flags_values);
    tcase_add_test(tc, defaults);
    tcase_add_test(tc, actions);
    tcase_add_loop_test(tc, file_table, 0, FBR_ARRAY_LEN(file_cases));
    tcase_add_test(tc, file_values_and_precedence);
    tcase_add_test(tc, missing_file);
    tcase_add_loop_test(tc, check_object_table, 0, FBR_ARRAY_LEN(object_cases));
    tcase_add_loop_test(tc, check_item_table, 0, FBR_ARRAY_LEN(item_cases));
    tcase_add_test(tc, help_lists_every_flag);
    tcase_add_test(tc, readme_documents_every_flag_and_key);
    tcase_add_test(tc, one_error_collector);
    suite_add_tcase(s, tc);
    return fbr_test_run(s);
}
