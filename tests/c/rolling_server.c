/*
 * rolling_server: the real server of the rolling restart tests (tests/rolling_restart.rs behind
 * HAProxy, tests/lvs/ behind IPVS). A small TCP service embedding lbagent, as a production
 * server would:
 *
 *   - it starts its agent first (STARTING, "loading data"), loads for ROLLING_STARTUP_MS (its
 *     port is not open meanwhile), then opens its port and reports UP;
 *   - each connection sends one line and gets "ok NAME MS\n" after ROLLING_SERVICE_MS (the
 *     service's own time; MS is how long this process has been serving), then the server
 *     closes it; a connection that sends no line within REQUEST_TIMEOUT_MS is closed; the
 *     load it reports is its open connections;
 *   - on SIGTERM (waited for by the main thread with sigwait: no handler at all) it reports
 *     DRAIN and keeps serving, new connections too, while the main thread waits in
 *     lbagent_wait_drained (at most ROLLING_DRAIN_LIMIT_MS) until every director that asks
 *     was told and no connection is open; then it closes its port, reports STOPPING, stops
 *     the agent and exits.
 *
 * Without LBAGENT_CONFIG it runs without an agent, as the baseline: on SIGTERM it closes its
 * port at once, finishes the requests in progress and exits (a usual graceful shutdown).
 *
 * Usage: rolling_server NAME ADDRESS PORT    (the agent: LBAGENT_CONFIG; none without it)
 * Prints "rolling_server NAME: up" once serving, and "rolling_server NAME: drained ..." and
 * "rolling_server NAME: stopped after N requests" at the end.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lbagent.h"

#define CAPACITY 512
#define REQUEST_TIMEOUT_MS 2000

struct connection {
    int fd;
    long long opened_at;
    size_t received;
    long long answer_at; /* 0 while the request line is not complete */
    char line[128];
};

static lbagent *agent;
static const char *name;
static struct sockaddr_in address;
static long startup_ms, service_ms, drain_limit_ms;
static atomic_int closing; /* close the port, finish what is open, return */
static atomic_long served;
static int wake[2]; /* the main thread wakes the serving thread through this pipe */

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long env_ms(const char *key, long fallback) {
    const char *value = getenv(key);
    return value != NULL ? strtol(value, NULL, 10) : fallback;
}

static void say(const char *what) {
    printf("rolling_server %s: %s\n", name, what);
    fflush(stdout);
}

