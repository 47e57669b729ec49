/*
 * worker_pool: a multi-threaded server that gives each worker thread its own watchdog slot
 * and registers a self-check of its backend.
 *
 * - N worker threads take jobs from a queue; each heart-beats its own slot
 *   (lbagent_worker_heartbeat) once per job or idle tick. With worker_policy=any, one worker
 *   stuck in a job makes the server DOWN ("worker stalled"), even though the other workers
 *   and the main loop are fine: a single hung thread is noticed.
 * - A self-check ("backend") runs on an agent thread every 200 ms and fails while the backend
 *   is marked unavailable; its userdata has a release function.
 *
 * Commands on stdin, one per line (tests/c_programs.rs drives it this way):
 *   hang N      worker N blocks in its job until "release"
 *   release     every hung worker resumes
 *   backend down|up
 *   quit
 * Usage: worker_pool (the agent is configured by LBAGENT_CONFIG, e.g.
 *   LBAGENT_CONFIG="listen=127.0.0.1:0 workers=4 worker_timeout_ms=500")
 */
#define _POSIX_C_SOURCE 200809L

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lbagent.h"

#define WORKERS 4

struct backend {
    atomic_int available;
    atomic_int released; /* set by the release function */
};

struct worker {
    pthread_t thread;
    unsigned slot;
    atomic_int hang;
};

static lbagent *agent;
static struct worker workers[WORKERS];
static atomic_int running = 1;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void *work(void *arg) {
    struct worker *w = arg;
    while (atomic_load(&running)) {
        /* One "job": a few milliseconds of work, or a hang when told so. */
        while (atomic_load(&w->hang) && atomic_load(&running)) {
            sleep_ms(10); /* stuck: no heartbeat */
        }
        sleep_ms(20);
        (void)lbagent_worker_heartbeat(agent, w->slot);
    }
    return NULL;
}

/* The self-check: runs on an agent thread, never concurrently with itself. */
static int check_backend(void *userdata, char *message, size_t message_len) {
    struct backend *b = userdata;
    if (atomic_load(&b->available)) {
        return 0;
    }
    snprintf(message, message_len, "backend unavailable");
    return 1;
}

static void release_backend(void *userdata) {
    struct backend *b = userdata;
    atomic_store(&b->released, 1);
}

int main(void) {
    static struct backend backend;
    char line[64];
    uint16_t port = 0;
    int i;

    atomic_store(&backend.available, 1);
    if (lbagent_start(NULL, &agent) != LBAGENT_OK) {
        char msg[256];
        lbagent_last_error(msg, sizeof msg);
        fprintf(stderr, "worker_pool: %s\n", msg);
        return 1;
    }
    if (lbagent_local_port(agent, 0, &port) != LBAGENT_OK) {
        fprintf(stderr, "worker_pool: no UDP port\n");
        return 1;
    }
    for (i = 0; i < WORKERS; i++) {
        if (lbagent_worker_register(agent, &workers[i].slot) != LBAGENT_OK) {
            fprintf(stderr, "worker_pool: no worker slot (set workers=%d)\n", WORKERS);
            return 1;
        }
        pthread_create(&workers[i].thread, NULL, work, &workers[i]);
    }
    if (lbagent_add_check_with_free(agent, NULL, "backend", check_backend, &backend,
                                    release_backend, 200, 1000) != LBAGENT_OK) {
        char msg[256];
        lbagent_last_error(msg, sizeof msg);
        fprintf(stderr, "worker_pool: add_check: %s\n", msg);
        return 1;
    }
    (void)lbagent_set_state(agent, NULL, LBAGENT_STATE_UP, "ready");
    printf("worker_pool: agent on UDP port %u, %d workers\n", port, WORKERS);
    fflush(stdout);

    /* The main loop: heart-beats the agent and reads commands. */
    while (fgets(line, sizeof line, stdin) != NULL) {
        int n;
        (void)lbagent_heartbeat(agent);
        if (sscanf(line, "hang %d", &n) == 1 && n >= 0 && n < WORKERS) {
            atomic_store(&workers[n].hang, 1);
        } else if (strncmp(line, "release", 7) == 0) {
            for (i = 0; i < WORKERS; i++) {
                atomic_store(&workers[i].hang, 0);
            }
        } else if (strncmp(line, "backend down", 12) == 0) {
            atomic_store(&backend.available, 0);
        } else if (strncmp(line, "backend up", 10) == 0) {
            atomic_store(&backend.available, 1);
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
        printf("ok\n");
        fflush(stdout);
    }

    atomic_store(&running, 0);
    for (i = 0; i < WORKERS; i++) {
        atomic_store(&workers[i].hang, 0);
        pthread_join(workers[i].thread, NULL);
        (void)lbagent_worker_unregister(agent, workers[i].slot);
    }
    if (lbagent_remove_check(agent, "backend") != LBAGENT_OK) {
        return 1;
    }
    if (lbagent_stop(agent, 2000) != LBAGENT_OK) {
        return 1;
    }
    lbagent_free(agent);
    /* The check's thread releases the userdata after its last run, on its own thread. */
    for (i = 0; i < 200 && !atomic_load(&backend.released); i++) {
        sleep_ms(10);
    }
    printf("worker_pool: done, backend released=%d\n", atomic_load(&backend.released));
    return atomic_load(&backend.released) ? 0 : 1;
}
