/* The device hook table (core/device.h): a few slots filled by backends before main, read by the
 * front door. Registration happens in constructors, single-threaded, so reads need no lock. */
#include "core/device.h"
#include "core/status.h"
#include "core/tensor.h"

enum { MAX_DEVICE_HOOKS = 4 };
static const cf_device_hooks* hooks_table[MAX_DEVICE_HOOKS];

void cf_device_register(const cf_device_hooks* hooks) {
    for (int i = 0; i < MAX_DEVICE_HOOKS; i++) {
        if (!hooks_table[i] || hooks_table[i]->device_type == hooks->device_type) {
            hooks_table[i] = hooks;
            return;
        }
    }
}

const cf_device_hooks* cf_device_hooks_for(int device_type) {
    for (int i = 0; i < MAX_DEVICE_HOOKS && hooks_table[i]; i++)
        if (hooks_table[i]->device_type == device_type) return hooks_table[i];
    return NULL;
}

static cflash_status no_hooks(int device_type) {
    return cf_error(CFLASH_ERR_UNSUPPORTED,
                    "device: %s memory, but no backend in this build handles that device",
                    cf_device_name(device_type));
}

cflash_status cf_device_alloc(int device_type, int device_id, void** p, size_t bytes) {
    const cf_device_hooks* h = cf_device_hooks_for(device_type);
    return h && h->alloc ? h->alloc(device_id, p, bytes) : no_hooks(device_type);
}

void cf_device_free(int device_type, int device_id, void* p) {
    const cf_device_hooks* h = cf_device_hooks_for(device_type);
    if (h && h->free) h->free(device_id, p);
}

cflash_status cf_device_copy(int device_type, int device_id, void* dst, const void* src,
                             size_t bytes, int to_device) {
    const cf_device_hooks* h = cf_device_hooks_for(device_type);
    return h && h->copy ? h->copy(device_id, dst, src, bytes, to_device) : no_hooks(device_type);
}

cflash_status cf_device_sync(int device_type, int device_id) {
    const cf_device_hooks* h = cf_device_hooks_for(device_type);
    return h && h->sync ? h->sync(device_id) : no_hooks(device_type);
}
