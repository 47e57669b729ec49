/* The physical limit of a TCP health responder, for `make bench` (benches/probe_path): a C
 * program that answers each connection on 127.0.0.1 with a fixed text and closes it.
 *
 *   tcp_answer agent   writes an agent-check line at once (as lbagent's tcp_agent= does
 *                      when no service is configured), then closes
 *   tcp_answer http    reads the request head (up to the blank line), writes a fixed
 *                      "200 OK" answer as long as lbagent's, then closes
 *
 * It binds a port chosen by the system, prints "port N" on stdout, and serves until it is
 * killed (it also dies with its parent). Single-threaded, blocking, one connection at a time. */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

static const char AGENT[] = "up ready 100%\n";
static const char HTTP[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 14\r\n"
                           "Cache-Control: no-store\r\nConnection: close\r\n\r\nup ready 100%\n";

int main(int argc, char **argv) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int http = argc > 1 && strcmp(argv[1], "http") == 0;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(fd, 128) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        perror("tcp_answer: socket");
        return 1;
    }
    printf("port %u\n", ntohs(addr.sin_port));
    fflush(stdout);
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) {
            continue;
        }
        if (http) {
            char buf[4096];
            size_t have = 0;
            while (have < sizeof buf - 1) {
                ssize_t n = read(c, buf + have, sizeof buf - 1 - have);
                if (n <= 0) {
                    break;
                }
                have += (size_t)n;
                buf[have] = 0;
                if (strstr(buf, "\r\n\r\n") != NULL) {
                    break;
                }
            }
            (void)write(c, HTTP, sizeof HTTP - 1);
        } else {
            (void)write(c, AGENT, sizeof AGENT - 1);
        }
        close(c);
    }
}
