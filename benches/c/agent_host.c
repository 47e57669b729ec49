/* The C server of `make bench` (benches/probe_path): hosts an agent the way a server does and
 * lets the benchmark drive it. Linked with -llbagent like any host.
 *
 *   agent_host 'CONFIG'
 *
 * At start it prints "memory_before RSS ANON FILE SHMEM" (resident memory before
 * lbagent_start, in KiB: all of it, then its anonymous, file-backed and shared-memory parts,
 * from /proc/self/status), starts the agent with CONFIG, prints "memory_after ..." likewise,
 * then "udp PORT", "tcp PORT" and "http PORT" (0 when not configured) and "ready". Then it
 * obeys one command per line on stdin, and answers each with one line:
 *
 *   memory  "memory RSS ANON FILE SHMEM": resident memory now
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

static void print_memory(const char *key) {
    static const char *const fields[] = {"VmRSS:", "RssAnon:", "RssFile:", "RssShmem:"};
    long kib[4] = {-1, -1, -1, -1};
    char line[256];
    FILE *f = fopen("/proc/self/status", "r");
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
        for (int i = 0; i < 4; i++) {
            size_t n = strlen(fields[i]);
            if (strncmp(line, fields[i], n) == 0) {
                kib[i] = strtol(line + n, NULL, 10);
            }
        }
    }
    if (f != NULL) {
        fclose(f);
    }
    printf("%s %ld %ld %ld %ld\n", key, kib[0], kib[1], kib[2], kib[3]);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static unsigned port(lbagent_result (*get)(const lbagent *, size_t, uint16_t *), lbagent *a) {
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
    print_memory("memory_before");
    if (lbagent_start(argv[1], &agent) != LBAGENT_OK) {
        char msg[256];
        lbagent_last_error(msg, sizeof msg);
        fprintf(stderr, "agent_host: %s\n", msg);
        return 1;
    }
    print_memory("memory_after");
    printf("udp %u\ntcp %u\nhttp %u\nready\n", port(lbagent_local_port, agent),
           port(lbagent_tcp_agent_port, agent), port(lbagent_http_port, agent));
    fflush(stdout);
    char cmd[64];
    while (fgets(cmd, sizeof cmd, stdin) != NULL) {
        uint64_t at = now_ns();
        if (strcmp(cmd, "memory\n") == 0) {
            print_memory("memory");
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
