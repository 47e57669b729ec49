/* The physical limit of a UDP responder, for `make bench` (benches/probe_path): a C program
 * that sends every datagram it receives on 127.0.0.1 back to its sender, and does nothing
 * else.
 *
 *   udp_echo          one recvfrom and one sendto per datagram (the minimal responder)
 *   udp_echo batch    recvmmsg and sendmmsg, up to 64 datagrams per system call
 *
 * It binds a port chosen by the system, prints "port N" on stdout, and serves until it is
 * killed (it also dies with its parent). Single-threaded, blocking. */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <signal.h>

#define BATCH 64
#define BUFFER 1500

static int bound_socket(void) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &len) != 0) {
        perror("udp_echo: socket");
        exit(1);
    }
    printf("port %u\n", ntohs(addr.sin_port));
    fflush(stdout);
    return fd;
}

static void minimal(int fd) {
    char buf[BUFFER];
    for (;;) {
        struct sockaddr_storage from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (n >= 0) {
            (void)sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
        }
    }
}

static void batched(int fd) {
    static char bufs[BATCH][BUFFER];
    static struct sockaddr_storage from[BATCH];
    static struct iovec iov[BATCH];
    static struct mmsghdr msgs[BATCH];
    for (;;) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = BUFFER;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        /* Blocks for the first datagram, then takes what is queued. */
        int n = recvmmsg(fd, msgs, BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0) {
            continue;
        }
        for (int i = 0; i < n; i++) {
            iov[i].iov_len = msgs[i].msg_len;
        }
        (void)sendmmsg(fd, msgs, (unsigned)n, 0);
    }
}

int main(int argc, char **argv) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    int fd = bound_socket();
    if (argc > 1 && strcmp(argv[1], "batch") == 0) {
        batched(fd);
    } else {
        minimal(fd);
    }
    return 0;
}
