/*
 * tcpcc.so: LD_PRELOAD shim that sets TCP congestion control per socket.
 *
 * A network namespace other than the initial one may only make a congestion
 * control of net.ipv4.tcp_allowed_congestion_control its default (often just
 * "reno bbr"), but root may pick any available one per socket (TCP_CONGESTION
 * needs CAP_NET_ADMIN for the restricted ones). bench/wan.py runs ssh and sshd
 * with LD_PRELOAD=tcpcc.so TCPCC=cubic to measure ssh -R over cubic.
 *
 * Build: gcc -O2 -shared -fPIC -o tcpcc.so tcpcc.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static void set_cc(int fd) {
    const char *cc = getenv("TCPCC");
    int type = 0;
    socklen_t len = sizeof type;
    if (!cc || !*cc) return;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) return;
    setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, cc, (socklen_t)strlen(cc));
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    if (addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6)) set_cc(fd);
    return real(fd, addr, len);
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    int s = real(fd, addr, len);
    if (s >= 0) set_cc(s);
    return s;
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    int s = real(fd, addr, len, flags);
    if (s >= 0) set_cc(s);
    return s;
}
