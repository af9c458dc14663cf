#ifndef CLINUX_SHIM_H
#define CLINUX_SHIM_H
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>  // the mock model's pacer
#include <malloc.h>  // mallopt

// struct epoll_event is packed on x86-64, which Swift does not import faithfully: these keep
// its layout on the C side. A registration is identified by a 64-bit tag.
static inline int clinux_epoll_set(int epoll, int op, int fd, uint32_t events, uint64_t tag) {
    struct epoll_event event = { .events = events, .data = { .u64 = tag } };
    return epoll_ctl(epoll, op, fd, &event);
}

// Waits for up to `capacity` (at most 256) events and copies out their tags and event bits.
static inline int clinux_epoll_wait(int epoll, uint64_t *tags, uint32_t *events, int capacity, int timeout_ms) {
    struct epoll_event ready[256];
    if (capacity > 256) capacity = 256;
    int count = epoll_wait(epoll, ready, capacity, timeout_ms);
    for (int i = 0; i < count; i++) {
        tags[i] = ready[i].data.u64;
        events[i] = ready[i].events;
    }
    return count;
}
#endif
