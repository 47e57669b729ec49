/*
 * prober: the C prober's promises, checked from C (run plainly and under valgrind by
 * tests/c_programs.rs). lbagent_probe against a real agent in every state and against a
 * closed and a silent port; then an event loop around lbagent_prober that serves, in the
 * same loop, two impostors (a text service and an agent of another protocol version) and
 * collects more than a hundred probes with a small result array. Also NULL and bad input.
 */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lbagent.h"

static int checks, failures;

#define CHECK(cond)                                                                \
    do {                                                                           \
        checks++;                                                                  \
        if (!(cond)) {                                                             \
            failures++;                                                            \
            fprintf(stderr, "prober.c:%d: check failed: %s\n", __LINE__, #cond); \
        }                                                                          \
    } while (0)

static int last_error_contains(const char *needle) {
    char msg[512];
    lbagent_last_error(msg, sizeof msg);
    if (strstr(msg, needle) == NULL) {
        fprintf(stderr, "  last error \"%s\" lacks \"%s\"\n", msg, needle);
        return 0;
    }
    return 1;
}

/* A UDP socket bound to 127.0.0.1 on a port chosen by the system. */
static int udp_socket(uint16_t *port) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&a, sizeof a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    *port = ntohs(a.sin_port);
    return fd;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void target(char *buf, size_t len, uint16_t port) {
    snprintf(buf, len, "127.0.0.1:%u", (unsigned)port);
}

static void blocking(lbagent *agent, const char *agent_target, const char *closed,
                     const char *silent) {
    lbagent_status st;
    memset(&st, 0, sizeof st);

    CHECK(lbagent_probe(agent_target, NULL, "timeout_ms=3000", &st) == LBAGENT_OK);
    CHECK(st.state == LBAGENT_STATE_UP && st.weight_pct == 100);
    CHECK(st.instance_id != 0);

    CHECK(lbagent_set_state(agent, NULL, LBAGENT_STATE_DRAIN, "deploy") == LBAGENT_OK);
    CHECK(lbagent_probe(agent_target, "", NULL, &st) == LBAGENT_OK);
    CHECK(st.state == LBAGENT_STATE_DRAIN && strcmp(st.message, "deploy") == 0);
    CHECK(lbagent_set_state(agent, NULL, LBAGENT_STATE_UP, "ready") == LBAGENT_OK);
    CHECK(lbagent_set_weight(agent, "game", 50) == LBAGENT_OK);
    CHECK(lbagent_probe(agent_target, "game", NULL, &st) == LBAGENT_OK);
    CHECK(st.state == LBAGENT_STATE_UP && st.weight_pct == 50);
    CHECK(lbagent_probe(agent_target, "nope", NULL, &st) == LBAGENT_OK);
    CHECK(st.state == LBAGENT_STATE_UNKNOWN && st.reason == LBAGENT_REASON_UNKNOWN_SERVICE);

    /* Failures say what happened; *out is untouched. */
    st.state = 42;
    CHECK(lbagent_probe(closed, NULL, NULL, &st) == LBAGENT_ERR_REFUSED);
    CHECK(last_error_contains("refused"));
    CHECK(lbagent_probe(silent, NULL, "timeout_ms=200", &st) == LBAGENT_ERR_TIMEOUT);
    CHECK(last_error_contains("no answer within 200 ms"));
    CHECK(st.state == 42);

    /* Bad input. */
    CHECK(lbagent_probe(NULL, NULL, NULL, &st) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_probe(agent_target, NULL, NULL, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_probe(agent_target, NULL, "timeout_ms=0", &st) == LBAGENT_ERR_CONFIG);
    CHECK(last_error_contains("\"timeout_ms\""));
    CHECK(lbagent_probe(agent_target, NULL, "colour=blue", &st) == LBAGENT_ERR_CONFIG);
    CHECK(last_error_contains("unknown key \"colour\""));
    CHECK(lbagent_probe("127.0.0.1:99999", NULL, NULL, &st) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(lbagent_probe(agent_target, "bad\nname", NULL, &st) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(st.state == 42);
    CHECK(strcmp(lbagent_strerror(LBAGENT_ERR_NOT_AN_AGENT), "unknown result code") != 0);
    CHECK(strcmp(lbagent_strerror(LBAGENT_ERR_AUTH_REQUIRED), "unknown result code") != 0);
}

static void misuse(void) {
    lbagent_prober *p = NULL;
    lbagent_probe_result r[2];
    size_t count = 99;

    CHECK(lbagent_prober_new(NULL, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_prober_new("timeout_ms=soon", &p) == LBAGENT_ERR_CONFIG);
    CHECK(last_error_contains("\"soon\""));
    CHECK(p == NULL);
    CHECK(lbagent_prober_fd(NULL) == -1);
    CHECK(lbagent_prober_send(NULL, "127.0.0.1", NULL, 1) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_prober_receive(NULL, r, 2, &count) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_prober_timeout_ms(NULL) == -1);
    CHECK(lbagent_prober_pending(NULL) == 0);
    lbagent_prober_free(NULL); /* a no-op */

    CHECK(lbagent_prober_new(NULL, &p) == LBAGENT_OK);
    CHECK(lbagent_prober_fd(p) >= 0);
    CHECK(lbagent_prober_send(p, NULL, NULL, 1) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_prober_send(p, "localhost:4950", NULL, 1) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(last_error_contains("names are not resolved"));
    CHECK(lbagent_prober_send(p, "127.0.0.1:0", NULL, 1) == LBAGENT_ERR_INVALID_ARGUMENT);
    CHECK(lbagent_prober_receive(p, NULL, 2, &count) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(lbagent_prober_receive(p, r, 2, NULL) == LBAGENT_ERR_NULL_ARGUMENT);
    CHECK(count == 99);
    CHECK(lbagent_prober_receive(p, NULL, 0, &count) == LBAGENT_OK && count == 0);
    CHECK(lbagent_prober_pending(p) == 0);
    CHECK(lbagent_prober_timeout_ms(p) == -1);
    /* A prober freed with probes in flight leaks nothing (valgrind checks). */
    CHECK(lbagent_prober_send(p, "127.0.0.1:9", NULL, 1) == LBAGENT_OK);
    CHECK(lbagent_prober_pending(p) == 1);
    lbagent_prober_free(p);
}

/* Serves one datagram on an impostor socket: a text line, or an ERROR of another version. */
static void impostor_answer(int fd, int as_error) {
    unsigned char buf[600];
    struct sockaddr_storage from;
    socklen_t len = sizeof from;
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    if (n < 16)
        return;
    if (as_error) {
        unsigned char err[18];
        memcpy(err, "LBAP", 4);
        err[4] = 1;                 /* the highest version the "agent" speaks */
        err[5] = 3;                 /* ERROR */
        err[6] = err[7] = 0;        /* flags */
        memcpy(err + 8, buf + 8, 8); /* the nonce */
        err[16] = 0;
        err[17] = 1; /* unsupported version */
        sendto(fd, err, sizeof err, 0, (struct sockaddr *)&from, len);
    } else {
        sendto(fd, "hello\n", 6, 0, (struct sockaddr *)&from, len);
    }
}

#define AGENT_PROBES 120
#define TOKEN_CLOSED 1000
#define TOKEN_SILENT 1001
#define TOKEN_TEXT 1002
#define TOKEN_VERSION 1003

static void event_loop(const char *agent_target, const char *closed, const char *silent) {
    lbagent_prober *p = NULL;
    lbagent_probe_result results[7]; /* smaller than what finishes at once */
    int seen[AGENT_PROBES] = {0};
    int seen_closed = 0, seen_silent = 0, seen_text = 0, seen_version = 0, other = 0;
    uint16_t text_port, version_port;
    int text_fd = udp_socket(&text_port);
    int version_fd = udp_socket(&version_port);
    char text_target[64], version_target[64];
    double deadline = now_s() + 20.0;
    int i;

    target(text_target, sizeof text_target, text_port);
    target(version_target, sizeof version_target, version_port);
    CHECK(lbagent_prober_new("timeout_ms=500", &p) == LBAGENT_OK);
    for (i = 0; i < AGENT_PROBES; i++) {
        const char *service = (i % 3 == 0) ? NULL : (i % 3 == 1) ? "game" : "nope";
        CHECK(lbagent_prober_send(p, agent_target, service, (uint64_t)i) == LBAGENT_OK);
    }
    CHECK(lbagent_prober_send(p, closed, NULL, TOKEN_CLOSED) == LBAGENT_OK);
    CHECK(lbagent_prober_send(p, silent, NULL, TOKEN_SILENT) == LBAGENT_OK);
    CHECK(lbagent_prober_send(p, text_target, NULL, TOKEN_TEXT) == LBAGENT_OK);
    CHECK(lbagent_prober_send(p, version_target, NULL, TOKEN_VERSION) == LBAGENT_OK);
    CHECK(lbagent_prober_pending(p) == AGENT_PROBES + 4);
    CHECK(lbagent_prober_timeout_ms(p) > 0);

    while (lbagent_prober_pending(p) > 0 && now_s() < deadline) {
        struct pollfd fds[3];
        size_t count, k;
        fds[0].fd = lbagent_prober_fd(p);
        fds[1].fd = text_fd;
        fds[2].fd = version_fd;
        for (k = 0; k < 3; k++)
            fds[k].events = POLLIN;
        if (poll(fds, 3, lbagent_prober_timeout_ms(p)) < 0)
            continue;
        if (fds[1].revents & POLLIN)
            impostor_answer(text_fd, 0);
        if (fds[2].revents & POLLIN)
            impostor_answer(version_fd, 1);
        do {
            CHECK(lbagent_prober_receive(p, results, 7, &count) == LBAGENT_OK);
            for (k = 0; k < count; k++) {
                const lbagent_probe_result *r = &results[k];
                if (r->token < AGENT_PROBES) {
                    int want = (r->token % 3 == 2) ? LBAGENT_STATE_UNKNOWN : LBAGENT_STATE_UP;
                    seen[r->token]++;
                    CHECK(r->result == LBAGENT_OK);
                    CHECK(r->status.state == want);
                    CHECK(r->rtt_us > 0);
                } else if (r->token == TOKEN_CLOSED) {
                    seen_closed++;
                    CHECK(r->result == LBAGENT_ERR_REFUSED);
                } else if (r->token == TOKEN_SILENT) {
                    seen_silent++;
                    CHECK(r->result == LBAGENT_ERR_TIMEOUT);
                    CHECK(r->status.state == 0 && r->status.message[0] == 0);
                } else if (r->token == TOKEN_TEXT) {
                    seen_text++;
                    CHECK(r->result == LBAGENT_ERR_NOT_AN_AGENT);
                } else if (r->token == TOKEN_VERSION) {
                    seen_version++;
                    CHECK(r->result == LBAGENT_ERR_VERSION_MISMATCH);
                } else {
                    other++;
                }
            }
        } while (count == 7);
    }
    /* Every probe finished exactly once. */
    CHECK(lbagent_prober_pending(p) == 0);
    for (i = 0; i < AGENT_PROBES; i++)
        CHECK(seen[i] == 1);
    CHECK(seen_closed == 1 && seen_silent == 1 && seen_text == 1 && seen_version == 1);
    CHECK(other == 0);
    CHECK(lbagent_prober_timeout_ms(p) == -1);
    lbagent_prober_free(p);
    close(text_fd);
    close(version_fd);
}

int main(void) {
    lbagent *agent = NULL;
    uint16_t port = 0, closed_port, silent_port;
    char agent_target[64], closed[64], silent[64];
    int closed_fd = udp_socket(&closed_port);
    int silent_fd = udp_socket(&silent_port);

    close(closed_fd); /* nothing listens there now: ICMP port unreachable */
    target(closed, sizeof closed, closed_port);
    target(silent, sizeof silent, silent_port);
    if (lbagent_start("listen=127.0.0.1:0 services=game initial_state=up rate_per_source=0", &agent) != LBAGENT_OK ||
        lbagent_local_port(agent, 0, &port) != LBAGENT_OK) {
        fprintf(stderr, "prober.c: cannot start an agent\n");
        return 1;
    }
    target(agent_target, sizeof agent_target, port);

    blocking(agent, agent_target, closed, silent);
    misuse();
    event_loop(agent_target, closed, silent);

    CHECK(lbagent_stop(agent, 5000) == LBAGENT_OK);
    lbagent_free(agent);
    close(silent_fd);
    printf("prober.c: %d checks, %d failed\n", checks, failures);
    return failures == 0 ? 0 : 1;
}
