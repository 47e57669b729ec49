/*
 * dlopen_host: a legacy-style server that uses lbagent only when it is installed.
 *
 * The program has no link-time dependency on lbagent. At start it loads the library with
 * dlopen(), resolves the functions it uses into a table of function pointers with dlsym(),
 * and checks every one. When the library is absent, lacks a function, or the agent cannot
 * start, it writes exactly one line on stderr and keeps serving, unmonitored: monitoring is
 * optional for this host, its service is not.
 *
 * The service is a UDP echo on 127.0.0.1 with a poll() loop that heart-beats once per
 * iteration. SIGTERM drains from the signal handler (through the table: the call is
 * async-signal-safe); the loop keeps echoing until lbagent_drain_status says every director
 * that asks has been told (at most DRAIN_LIMIT_MS), then reports STOPPING and exits.
 *
 * Usage: dlopen_host [UDP_PORT]           (default 7071; 0 lets the system choose)
 *   LBAGENT_LIBRARY  the library to load (default: the soname liblbagent.so.0, found through
 *                    LD_LIBRARY_PATH and the system's library paths)
 *   LBAGENT_CONFIG   the agent's configuration (lbagent_start(NULL, ...))
 *
 * Unloading: the library is linked with -z nodelete, so dlclose() never unmaps it (its
 * monitor thread could still be running library code). This host stops and frees its agent
 * first, forgets the function pointers, then calls dlclose(); it never calls into the
 * library afterwards. That order is right for any library that runs threads.
 *
 * lbagent.h is needed at build time only, for its types; the table's types are checked
 * against the header's prototypes at compile time (see check_table_types).
 */
#define _GNU_SOURCE /* dladdr, RTLD_NOLOAD */

#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lbagent.h"

#define DEFAULT_LIBRARY "liblbagent.so.0"
#define DRAIN_LIMIT_MS 10000

/* The functions this host uses, resolved at run time. All set, or the agent is not used. */
struct lbagent_api {
    void *library;
    lbagent_result (*start)(const char *config, lbagent **out);
    lbagent_result (*set_state)(lbagent *agent, const char *service, int state,
                                const char *reason);
    lbagent_result (*heartbeat)(lbagent *agent);
    lbagent_result (*local_port)(const lbagent *agent, size_t index, uint16_t *out);
    lbagent_result (*drain_status)(const lbagent *agent, const char *service, lbagent_drain *out);
    lbagent_result (*stop)(lbagent *agent, uint32_t timeout_ms);
    void (*free)(lbagent *agent);
    size_t (*last_error)(char *buf, size_t len);
    const char *(*version)(void);
};

static struct lbagent_api api;
static lbagent *agent; /* NULL: running unmonitored */
static volatile sig_atomic_t terminate_requested;

/* Compile-time only: assigning each function to its field inside sizeof is not evaluated
 * (the program does not link against lbagent), but a type that differs from the header's
 * prototype is a compile error under -Werror. */
static void check_table_types(void) {
    struct lbagent_api t;
    (void)sizeof(t.start = lbagent_start);
    (void)sizeof(t.set_state = lbagent_set_state);
    (void)sizeof(t.heartbeat = lbagent_heartbeat);
    (void)sizeof(t.local_port = lbagent_local_port);
    (void)sizeof(t.drain_status = lbagent_drain_status);
    (void)sizeof(t.stop = lbagent_stop);
    (void)sizeof(t.free = lbagent_free);
    (void)sizeof(t.last_error = lbagent_last_error);
    (void)sizeof(t.version = lbagent_version);
}

_Static_assert(sizeof(void *) == sizeof(void (*)(void)), "POSIX: dlsym returns functions");

/* Looks up one symbol into a table field (memcpy: ISO C has no object-to-function pointer
 * cast). Returns 0 and describes the problem in `why` when it is missing. */
static int resolve(const char *name, void *field, size_t size, char *why, size_t why_len) {
    void *symbol;
    dlerror();
    symbol = dlsym(api.library, name);
    if (symbol == NULL) {
        snprintf(why, why_len, "missing symbol %s", name);
        return 0;
    }
    memcpy(field, &symbol, size);
    return 1;
}

#define RESOLVE(field, name) resolve(name, &api.field, sizeof api.field, why, why_len)

/* Loads the library and fills the table; on failure closes it again and explains in `why`. */
static int load_lbagent(const char *path, char *why, size_t why_len) {
    api.library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (api.library == NULL) {
        snprintf(why, why_len, "%s", dlerror());
        return 0;
    }
    if (RESOLVE(start, "lbagent_start") && RESOLVE(set_state, "lbagent_set_state") &&
        RESOLVE(heartbeat, "lbagent_heartbeat") && RESOLVE(local_port, "lbagent_local_port") &&
        RESOLVE(drain_status, "lbagent_drain_status") &&
        RESOLVE(stop, "lbagent_stop") && RESOLVE(free, "lbagent_free") &&
        RESOLVE(last_error, "lbagent_last_error") && RESOLVE(version, "lbagent_version")) {
        return 1;
    }
    dlclose(api.library);
    memset(&api, 0, sizeof api);
    return 0;
}

