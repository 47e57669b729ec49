/*
 * demo_server: the reference integration of lbagent in a C server.
 *
 * A small custom-protocol TCP server (one line per request) with a poll() event loop. It
 * embeds lbagent and:
 *   - starts the agent before accepting traffic (state STARTING), warms up, then goes UP;
 *   - heart-beats once per loop iteration, so a stuck loop is caught by the watchdog;
 *   - reports its load (connected clients out of its capacity);
 *   - on SIGTERM drains from the signal handler (async-signal-safe call), keeps serving (new
 *     connections too: a director may send some until it has heard of the drain) until
 *     lbagent_drain_status says the drain is complete: every director that asks was told,
 *     and no client is connected (at most DRAIN_LIMIT_MS); then reports STOPPING and stops.
 *
 * Protocol, one request per line:
 *   PING            -> PONG
 *   INCR            -> the counter after adding one
 *   ADMIN drain|up|maint|down [reason...]   (operator commands, for the demo)
 *   ADMIN weight N  -> weight percent
 *   ADMIN hang MS   -> block the event loop for MS milliseconds (simulates a deadlock)
 *   QUIT            -> close this connection
 *
 * Usage: demo_server [TCP_PORT]   (default 7070; 0 lets the system choose)
 * The agent is configured by the LBAGENT_CONFIG environment variable (lbagent_start(NULL)),
 * for example LBAGENT_CONFIG="listen=127.0.0.1:4950 watchdog_ms=1500".
 */
#define _POSIX_C_SOURCE 200809L

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

#define MAX_CLIENTS 64
#define WARMUP_MS 1500
#define DRAIN_LIMIT_MS 15000

struct client {
    int fd;
    char buf[512];
    size_t len;
};

static lbagent *agent;
static volatile sig_atomic_t terminate_requested;

/* SIGTERM: stop taking new connections right now, from the handler itself. Only
 * async-signal-safe calls here: lbagent_set_state with NULL service and reason is one. */
