/*
 * service.h - the service manager's side channel: readiness and state changes reported to
 * systemd through sd_notify(3) when firebridge is built with libsystemd (meson option
 * `systemd`, auto-detected), so a `Type=notify` unit is "started" only once the listeners are
 * open.  Without libsystemd, or when NOTIFY_SOCKET is not set, every call does nothing.  Not on
 * the data path: main.c calls it around start, reload and drain.
 */
#ifndef FIREBRIDGE_SERVICE_H
#define FIREBRIDGE_SERVICE_H

/* 1 when built with libsystemd (sd_notify available), else 0. */
int fbr_service_notify_supported(void);

/*
 * Sends state ("READY=1", "STOPPING=1", "RELOADING=1", "STATUS=...", newline-separated
 * assignments as sd_notify(3) takes them; borrowed) to the service manager.  A failure is logged
 * at debug level and otherwise ignored: the daemon works the same without a manager.
 */
void fbr_service_notify(const char *state);

#endif
