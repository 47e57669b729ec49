/*
 * daemonize: start the agent (to report bind errors while the terminal is still there), then
 * fork; the parent frees its handle and exits; the child takes the agent over with
 * lbagent_after_fork_child() and keeps answering. Driven by tests/fork.rs.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lbagent.h"

static volatile sig_atomic_t terminate_requested;

static void on_term(int sig) { (void)sig; terminate_requested = 1; }

int main(void) {
    lbagent *agent = NULL;
    uint16_t port = 0;
    struct sigaction sa;
    pid_t pid;

    if (lbagent_start("listen=127.0.0.1:0 watchdog_ms=2000", &agent) != LBAGENT_OK) {
        char msg[256];
        lbagent_last_error(msg, sizeof msg);
        fprintf(stderr, "daemonize: %s\n", msg);
        return 1;
    }
    if (lbagent_local_port(agent, 0, &port) != LBAGENT_OK) {
        fprintf(stderr, "daemonize: no UDP port\n");
        return 1;
    }
    fflush(stdout);
    pid = fork();
    if (pid < 0) {
        return 1;
    }
    if (pid > 0) {
        /* The parent: tell who answers, release the parent's copy, leave. The child's
         * agent must not notice. */
        printf("child %d port %u\n", (int)pid, port);
        fflush(stdout);
        lbagent_free(agent);
        return 0;
    }
    setsid();
    if (lbagent_after_fork_child(agent) != LBAGENT_OK) {
        char msg[256];
        lbagent_last_error(msg, sizeof msg);
        fprintf(stderr, "daemonize child: %s\n", msg);
        return 1;
    }
    /* Calling it again is refused: this process already owns the agent. */
    if (lbagent_after_fork_child(agent) != LBAGENT_ERR_WRONG_PROCESS) {
        return 1;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    (void)lbagent_set_state(agent, NULL, LBAGENT_STATE_UP, "daemon");
    while (!terminate_requested) {
        struct timespec ts = {0, 50 * 1000000L};
        (void)lbagent_heartbeat(agent);
        nanosleep(&ts, NULL);
    }
    if (lbagent_stop(agent, 2000) != LBAGENT_OK) {
        return 1;
    }
    lbagent_free(agent);
    return 0;
}
