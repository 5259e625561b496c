/*
 * config.h - the daemon's configuration: one table (key, type, field offset, default, bounds,
 * help) drives the JSON file parser, the getopt_long flag parser, --help and the README's
 * reference.  It sits before the data path: main.c builds a struct fbr_config from the built-in
 * defaults, the optional JSON file and the flags (flags win), then hands its fields to the
 * server, intake, rules, events and delivery modules.  The `rules`, `webhooks` and `hipchat`
 * sections are only type-checked here and kept as JSON for the modules that compile them.
 */
#ifndef FIREBRIDGE_CONFIG_H
#define FIREBRIDGE_CONFIG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "firebridge/cfgerr.h"
#include "firebridge/common.h"
#include "firebridge/incidents.h" /* enum fbr_msg_type */
#include "firebridge/log.h"
#include "firebridge/ratelimit.h" /* struct fbr_rate */


/* A list of owned strings (listen addresses, API keys). */
struct fbr_strlist {
    char **v;
    size_t n;
};

/* Everything the daemon is configured with.  Strings are owned; NULL means "not set". */
struct fbr_config {
    char *config_file;           /* the file this came from, or NULL (built-in default) */
    struct fbr_strlist listen;   /* "ADDR:PORT" / "[IPv6]:PORT", at least one */
    char *tls_cert, *tls_key;    /* both or neither: serve HTTPS inbound */
    char *data_dir;
    struct fbr_strlist api_keys; /* keys accepted by the intake endpoints */
    char *public_url;
    char *organization_id;
    uint64_t max_body;           /* bytes */
    uint32_t max_connections;
    uint32_t read_timeout_ms;    /* a whole request (headers and body) must arrive within this */
    uint32_t idle_timeout_ms;    /* a connection with nothing to read is closed after this */
    uint32_t max_pending;        /* delivery queue bound */
    uint32_t connect_timeout_ms;
    uint32_t request_timeout_ms;
    uint32_t pool_size;
    uint32_t pipeline;
    struct fbr_rate room_rate;
    struct fbr_rate token_rate;
    uint32_t retry_initial_ms;
    uint32_t retry_max_interval_ms;
    uint32_t retry_max_age_s;
    char *ca_file;
    int journal;                 /* write-ahead journal on (1) or off */
    enum fbr_fsync_mode fsync;
    uint32_t fsync_interval_ms;
    uint64_t journal_segment_size;
    int journal_repair;          /* flag only: keep what is readable past corruption */
    uint32_t drain_timeout_s;
    enum fbr_log_level log_level;
    enum fbr_log_format log_format;
    enum fbr_msg_type alertmanager_other_severity; /* firing, severity not critical/warning */
    char *replay_dead_letters;   /* flag only: a dead-letter file to replay at start */
    json_t *rules;               /* array or NULL; owned reference */
    json_t *webhooks;            /* array or NULL; owned reference */
    json_t *hipchat;             /* object or NULL; owned reference */
    json_t *oncall_api;          /* object or NULL; owned reference */
    char *print_addon_url;       /* flag only: print this routing key's capabilities URL */
    uint64_t given[2];           /* bit i: option i was in the file or a flag (fbr_config_given) */
};

/* Whether key (a JSON key, "max_connections") was set by the configuration file or a command-line
 * flag, rather than left at its built-in default. */
int fbr_config_given(const struct fbr_config *cfg, const char *key);

/* What the command line asked for besides configuration values. */
enum fbr_cli_action { FBR_CLI_RUN, FBR_CLI_HELP, FBR_CLI_VERSION, FBR_CLI_CHECK, FBR_CLI_PRINT };

/* The parsed command line, kept by main.c so that a reload re-applies the same flags. */
struct fbr_cli {
    enum fbr_cli_action action;
    char *config_file;  /* -c/--config, owned, or NULL */
    struct fbr_cli_opt {
        int entry;      /* index in the option table */
        char *value;    /* owned copy of the argument */
    } *opts;
    size_t nopts;
};

/*
 * Parses argv with getopt_long.  Values are checked here already, so a bad flag is reported
 * before any file is read.  Returns FBR_OK, or FBR_INVALID with one line in err naming the flag
 * and what it accepts (the caller prints it and exits with status 2).  cli must be released
 * with fbr_cli_free() in both cases.
 */
int fbr_cli_parse(struct fbr_cli *cli, int argc, char **argv, char *err, size_t errlen);
void fbr_cli_free(struct fbr_cli *cli);

