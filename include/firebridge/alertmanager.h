/*
 * alertmanager.h - the Prometheus Alertmanager intake format: maps the body Alertmanager's
 * `webhook_configs` receiver posts (payload version 4: one group of alerts) to alerts of the
 * on-call platform's REST shape, which the intake then runs through the same path as a posted
 * alert (rules -> incidents -> events -> templates -> delivery).  Pure functions: no I/O, no
 * state; the endpoint itself (`POST /v1/alertmanager/{routing_key}`) is the intake's.
 *
 * The mapping, per alert of the group:
 *   entity_id           <- fingerprint
 *   message_type        <- status "resolved": RECOVERY; "firing": the `severity` label,
 *                          critical -> CRITICAL, warning -> WARNING, anything else (or none) ->
 *                          fbr_alertmanager_opts.other_severity (default CRITICAL)
 *   entity_display_name <- annotations.summary, else labels.alertname, else the fingerprint
 *   state_message       <- annotations.description (absent when it is)
 *   state_start_time    <- startsAt (firing) or endsAt (resolved), epoch seconds
 *   monitoring_tool     <- "alertmanager"
 * and kept as they are, for rules and templates (`${{ALERT.labels.instance}}`): labels,
 * annotations, generatorURL, startsAt, endsAt, fingerprint, status, and the group's
 * externalURL, receiver and groupKey.
 */
#ifndef FIREBRIDGE_ALERTMANAGER_H
#define FIREBRIDGE_ALERTMANAGER_H

#include <jansson.h>
#include <stddef.h>

#include "firebridge/incidents.h"

#define FBR_ALERTMANAGER_PREFIX "/v1/alertmanager/"

#define FBR_ALERTMANAGER_MAX_ALERTS 1000 /* alerts in one group (Alertmanager's max_alerts) */
#define FBR_ALERTMANAGER_MAX_PAIRS 256   /* labels, and annotations, of one alert */

struct fbr_alertmanager_opts {
    /* message_type of a firing alert whose severity label is neither critical nor warning:
     * FBR_MT_CRITICAL (the zero value), FBR_MT_WARNING or FBR_MT_INFO */
    enum fbr_msg_type other_severity;
};

/*
 * Checks and maps one webhook body (borrowed, not modified).  Field limits are the REST
 * endpoint's (intake.h): the fields that become entity_id, entity_display_name and
 * state_message are bounded as those are, every other label, annotation and URL by
 * FBR_INTAKE_FIELD_MAX, except annotations by FBR_INTAKE_STATE_MESSAGE_MAX.
 *
 * Returns FBR_OK with *alerts set to a new JSON array of new alert objects (one per alert, in
 * order), or FBR_INVALID with *alerts NULL and a message naming the field written to err
 * (NUL-terminated, cut at errlen): "alerts[2].status: expected \"firing\" or \"resolved\"".
 */
int fbr_alertmanager_map(json_t *body, const struct fbr_alertmanager_opts *opts, json_t **alerts,
                         char *err, size_t errlen);

/*
 * Parses an RFC 3339 time as Alertmanager writes it ("2026-11-29T14:10:57.123Z", or with a
 * "+01:00" offset) into epoch seconds.  Go's zero time ("0001-01-01T00:00:00Z", an endsAt not
 * yet known) and anything before 1970 give 0.  Returns FBR_OK or FBR_INVALID.
 */
int fbr_alertmanager_time(const char *s, long long *secs);

#endif