/* Stops and frees the agent, then closes the library. Nothing calls into it afterwards. */
static void unload_lbagent(void) {
    const char *path = getenv("LBAGENT_LIBRARY");
    void *again;
    if (api.library == NULL) {
        return;
    }
    if (agent != NULL) {
        (void)api.set_state(agent, NULL, LBAGENT_STATE_STOPPING, "exiting");
        (void)api.stop(agent, 1000);
        api.free(agent);
        agent = NULL;
    }
    dlclose(api.library);
    memset(&api, 0, sizeof api);
    /* Shown for the demonstration: dlclose() left the library mapped (-z nodelete). */
    again = dlopen(path != NULL && *path != '\0' ? path : DEFAULT_LIBRARY,
                   RTLD_NOW | RTLD_NOLOAD);
    printf("dlopen_host: library closed; still mapped after dlclose: %s\n",
           again != NULL ? "yes (nodelete)" : "no");
    if (again != NULL) {
        dlclose(again);
    }
}

/* Starts monitoring if it can; otherwise logs exactly one line and returns. */
static void start_monitoring(void) {
    const char *path = getenv("LBAGENT_LIBRARY");
    char why[512];
    uint16_t port = 0;
    Dl_info where;

    if (path == NULL || *path == '\0') {
        path = DEFAULT_LIBRARY;
    }
    if (!load_lbagent(path, why, sizeof why)) {
        fprintf(stderr, "dlopen_host: lbagent unavailable (%s): serving unmonitored\n", why);
        return;
    }
    if (api.start(NULL, &agent) != LBAGENT_OK) {
        api.last_error(why, sizeof why);
        fprintf(stderr, "dlopen_host: lbagent did not start (%s): serving unmonitored\n", why);
        agent = NULL;
        unload_lbagent();
        return;
    }
    (void)api.set_state(agent, NULL, LBAGENT_STATE_STARTING, "loading");
    (void)api.local_port(agent, 0, &port);
    memset(&where, 0, sizeof where);
    /* dladdr wants an object pointer; copy the function pointer's bytes (see resolve). */
    {
        void *address;
        memcpy(&address, &api.start, sizeof address);
        dladdr(address, &where);
    }
    printf("dlopen_host: lbagent %s from %s, agent on UDP port %u\n", api.version(),
           where.dli_fname != NULL ? where.dli_fname : path, port);
}

static void on_sigterm(int sig) {
    (void)sig;
    if (agent != NULL) {
        (void)api.set_state(agent, NULL, LBAGENT_STATE_DRAIN, NULL); /* async-signal-safe */
    }
    terminate_requested = 1;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int open_udp(int port) {
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        return -1;
    }
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) < 0) {
        close(fd);
        return -1;
    }
    printf("dlopen_host: echo on UDP 127.0.0.1:%u\n", ntohs(addr.sin_port));
    return fd;
}

int main(int argc, char **argv) {
    struct sigaction sa;
    struct pollfd pfd;
    long long stop_at = 0;
    long echoed = 0;
    int fd;

    check_table_types();
    setvbuf(stdout, NULL, _IOLBF, 0);
    start_monitoring();

    fd = open_udp(argc > 1 ? atoi(argv[1]) : 7071);
    if (fd < 0) {
        perror("dlopen_host: socket");
        unload_lbagent();
        return 1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigterm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    if (agent != NULL) {
        (void)api.set_state(agent, NULL, LBAGENT_STATE_UP, "ready");
    }

    pfd.fd = fd;
    pfd.events = POLLIN;
    for (;;) {
        char buf[1500];
        struct sockaddr_storage from;
        socklen_t from_len = sizeof from;
        ssize_t n;

        if (agent != NULL) {
            (void)api.heartbeat(agent);
        }
        if (terminate_requested && stop_at == 0) {
            if (agent != NULL) {
                (void)api.set_state(agent, NULL, LBAGENT_STATE_DRAIN, "shutting down");
            }
            stop_at = now_ms() + DRAIN_LIMIT_MS;
        }
        if (stop_at != 0) {
            /* Unmonitored, nobody needs telling; monitored, every director that asks. */
            lbagent_drain drain;
            if (agent == NULL || (api.drain_status(agent, NULL, &drain) == LBAGENT_OK &&
                                  drain.complete)) {
                break;
            }
            if (now_ms() >= stop_at) {
                break;
            }
        }
        if (poll(&pfd, 1, 100) <= 0) {
            continue; /* timeout, or EINTR from SIGTERM */
        }
        n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &from_len);
        if (n >= 0 && sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, from_len) == n) {
            echoed++;
        }
    }

    close(fd);
    unload_lbagent();
    printf("dlopen_host: stopped after %ld echoes\n", echoed);
    return 0;
}