/* Fills cfg with the built-in defaults (always succeeds). */
void fbr_config_defaults(struct fbr_config *cfg);

/*
 * Applies a parsed JSON document on top of cfg.  Every error is appended to err as one line
 * "<json path>: <reason>" (e.g. "max_body: expected an integer between 1024 and 1073741824");
 * returns FBR_OK or FBR_INVALID (cfg then holds a partial result: free it).  root is borrowed.
 */
int fbr_config_apply_json(struct fbr_config *cfg, json_t *root, char *err, size_t errlen);

/*
 * Builds a configuration: defaults, then the file named by cli (if any), then the flags, then
 * the cross-field checks.  Returns FBR_OK or FBR_INVALID with the errors in err (one per line,
 * file errors prefixed with the file name).  On failure cfg is left empty (freed).
 */
int fbr_config_build(struct fbr_config *cfg, const struct fbr_cli *cli, char *err, size_t errlen);
/* The same, with every error appended to errs (one message each, file errors prefixed with the
 * file name): what the daemon uses, so nothing is split or reformatted. */
int fbr_config_build_errs(struct fbr_config *cfg, const struct fbr_cli *cli,
                          struct fbr_cfgerr *errs);

/* Releases everything cfg owns and zeroes it. */
void fbr_config_free(struct fbr_config *cfg);

/*
 * The effective settings of cfg as a new JSON object: every config key with a scalar or list
 * value, in the file's syntax (so it can be read back as a configuration file), API keys shown
 * as "***"; the rules, webhooks and hipchat sections are left out (they may hold tokens).
 * Returns a new reference.  Used by --print-config.
 */
json_t *fbr_config_settings_json(const struct fbr_config *cfg);

/* Prints the --help text (every flag with its argument, default and meaning). */
void fbr_config_print_help(FILE *out, const char *argv0);
/* Prints the Markdown reference table of every flag and config key (used for README.md). */
void fbr_config_print_reference(FILE *out);
/* Prints the OPTIONS and CONFIGURATION FILE ONLY sections of the firebridge(8) man page, in
 * roff, from the same table (doc/firebridge-man.c writes the rest of the page). */
void fbr_config_print_man_options(FILE *out);

/*
 * Parses a listen address "A.B.C.D:PORT" or "[IPv6]:PORT" (IP literals only).  Writes the host
 * into host (hostlen >= 64), AF_INET or AF_INET6 into *family.  Returns FBR_OK or FBR_INVALID.
 */
int fbr_listen_parse(const char *s, char *host, size_t hostlen, int *family, uint16_t *port);

/*
 * For the modules that compile the `rules`, `webhooks` and `hipchat` sections: one table per
 * JSON object, checked with the same error shape as the top level ("webhooks[2].metod: unknown
 * key").  Each row names a key, its JSON type, whether it is required and, for integers, the
 * bounds (min == max == 0: unbounded).
 */
enum fbr_field_type { FBR_F_STRING, FBR_F_INT, FBR_F_BOOL, FBR_F_OBJECT, FBR_F_ARRAY, FBR_F_ANY };
struct fbr_field {
    const char *key;
    enum fbr_field_type type;
    int required;
    int64_t min, max;
};
/*
 * Checks obj (borrowed) against fields.  path is the object's own path ("webhooks[2]", or "" at
 * the top).  Appends one line per problem to err (existing content kept, lines separated by
 * '\n', truncated at errlen) and returns how many problems there were (0: valid).
 */
int fbr_config_check_object(json_t *obj, const char *path, const struct fbr_field *fields,
                            size_t nfields, char *err, size_t errlen);
/* The same checker with one message per problem appended to errs (the one collector); what the
 * section compilers (the add-on's hipchat and oncall_api) use.  Returns the number of problems. */
int fbr_config_check_fields(json_t *obj, const char *path, const struct fbr_field *fields,
                            size_t nfields, struct fbr_cfgerr *errs);
/*
 * The same checker for one item of a list section (rules[0], webhooks[2], rules[0].when), in the
 * words those messages have always used: "rules[0]: unknown key \"sett\"", "rules[0].enabled:
 * must be true or false", "webhooks[0].url: missing", "rules[0]: must be an object {name, ...}".
 * Rows of type FBR_F_ANY are left to the caller's own checks of their meaning.
 */
int fbr_config_check_item(json_t *obj, const char *path, const struct fbr_field *fields,
                          size_t nfields, struct fbr_cfgerr *errs);


#endif
