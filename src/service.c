/*
 * service.c - readiness and state notifications to the service manager (service.h): a thin
 * wrapper over libsystemd's sd_notify(3), compiled to nothing when the build has no libsystemd.
 * main.c calls it once the listeners are open (READY=1), around a reload and when a drain
 * starts.
 */
#include "firebridge/service.h"

#include "fbr_build.h"
#include "firebridge/log.h"

#if FBR_HAVE_SYSTEMD
#include <string.h>
#include <systemd/sd-daemon.h>

int fbr_service_notify_supported(void)
{
    return 1;
}

void fbr_service_notify(const char *state)
{
    int rc = sd_notify(0, state);
    if (rc < 0)
        fbr_log_debug("telling the service manager \"%s\" failed: %s", state, strerror(-rc));
}
#else
int fbr_service_notify_supported(void)
{
    return 0;
}

void fbr_service_notify(const char *state)
{
    (void)state;
}
#endif
