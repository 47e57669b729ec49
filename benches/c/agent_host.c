/* The C server of `make bench` (benches/probe_path): hosts an agent the way a server does and
 * lets the benchmark drive it. Linked with -llbagent like any host.
 *
 *   agent_host 'CONFIG'
 *
 * At start it prints "rss_before KIB" (resident memory before lbagent_start), starts the
 * agent with CONFIG, prints "rss_after KIB", then "udp PORT", "tcp PORT" and "http PORT" (0
 * when not configured) and "ready". Then it obeys one command per line on stdin, and answers
 * each with one line:
 *
 *   rss     "rss KIB": resident memory now
 *   down    lbagent_set_state(DOWN); "at NS": CLOCK_MONOTONIC just before the call
 *   up      lbagent_set_state(UP) and a heartbeat; "at NS" likewise
 *   beat    lbagent_heartbeat; "at NS" likewise (then no heartbeat until the next command:
 *           with watchdog_ms=, this is the last heartbeat before a hang)
 *   quit    stops and frees the agent, "bye", exits (also at the end of stdin)
 *
 * Between commands the main thread sleeps in read(): only the agent's own threads run. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>

#include "lbagent.h"

static long rss_kib(void) {
    char line[256];
    long kib = -1;
    FILE *f = fopen("/proc/self/status", "r");
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
        }
    }
    if (f != NULL) {
        fclose(f);
    }
    return kib;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static unsigned port(lbagent_result (*get)(const lbagent *, uintptr_t, uint16_t *), lbagent *a) {
    uint16_t p = 0;
    return get(a, 0, &p) == LBAGENT_OK ? p : 0;
}

int main(int argc, char **argv) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (argc != 2) {
        fprintf(stderr, "usage: agent_host CONFIG\n");
        return 2;
    }
    lbagent *agent = NULL;
    printf("rss_before %ld\n", rss_kib());
    if (lbagent_start(argv[1], &agent) != LBAGENT_OK) {
        char msg[256];
        lbagent_last_error(msg, sizeof msg);
        fprintf(stderr, "agent_host: %s\n", msg);
        return 1;
    }
    printf("rss_after %ld\n", rss_kib());
    printf("udp %u\ntcp %u\nhttp %u\nready\n", port(lbagent_local_port, agent),
           port(lbagent_tcp_agent_port, agent), port(lbagent_http_port, agent));
    fflush(stdout);
    char cmd[64];
    while (fgets(cmd, sizeof cmd, stdin) != NULL) {
        uint64_t at = now_ns();
        if (strcmp(cmd, "rss\n") == 0) {
            printf("rss %ld\n", rss_kib());
        } else if (strcmp(cmd, "down\n") == 0) {
            (void)lbagent_set_state(agent, NULL, LBAGENT_STATE_DOWN, NULL);
            printf("at %llu\n", (unsigned long long)at);
        } else if (strcmp(cmd, "up\n") == 0) {
            (void)lbagent_set_state(agent, NULL, LBAGENT_STATE_UP, NULL);
            (void)lbagent_heartbeat(agent);
            printf("at %llu\n", (unsigned long long)at);
        } else if (strcmp(cmd, "beat\n") == 0) {
            (void)lbagent_heartbeat(agent);
            printf("at %llu\n", (unsigned long long)at);
        } else if (strcmp(cmd, "quit\n") == 0) {
            break;
        } else {
            printf("unknown command\n");
        }
        fflush(stdout);
    }
    (void)lbagent_stop(agent, 1000);
    lbagent_free(agent);
    printf("bye\n");
    return 0;
}
