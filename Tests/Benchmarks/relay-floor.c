/*
 * The least CPU a relay of streamed records can cost on this machine: what any responder pays
 * per chunk for the kernel's sockets and its own wake-ups, before libcurl, parsing or FastCGI.
 *
 * Three processes, as in bench.py's nginx path: a producer (the model) sends 150-byte records
 * over loopback TCP on STREAMS connections, each every INTERVAL_MS, spread evenly; it sleeps
 * until the next record falls due and sends every record due by then, waking at most 50 us late
 * (the mock's pacer does the same). The relay (this process) waits in epoll_wait, reads each
 * record from its TCP socket, optionally polls the socket as libcurl 7.88 does after every
 * read, and writes it to a Unix socket; a consumer (nginx) reads those. The relay's CPU time (user + system, getrusage) divided by the records it relayed is the figure.
 *
 *     gcc -O2 -o relay-floor Tests/Benchmarks/relay-floor.c
 *     ./relay-floor STREAMS INTERVAL_MS SECONDS [POLL_AFTER_READ=1]
 *
 * Tests/Benchmarks/relay-floor builds it and runs the loads bench.py measures.
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { RECORD_BYTES = 150, BATCH = 256 };

static double cpu_microseconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6 + usage.ru_utime.tv_usec + usage.ru_stime.tv_usec;
}

static double now_microseconds(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1e6 + now.tv_nsec / 1e3;
}

static void fail(const char *what) {
    perror(what);
    exit(1);
}

/* Record k goes to stream k % streams at start + k * interval / streams; returns how many were
 * sent. A socket too full to take a record means the relay fell behind: the run fails. */
static long produce(const int *model_side, int streams, double interval_us, double seconds) {
    char record[RECORD_BYTES];
    memset(record, 'x', sizeof record);
    prctl(PR_SET_TIMERSLACK, 50000UL);
    double start = now_microseconds(), step = interval_us / streams;
    long k = 0, total = (long)(seconds * 1e6 / step);
    while (k < total) {
        double due = start + k * step;
        struct timespec until = {(time_t)(due / 1e6), (long)((due - (double)(time_t)(due / 1e6) * 1e6) * 1000)};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
        for (double now = now_microseconds(); k < total && start + k * step <= now; k++)
            if (send(model_side[k % streams], record, sizeof record, MSG_DONTWAIT) != sizeof record) fail("send");
    }
    return k;
}

static void consume(const int *sinks, int streams, double seconds) {
    int epoll = epoll_create1(0);
    for (int i = 0; i < streams; i++)
        epoll_ctl(epoll, EPOLL_CTL_ADD, sinks[i], &(struct epoll_event){.events = EPOLLIN, .data.fd = sinks[i]});
    char buffer[4096];
    struct epoll_event events[BATCH];
    for (double start = now_microseconds(); now_microseconds() - start < seconds * 1e6;) {
        int ready = epoll_wait(epoll, events, BATCH, 200);
        for (int j = 0; j < ready; j++) (void)!read(events[j].data.fd, buffer, sizeof buffer);
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s STREAMS INTERVAL_MS SECONDS [POLL_AFTER_READ=1]\n", argv[0]);
        return 2;
    }
    int streams = atoi(argv[1]);
    double interval_us = atof(argv[2]) * 1000, seconds = atof(argv[3]);
    int poll_after_read = argc > 4 ? atoi(argv[4]) : 1;
    struct rlimit files;
    getrlimit(RLIMIT_NOFILE, &files);
    files.rlim_cur = files.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &files) || files.rlim_cur < (rlim_t)streams * 4 + 16) {
        fprintf(stderr, "%d streams need %d descriptors; the limit is %lu\n", streams, streams * 4 + 16,
                (unsigned long)files.rlim_cur);
        return 1;
    }

    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t length = sizeof address;
    if (bind(listener, (void *)&address, sizeof address) || listen(listener, 4096) ||
        getsockname(listener, (void *)&address, &length))
        fail("listen");
    int *model_side = calloc(streams, sizeof(int)), *relay_in = calloc(streams, sizeof(int));
    int *relay_out = calloc(streams, sizeof(int)), *sinks = calloc(streams, sizeof(int));
    for (int i = 0; i < streams; i++) {
        int one = 1, pair[2];
        model_side[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(model_side[i], (void *)&address, sizeof address)) fail("connect");
        setsockopt(model_side[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if ((relay_in[i] = accept(listener, NULL, NULL)) < 0) fail("accept");
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair)) fail("socketpair");
        relay_out[i] = pair[0];
        sinks[i] = pair[1];
    }

    int sent_count[2];
    if (pipe(sent_count)) fail("pipe");
    pid_t producer = fork();
    if (producer == 0) {
        long sent = produce(model_side, streams, interval_us, seconds);
        if (write(sent_count[1], &sent, sizeof sent) != sizeof sent) fail("write");
        _exit(0);
    }
    pid_t consumer = fork();
    if (consumer == 0) {
        consume(sinks, streams, seconds + 1);
        _exit(0);
    }

    int epoll = epoll_create1(0);
    for (int i = 0; i < streams; i++)
        epoll_ctl(epoll, EPOLL_CTL_ADD, relay_in[i], &(struct epoll_event){.events = EPOLLIN, .data.u32 = i});
    char buffer[4096];
    struct epoll_event events[BATCH];
    long bytes = 0, wakeups = 0;
    double cpu_before = cpu_microseconds();
    for (double start = now_microseconds(); now_microseconds() - start < (seconds + 0.5) * 1e6;) {
        int ready = epoll_wait(epoll, events, BATCH, 200);
        if (ready <= 0) continue;
        wakeups++;
        for (int j = 0; j < ready; j++) {
            int stream = events[j].data.u32;
            ssize_t got = recv(relay_in[stream], buffer, sizeof buffer, 0);
            if (got <= 0) continue;
            bytes += got;
            if (poll_after_read) poll(&(struct pollfd){relay_in[stream], POLLIN, 0}, 1, 0);
            if (write(relay_out[stream], buffer, got) != got) fail("write");
        }
    }
    double cpu = cpu_microseconds() - cpu_before;
    int status;
    long sent = 0, records = bytes / RECORD_BYTES;
    waitpid(consumer, NULL, 0);
    if (waitpid(producer, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
        read(sent_count[0], &sent, sizeof sent) != sizeof sent) {
        fprintf(stderr, "the producer failed\n");
        return 1;
    }
    if (records == 0 || records != sent) {
        fprintf(stderr, "relayed %ld records of %ld sent\n", records, sent);
        return 1;
    }
    printf("%d streams, a record every %.0f ms each: %ld records, %.2f per wake-up, relay %.2f us of CPU per record"
           " (poll after read: %s)\n",
           streams, interval_us / 1000, records, (double)records / wakeups, cpu / records, poll_after_read ? "yes" : "no");
    return 0;
}
