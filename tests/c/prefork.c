/*
 * prefork: a master starts the agent and forks workers (real fork()); each worker reports
 * into the master's answers through the shared status board and heart-beats its own watchdog
 * slot. The master reaps crashed workers, releases their slots and starts replacements.
 * Driven by tests/fork.rs with signals: SIGSTOP (a hung worker), SIGKILL (a crash),
 * SIGUSR1 (a worker drains the "jobs" service), SIGTERM to the master (shutdown).
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lbagent.h"

#define WORKERS 3

static lbagent *agent;
static volatile sig_atomic_t terminate_requested, drain_requested;

static void on_term(int sig) { (void)sig; terminate_requested = 1; }
static void on_usr1(int sig) { (void)sig; drain_requested = 1; }

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR && !terminate_requested) {
    }
}

static void worker(void) {
    unsigned slot = 0;
    char reason[64];
    if (lbagent_after_fork_worker(agent) != LBAGENT_OK ||
        lbagent_worker_register(agent, &slot) != LBAGENT_OK) {
        fprintf(stderr, "worker %d: cannot register\n", (int)getpid());
        _exit(1);
    }
    printf("worker %d slot %u\n", (int)getpid(), slot);
    fflush(stdout);
    while (!terminate_requested) {
        (void)lbagent_worker_heartbeat(agent, slot);
        if (drain_requested) {
            drain_requested = 0;
            snprintf(reason, sizeof reason, "drained by worker %d", (int)getpid());
            (void)lbagent_set_state(agent, "jobs", LBAGENT_STATE_DRAIN, reason);
        }
        sleep_ms(50);
    }
    (void)lbagent_worker_unregister(agent, slot);
    lbagent_free(agent); /* only this worker's memory: the master keeps answering */
    _exit(0);
}

static pid_t spawn(void) {
    pid_t pid;
    fflush(stdout);
    pid = fork();
    if (pid == 0) {
        worker();
    }
    return pid;
}

int main(void) {
    pid_t children[WORKERS];
    struct sigaction sa;
    uint16_t port = 0;
    int i;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);

    if (lbagent_start("listen=127.0.0.1:0 services=jobs initial_state=up workers=8 "
                      "worker_timeout_ms=400 worker_policy=any",
                      &agent) != LBAGENT_OK) {
        char msg[256];
        lbagent_last_error(msg, sizeof msg);
        fprintf(stderr, "prefork: %s\n", msg);
        return 1;
    }
    if (lbagent_local_port(agent, 0, &port) != LBAGENT_OK) {
        fprintf(stderr, "prefork: no UDP port\n");
        return 1;
    }
    printf("master %d port %u\n", (int)getpid(), port);
    for (i = 0; i < WORKERS; i++) {
        children[i] = spawn();
    }
    while (!terminate_requested) {
        int status;
        pid_t gone;
        (void)lbagent_heartbeat(agent);
        /* Reap crashed workers: release their slots, start replacements. */
        while ((gone = waitpid(-1, &status, WNOHANG)) > 0) {
            unsigned released = 0;
            (void)lbagent_worker_release_pid(agent, gone, &released);
            printf("reaped %d released %u\n", (int)gone, released);
            for (i = 0; i < WORKERS; i++) {
                if (children[i] == gone) {
                    children[i] = spawn();
                }
            }
        }
        sleep_ms(50);
    }
    for (i = 0; i < WORKERS; i++) {
        kill(children[i], SIGTERM);
        kill(children[i], SIGCONT);
        waitpid(children[i], NULL, 0);
    }
    if (lbagent_stop(agent, 2000) != LBAGENT_OK) {
        return 1;
    }
    lbagent_free(agent);
    printf("master done\n");
    return 0;
}
