#ifndef CLINUX_SHIM_H
#define CLINUX_SHIM_H
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <malloc.h>  // mallopt
#include <sys/prctl.h>

// struct epoll_event is packed on x86-64, which Swift does not import faithfully: these keep
// its layout on the C side. A registration is identified by a 64-bit tag.
static inline int clinux_epoll_set(int epoll, int op, int fd, uint32_t events, uint64_t tag) {
    struct epoll_event event = { .events = events, .data = { .u64 = tag } };
    return epoll_ctl(epoll, op, fd, &event);
}

static inline int clinux_epoll_copy_out(const struct epoll_event *ready, int count, uint64_t *tags, uint32_t *events) {
    for (int i = 0; i < count; i++) {
        tags[i] = ready[i].data.u64;
        events[i] = ready[i].events;
    }
    return count;
}

// Waits for up to `capacity` (at most 256) events and copies out their tags and event bits.
static inline int clinux_epoll_wait(int epoll, uint64_t *tags, uint32_t *events, int capacity, int timeout_ms) {
    struct epoll_event ready[256];
    if (capacity > 256) capacity = 256;
    return clinux_epoll_copy_out(ready, epoll_wait(epoll, ready, capacity, timeout_ms), tags, events);
}

// The same with a timeout in nanoseconds (negative: none), for waits finer than a millisecond
// (the mock model's pacer). The responder keeps epoll_wait: Debian 12's valgrind 3.19, which
// counts its instructions, answers epoll_pwait2 with ENOSYS.
static inline int clinux_epoll_wait_ns(int epoll, uint64_t *tags, uint32_t *events, int capacity, int64_t timeout_ns) {
    struct epoll_event ready[256];
    if (capacity > 256) capacity = 256;
    struct timespec timeout = { .tv_sec = timeout_ns / 1000000000, .tv_nsec = timeout_ns % 1000000000 };
    return clinux_epoll_copy_out(ready, epoll_pwait2(epoll, ready, capacity, timeout_ns < 0 ? NULL : &timeout, NULL),
                                 tags, events);
}

// prctl is variadic, which Swift cannot call. How late the calling thread's timed waits may
// end, so that the kernel can serve several with one wake-up (the mock model's pacer).
static inline int clinux_set_timer_slack(unsigned long nanoseconds) {
    return prctl(PR_SET_TIMERSLACK, nanoseconds, 0, 0, 0);
}
#endif
