/*
 * firebridge-man.c - writes the firebridge(8) man page (roff) to stdout: the sections below plus
 * OPTIONS and CONFIGURATION FILE ONLY generated from the configuration table (config.c), the
 * same table that gives --help and README.md's reference.  doc/firebridge.8 is this output;
 * test_man fails when it is stale (regenerate: build/doc/firebridge-man > doc/firebridge.8).
 */
#include <stdio.h>

#include "fbr_build.h"
#include "firebridge/config.h"

static const char head[] =
    ".TH FIREBRIDGE 8 \"\" \"firebridge " FBR_VERSION "\" \"System Administration\"\n"
    ".SH NAME\n"
    "firebridge \\- bridge between an on\\-call platform and team chat\n"
    ".SH SYNOPSIS\n"
    ".B firebridge\n"
    "[\\fIOPTIONS\\fR]\n"
    ".br\n"
    ".B firebridge \\-\\-check\\-config\n"
    "[\\fB\\-c\\fR \\fIFILE\\fR]\n"
    ".SH DESCRIPTION\n"
    "firebridge receives alerts on an endpoint compatible with the on\\-call platform's REST\n"
    "alert endpoint and on a Prometheus Alertmanager webhook receiver, runs them through its\n"
    "Rules Engine, keeps the incident lifecycle (trigger, roll\\-up, acknowledge, resolve) and\n"
    "fires Outgoing Webhooks at chat rooms: in order per room, rate\\-limited per room and per\n"
    "token, retried with back\\-off, with a dead\\-letter file for what cannot be delivered.\n"
    ".PP\n"
    "Without \\fB\\-\\-config\\fR the built\\-in defaults are used.  The configuration file is\n"
    "one JSON object; every flag has the same key with \\(lq_\\(rq for \\(lq\\-\\(rq, and a flag\n"
    "overrides the file.  Unknown keys and wrong types are refused with their JSON path.\n";

static const char tail[] =
    ".SH ENDPOINTS\n"
    ".TP\n"
    ".B POST /integrations/generic/20131114/alert/\\fIapi_key\\fB/\\fIrouting_key\\fR\n"
    "One alert, as the platform's REST endpoint takes it.\n"
    ".TP\n"
    ".B POST /v1/alertmanager/\\fIrouting_key\\fR\n"
    "One group of alerts as Prometheus Alertmanager's webhook receiver posts it, with\n"
    "\\(lqAuthorization: Bearer \\fIapi_key\\fR\\(rq.\n"
    ".TP\n"
    ".B POST /v1/events\n"
    "Timeline events that are not alerts, with \\(lqAuthorization: Bearer \\fIapi_key\\fR\\(rq.\n"
    ".TP\n"
    ".B GET /healthz\\fR, \\fBGET /readyz\\fR, \\fBGET /metrics\n"
    "Liveness; readiness (503 while draining or when the data directory is not writable);\n"
    "Prometheus metrics.\n"
    ".PP\n"
    "A request that cannot be processed whole is answered 503 with Retry\\-After and changes\n"
    "nothing.\n"
    ".SH SIGNALS\n"
    ".TP\n"
    ".BR SIGTERM \", \" SIGINT\n"
    "Drain: listeners close, /readyz answers 503, deliveries go on for up to\n"
    "\\fB\\-\\-drain\\-timeout\\fR seconds; what is left goes to the dead\\-letter file.\n"
    ".TP\n"
    ".B SIGHUP\n"
    "Reload the configuration file and re\\-apply the flags; an invalid file keeps the running\n"
    "configuration.\n"
    ".SH FILES\n"
    ".TP\n"
    ".I DATA_DIR/lock\n"
    "Held with an exclusive\n"
    ".BR flock (2)\n"
    "while the daemon runs; the file gives the daemon's pid.  A second firebridge started on the\n"
    "same data directory exits 1 naming the directory and that pid.  The kernel releases the lock\n"
    "when the process ends, also on SIGKILL; the file itself stays.\n"
    ".TP\n"
    ".I DATA_DIR/journal/\n"
    "The write\\-ahead journal: incidents and pending deliveries, replayed at start.\n"
    ".TP\n"
    ".I DATA_DIR/dead\\-letters.jsonl\n"
    "Deliveries that failed for good, one JSON object per line; see\n"
    "\\fB\\-\\-replay\\-dead\\-letters\\fR.\n"
    ".SH EXIT STATUS\n"
    "0 after a drain; 1 when the start fails (an invalid or unreadable configuration file, a data\n"
    "directory in use by another instance) or undelivered deliveries could not be saved; 2 for\n"
    "a bad flag.  \\fB\\-\\-check\\-config\\fR exits 0 or 1.\n"
    ".SH SEE ALSO\n"
    ".BR hipchat\\-server (1),\n"
    ".BR systemd.service (5),\n"
    ".BR haproxy (1).\n"
    "README.md of the source tree documents every endpoint, the Rules Engine, the templates,\n"
    "the delivery rules, the systemd unit and the HAProxy configuration.\n";

int main(void)
{
    fputs(head, stdout);
    fbr_config_print_man_options(stdout);
    fputs(tail, stdout);
    return 0;
}