static int open_port(void) {
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(fd, 512) < 0 ||
        fcntl(fd, F_SETFL, O_NONBLOCK) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void finish(struct connection *c) {
    close(c->fd);
    c->fd = -1;
}

/* The serving thread: loads, opens the port, serves until the main thread says stop. */
static void *serve(void *unused) {
    static struct connection conns[CAPACITY];
    static struct pollfd fds[CAPACITY + 2];
    static int owner[CAPACITY + 2]; /* the connection behind each polled descriptor */
    long long ready_at, loaded_at = now_ms() + startup_ms;
    int listener, i;
    (void)unused;

    /* Loading data: heart-beating, port closed. */
    while (now_ms() < loaded_at && !atomic_load(&closing)) {
        if (agent != NULL) {
            (void)lbagent_heartbeat(agent);
        }
        poll(NULL, 0, 20);
    }
    listener = open_port();
    if (listener < 0) {
        perror("rolling_server: listen");
        exit(1);
    }
    for (i = 0; i < CAPACITY; i++) {
        conns[i].fd = -1;
    }
    ready_at = now_ms();
    if (agent != NULL) {
        (void)lbagent_set_state(agent, NULL, LBAGENT_STATE_UP, "ready");
    }
    say("up");

    for (;;) {
        long long now = now_ms(), next = now + 100;
        int nfds = 2, open = 0, n;
        if (atomic_load(&closing) && listener >= 0) {
            close(listener); /* new connections are refused from now on */
            listener = -1;
        }
        if (agent != NULL) {
            (void)lbagent_heartbeat(agent);
        }
        fds[0].fd = wake[0];
        fds[0].events = POLLIN;
        fds[1].fd = listener;
        fds[1].events = POLLIN;
        for (i = 0; i < CAPACITY; i++) {
            struct connection *c = &conns[i];
            if (c->fd < 0) {
                continue;
            }
            if (c->answer_at == 0 && now - c->opened_at >= REQUEST_TIMEOUT_MS) {
                finish(c); /* no request: a client (or a proxy) that went quiet */
                continue;
            }
            if (c->answer_at != 0 && now >= c->answer_at) {
                char reply[128];
                int len = snprintf(reply, sizeof reply, "ok %s %lld\n", name, now - ready_at);
                if (write(c->fd, reply, (size_t)len) == len) {
                    atomic_fetch_add(&served, 1);
                }
                finish(c);
                continue;
            }
            open++;
            if (c->answer_at != 0) {
                next = c->answer_at < next ? c->answer_at : next;
            }
            fds[nfds].fd = c->answer_at == 0 ? c->fd : -1;
            fds[nfds].events = POLLIN;
            owner[nfds] = i;
            nfds++;
        }
        if (agent != NULL) {
            (void)lbagent_set_load(agent, NULL, (uint32_t)open, CAPACITY);
        }
        if (listener < 0 && open == 0) {
            break; /* closing, and every request answered */
        }
        n = poll(fds, (nfds_t)nfds, (int)(next > now ? next - now : 0));
        if (n < 0 && errno != EINTR) {
            perror("rolling_server: poll");
            exit(1);
        }
        now = now_ms();
        if (fds[0].revents & POLLIN) {
            char byte;
            (void)!read(wake[0], &byte, 1);
        }
        if (fds[1].revents & POLLIN) {
            int k, fd;
            for (k = 0; k < 64 && (fd = accept(listener, NULL, NULL)) >= 0; k++) {
                for (i = 0; i < CAPACITY && conns[i].fd >= 0; i++) {
                }
                if (i == CAPACITY) {
                    close(fd); /* full: the client sees a closed connection */
                    continue;
                }
                conns[i].fd = fd;
                conns[i].opened_at = now;
                conns[i].received = 0;
                conns[i].answer_at = 0;
            }
        }
        for (i = 2; i < nfds; i++) {
            struct connection *c = &conns[owner[i]];
            ssize_t got;
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) {
                continue;
            }
            got = read(c->fd, c->line + c->received, sizeof c->line - 1 - c->received);
            if (got <= 0) {
                finish(c); /* the client left (or HAProxy's connect-only check) */
                continue;
            }
            c->received += (size_t)got;
            if (memchr(c->line, '\n', c->received) != NULL || c->received == sizeof c->line - 1) {
                c->answer_at = now + service_ms;
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    sigset_t signals;
    pthread_t server;
    int sig = 0;
    char text[256];
    lbagent_drain drain;
    lbagent_result r;

    if (argc != 4) {
        fprintf(stderr, "usage: rolling_server NAME ADDRESS PORT\n");
        return 64;
    }
    name = argv[1];
    memset(&address, 0, sizeof address);
    address.sin_family = AF_INET;
    address.sin_port = htons((unsigned short)atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &address.sin_addr) != 1) {
        fprintf(stderr, "rolling_server: bad address %s\n", argv[2]);
        return 64;
    }
    startup_ms = env_ms("ROLLING_STARTUP_MS", 2000);
    service_ms = env_ms("ROLLING_SERVICE_MS", 20);
    drain_limit_ms = env_ms("ROLLING_DRAIN_LIMIT_MS", 20000);
    signal(SIGPIPE, SIG_IGN);

    /* SIGTERM is waited for, never delivered: blocked in every thread, the agent's too. */
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, NULL);

    if (getenv("LBAGENT_CONFIG") != NULL) {
        if (lbagent_start(NULL, &agent) != LBAGENT_OK) {
            lbagent_last_error(text, sizeof text);
            fprintf(stderr, "rolling_server: %s\n", text);
            return 1;
        }
        (void)lbagent_set_state(agent, NULL, LBAGENT_STATE_STARTING, "loading data");
    }
    if (pipe(wake) != 0 || pthread_create(&server, NULL, serve, NULL) != 0) {
        perror("rolling_server: start");
        return 1;
    }
    say("starting");

    sigwait(&signals, &sig);
    if (agent != NULL) {
        /* Drain: directors stop sending; serve what they still send until each knows. */
        (void)lbagent_set_state(agent, NULL, LBAGENT_STATE_DRAIN, "restarting");
        r = lbagent_wait_drained(agent, NULL, (uint32_t)drain_limit_ms);
        if (lbagent_drain_status(agent, NULL, &drain) == LBAGENT_OK) {
            snprintf(text, sizeof text,
                     "%s after %u ms: %u prober(s) told, %u pending, %llu open",
                     r == LBAGENT_OK ? "drained" : "drain timed out", drain.drain_ms,
                     drain.probers_told, drain.probers_pending,
                     (unsigned long long)drain.in_use);
            say(text);
        }
    }
    atomic_store(&closing, 1);
    if (write(wake[1], "x", 1) != 1) {
        perror("rolling_server: wake");
    }
    pthread_join(server, NULL);
    if (agent != NULL) {
        (void)lbagent_set_state(agent, NULL, LBAGENT_STATE_STOPPING, "exiting");
        (void)lbagent_stop(agent, 1000);
        lbagent_free(agent);
    }
    snprintf(text, sizeof text, "stopped after %ld requests", atomic_load(&served));
    say(text);
    return 0;
}