static void on_sigterm(int sig) {
    (void)sig;
    (void)lbagent_set_state(agent, NULL, LBAGENT_STATE_DRAIN, NULL);
    terminate_requested = 1;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static void reply(int fd, const char *text) {
    size_t len = strlen(text);
    while (len > 0) {
        ssize_t n = write(fd, text, len);
        if (n <= 0) {
            return;
        }
        text += n;
        len -= (size_t)n;
    }
}

static void check(lbagent_result r, const char *what) {
    if (r != LBAGENT_OK) {
        fprintf(stderr, "demo_server: %s: %s\n", what, lbagent_strerror((int)r));
    }
}

/* Handles one request line; returns 0 to close the connection. */
static int handle_line(int fd, char *line, long *counter) {
    char out[128];
    if (strcmp(line, "PING") == 0) {
        reply(fd, "PONG\n");
    } else if (strcmp(line, "INCR") == 0) {
        snprintf(out, sizeof out, "%ld\n", ++*counter);
        reply(fd, out);
    } else if (strcmp(line, "QUIT") == 0) {
        return 0;
    } else if (strncmp(line, "ADMIN ", 6) == 0) {
        char *cmd = line + 6;
        char *arg = strchr(cmd, ' ');
        if (arg != NULL) {
            *arg++ = '\0';
        }
        if (strcmp(cmd, "up") == 0) {
            check(lbagent_set_state(agent, NULL, LBAGENT_STATE_UP, arg ? arg : "ready"), "up");
        } else if (strcmp(cmd, "drain") == 0) {
            check(lbagent_set_state(agent, NULL, LBAGENT_STATE_DRAIN, arg), "drain");
        } else if (strcmp(cmd, "maint") == 0) {
            check(lbagent_set_state(agent, NULL, LBAGENT_STATE_MAINT, arg), "maint");
        } else if (strcmp(cmd, "down") == 0) {
            check(lbagent_set_state(agent, NULL, LBAGENT_STATE_DOWN, arg), "down");
        } else if (strcmp(cmd, "weight") == 0 && arg != NULL) {
            check(lbagent_set_weight(agent, NULL, (unsigned)strtoul(arg, NULL, 10)), "weight");
        } else if (strcmp(cmd, "hang") == 0 && arg != NULL) {
            reply(fd, "hanging\n");
            /* A deadlock, simulated: the loop stops, so do the heartbeats. */
            sleep_ms(strtol(arg, NULL, 10));
            reply(fd, "recovered\n");
            return 1;
        } else {
            reply(fd, "ERR unknown admin command\n");
            return 1;
        }
        reply(fd, "OK\n");
    } else {
        reply(fd, "ERR unknown command\n");
    }
    return 1;
}

static int listen_tcp(int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    struct sockaddr_in addr;
    if (fd < 0) {
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 16) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 7070;
    struct client clients[MAX_CLIENTS];
    struct pollfd fds[MAX_CLIENTS + 1];
    struct sigaction sa;
    long counter = 0;
    long long started, drain_until = 0;
    uint32_t told = 0, pending = 0;
    int listener, i, ready = 0;
    uint16_t agent_port = 0;

    /* 1. Start the agent first: directors see STARTING (not ready) while we warm up. */
    if (lbagent_start(NULL, &agent) != LBAGENT_OK) {
        char msg[256];
        lbagent_last_error(msg, sizeof msg);
        fprintf(stderr, "demo_server: lbagent_start: %s\n", msg);
        return 1;
    }
    if (lbagent_local_port(agent, 0, &agent_port) == LBAGENT_OK) {
        printf("demo_server: agent on UDP port %u (lbagent %s)\n", agent_port, lbagent_version());
    }
    check(lbagent_set_state(agent, NULL, LBAGENT_STATE_STARTING, "loading data"), "starting");

    listener = listen_tcp(port);
    if (listener < 0) {
        perror("demo_server: listen");
        lbagent_free(agent);
        return 1;
    }
    {
        struct sockaddr_in bound;
        socklen_t len = sizeof bound;
        if (getsockname(listener, (struct sockaddr *)&bound, &len) == 0) {
            port = ntohs(bound.sin_port); /* the real port when 0 was asked */
        }
    }
    printf("demo_server: serving TCP 127.0.0.1:%d\n", port);
    fflush(stdout);

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigterm;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client that left must not kill the server */

    for (i = 0; i < MAX_CLIENTS; i++) {
        clients[i].fd = -1;
    }
    started = now_ms();

    /* 2. The event loop: one heartbeat per iteration. */
    for (;;) {
        int nfds = 0, connected = 0, n;
        long long now = now_ms();

        (void)lbagent_heartbeat(agent);

        if (!ready && now - started >= WARMUP_MS) {
            ready = 1;
            check(lbagent_set_state(agent, NULL, LBAGENT_STATE_UP, "ready"), "up");
        }
        if (terminate_requested && drain_until == 0) {
            /* The handler already drained; add the reason. Keep accepting: a director sends
             * new connections until it has heard of the drain. */
            check(lbagent_set_state(agent, NULL, LBAGENT_STATE_DRAIN, "shutting down"), "drain");
            drain_until = now + DRAIN_LIMIT_MS;
            printf("demo_server: SIGTERM: draining (at most %d ms)\n", DRAIN_LIMIT_MS);
            fflush(stdout);
        }
        if (drain_until != 0) {
            /* Done when every director that asks was told, and no client is connected. */
            lbagent_drain drain;
            if (lbagent_drain_status(agent, NULL, &drain) == LBAGENT_OK) {
                if (drain.complete) {
                    printf("demo_server: drain complete after %u ms: %u prober(s) told\n",
                           drain.drain_ms, drain.probers_told);
                    break;
                }
                if (drain.probers_told != told || drain.probers_pending != pending) {
                    told = drain.probers_told;
                    pending = drain.probers_pending;
                    printf("demo_server: draining: %u of %u prober(s) told, %llu client(s)\n",
                           told, told + pending, (unsigned long long)drain.in_use);
                    fflush(stdout);
                }
            }
            if (now >= drain_until) {
                printf("demo_server: drain not complete after %d ms: stopping anyway\n",
                       DRAIN_LIMIT_MS);
                break;
            }
        }

        fds[nfds].fd = listener;
        fds[nfds].events = POLLIN;
        nfds++;
        for (i = 0; i < MAX_CLIENTS; i++) {
            fds[nfds].fd = clients[i].fd;
            fds[nfds].events = POLLIN;
            nfds++;
            connected += clients[i].fd >= 0;
        }
        check(lbagent_set_load(agent, NULL, (uint32_t)connected, MAX_CLIENTS), "load");

        n = poll(fds, (nfds_t)nfds, 100);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("demo_server: poll");
            break;
        }
        if (fds[0].revents & POLLIN) {
            int fd = accept(listener, NULL, NULL);
            for (i = 0; fd >= 0 && i < MAX_CLIENTS && clients[i].fd >= 0; i++) {
            }
            if (fd >= 0 && i < MAX_CLIENTS) {
                clients[i].fd = fd;
                clients[i].len = 0;
            } else if (fd >= 0) {
                close(fd);
            }
        }
        for (i = 0; i < MAX_CLIENTS; i++) {
            struct client *c = &clients[i];
            ssize_t got;
            char *nl;
            int keep = 1;
            if (c->fd < 0 || !(fds[i + 1].revents & (POLLIN | POLLHUP | POLLERR))) {
                continue;
            }
            got = read(c->fd, c->buf + c->len, sizeof c->buf - 1 - c->len);
            if (got <= 0) {
                keep = 0;
            } else {
                c->len += (size_t)got;
                c->buf[c->len] = '\0';
                while (keep && (nl = strchr(c->buf, '\n')) != NULL) {
                    *nl = '\0';
                    if (nl > c->buf && nl[-1] == '\r') {
                        nl[-1] = '\0';
                    }
                    keep = handle_line(c->fd, c->buf, &counter);
                    c->len -= (size_t)(nl + 1 - c->buf);
                    memmove(c->buf, nl + 1, c->len + 1);
                }
                if (c->len == sizeof c->buf - 1) {
                    keep = 0; /* line too long */
                }
            }
            if (!keep) {
                close(c->fd);
                c->fd = -1;
            }
        }
    }

    /* 3. Shutdown: say STOPPING, then stop answering and free the agent. */
    check(lbagent_set_state(agent, NULL, LBAGENT_STATE_STOPPING, "exiting"), "stopping");
    for (i = 0; i < MAX_CLIENTS; i++) {
        if (clients[i].fd >= 0) {
            close(clients[i].fd);
        }
    }
    close(listener);
    check(lbagent_stop(agent, 1000), "stop");
    lbagent_free(agent);
    printf("demo_server: stopped after %ld requests\n", counter);
    return 0;
}
