/*
 * linkemu: a userspace WAN link between two network namespaces (tc netem and the
 * fq qdisc are not available on the machines this project is measured on).
 *
 * Two TUN devices (IFF_TUN | IFF_NO_PI) are created here and moved one into each
 * namespace, with a point-to-point IPv4 address pair. Every IP packet read from
 * one device is written to the other after, in this order:
 *   outage   while the link is down (SIGUSR1 toggles) every packet is dropped;
 *   loss     random, seeded (splitmix64), like netem's "loss";
 *   mtu      the path MTU: a bigger packet is dropped; with --icmp an IPv4 packet
 *            with DF set is answered with ICMP "fragmentation needed" (type 3
 *            code 4, next-hop MTU), without it the path is a silent black hole;
 *   queue    a drop-tail bottleneck queue in bytes in front of the rate limit;
 *   rate     serialisation at --rate-mbit (0: unlimited);
 *   delay    a fixed one-way delay (--delay-ms, half the RTT).
 * Delay is constant per direction, so delivery order equals arrival order: each
 * direction is one preallocated FIFO ring of packet slots, with no allocation per
 * packet and no heap. One thread, ppoll() with a nanosecond timeout.
 *
 * NAT rebinding: SIGUSR2 shifts the UDP source port of every packet from the B
 * side by another --nat-step (and maps the reply's destination port back), as if
 * a NAT in the middle had dropped its mapping and made a new one. Replies to the
 * old port go to a port nobody has (the old mapping is gone).
 *
 * Counters (forwarded, dropped by reason, queue peak) are printed as one JSON
 * line on stdout when the process ends on SIGTERM or SIGINT, and on SIGHUP.
 * "ready" is printed on stdout once both devices are up in their namespaces.
 *
 * Build: gcc -O2 -o linkemu linkemu.c   (Linux only; needs root for TUN + netns)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <getopt.h>

#define SLOT_BYTES 2048 /* device MTU is capped below this */

struct slot {
    uint64_t depart;  /* leaves the bottleneck queue (serialised) */
    uint64_t deliver; /* written to the far device */
    uint32_t len;
    unsigned char data[SLOT_BYTES - 20];
};

struct counters {
    uint64_t forwarded, forwarded_bytes;
    uint64_t drop_outage, drop_loss, drop_mtu, drop_queue, drop_ring, drop_write;
    uint64_t icmp_sent, nat_rewritten;
    uint64_t queue_peak_bytes, queue_peak_pkts;
};

struct dir {
    const char *name;
    int in_fd, out_fd;       /* read from in_fd, write to out_fd */
    struct slot *ring;
    uint32_t nslots, head, ser, tail; /* head: next to deliver; ser: next to depart */
    uint64_t queued_bytes, queued_pkts;
    uint64_t last_depart;
    struct counters c;
};

static struct {
    double delay_ms, loss, rate_mbit;
    uint64_t queue_bytes;
    int path_mtu, dev_mtu, icmp;
    uint64_t seed;
    const char *ns_a, *ns_b, *addr_a, *addr_b;
    int nat_step;
} cfg = {
    .delay_ms = 0, .loss = 0, .rate_mbit = 0, .queue_bytes = 0,
    .path_mtu = 0, .dev_mtu = 1500, .icmp = 0, .seed = 1,
    .addr_a = "10.201.0.1", .addr_b = "10.201.0.2", .nat_step = 1000,
};

static volatile sig_atomic_t want_stop, want_toggle, want_rebind, want_report;
static int link_down;
static uint32_t nat_shift; /* added to B's UDP source ports */
static uint64_t rng_state;
static uint64_t outages;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t splitmix64(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void die(const char *what) {
    fprintf(stderr, "linkemu: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void on_signal(int sig) {
    if (sig == SIGUSR1) want_toggle = 1;
    else if (sig == SIGUSR2) want_rebind = 1;
    else if (sig == SIGHUP) want_report = 1;
    else want_stop = 1;
}

/* Run a command (ip ...) and fail loudly when it fails. */
static void run(char *const argv[]) {
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        execvp(argv[0], argv);
        fprintf(stderr, "linkemu: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) die("waitpid");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "linkemu: command failed:");
        for (int i = 0; argv[i]; i++) fprintf(stderr, " %s", argv[i]);
        fprintf(stderr, "\n");
        exit(1);
    }
}

static int open_tun(char *name) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) die("open /dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
    return fd;
}

static void setup_side(const char *dev, const char *ns, const char *addr, const char *peer) {
    char mtu[16], local[64];
    snprintf(mtu, sizeof mtu, "%d", cfg.dev_mtu);
    snprintf(local, sizeof local, "%s", addr);
    char peer32[64];
    snprintf(peer32, sizeof peer32, "%s/32", peer);
    run((char *const[]){"ip", "link", "set", (char *)dev, "netns", (char *)ns, NULL});
    run((char *const[]){"ip", "-n", (char *)ns, "link", "set", "lo", "up", NULL});
    run((char *const[]){"ip", "-n", (char *)ns, "addr", "add", local, "peer", peer32, "dev",
                        (char *)dev, NULL});
    run((char *const[]){"ip", "-n", (char *)ns, "link", "set", (char *)dev, "mtu", mtu, "up",
                        NULL});
}

static uint16_t csum_fold(uint32_t sum) {
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static uint32_t csum_add(uint32_t sum, const unsigned char *p, size_t n) {
    for (size_t i = 0; i + 1 < n; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1) sum += (uint32_t)(p[n - 1] << 8);
    return sum;
}

/* ICMP "fragmentation needed" back to the sender of an IPv4 packet (RFC 1191). */
static void send_frag_needed(struct dir *d, const unsigned char *pkt, uint32_t len) {
    unsigned char out[20 + 8 + 60 + 8];
    uint32_t ihl = (uint32_t)(pkt[0] & 0x0f) * 4;
    uint32_t quote = ihl + 8 < len ? ihl + 8 : len;
    uint32_t total = 20 + 8 + quote;
    memset(out, 0, 28);
    out[0] = 0x45;
    out[2] = (unsigned char)(total >> 8);
    out[3] = (unsigned char)total;
    out[8] = 64;             /* TTL */
    out[9] = 1;              /* ICMP */
    memcpy(out + 12, pkt + 16, 4); /* from the packet's destination (a hop on the path) */
    memcpy(out + 16, pkt + 12, 4); /* to its source */
    uint16_t hc = csum_fold(csum_add(0, out, 20));
    out[10] = (unsigned char)(hc >> 8);
    out[11] = (unsigned char)hc;
    unsigned char *icmp = out + 20;
    icmp[0] = 3;
    icmp[1] = 4;
    icmp[6] = (unsigned char)(cfg.path_mtu >> 8);
    icmp[7] = (unsigned char)cfg.path_mtu;
    memcpy(icmp + 8, pkt, quote);
    uint16_t ic = csum_fold(csum_add(0, icmp, 8 + quote));
    icmp[2] = (unsigned char)(ic >> 8);
    icmp[3] = (unsigned char)ic;
    /* back into the side the packet came from */
    if (write(d->in_fd, out, total) == (ssize_t)total) d->c.icmp_sent++;
}

/* Incremental checksum update (RFC 1624) for one 16-bit field of a UDP header. */
static void udp_set_port(unsigned char *udp, int off, uint16_t newp) {
    uint16_t oldp = (uint16_t)(udp[off] << 8 | udp[off + 1]);
    udp[off] = (unsigned char)(newp >> 8);
    udp[off + 1] = (unsigned char)newp;
    uint16_t ck = (uint16_t)(udp[6] << 8 | udp[7]);
    if (ck == 0) return; /* no checksum over IPv4 */
    uint32_t sum = (uint16_t)~ck + (uint16_t)~oldp + newp;
    uint16_t res = csum_fold(sum);
    if (res == 0) res = 0xffff;
    udp[6] = (unsigned char)(res >> 8);
    udp[7] = (unsigned char)res;
}

static void nat(struct dir *d, unsigned char *pkt, uint32_t len, int from_b) {
    if (nat_shift == 0 || len < 20 || (pkt[0] >> 4) != 4 || pkt[9] != 17) return;
    uint32_t ihl = (uint32_t)(pkt[0] & 0x0f) * 4;
    if (len < ihl + 8 || (pkt[6] & 0x1f) != 0 || pkt[7] != 0) return; /* first fragment only */
    unsigned char *udp = pkt + ihl;
    int off = from_b ? 0 : 2;
    uint16_t port = (uint16_t)(udp[off] << 8 | udp[off + 1]);
    udp_set_port(udp, off, (uint16_t)(from_b ? port + nat_shift : port - nat_shift));
    d->c.nat_rewritten++;
}

static void enqueue(struct dir *d, unsigned char *pkt, uint32_t len, uint64_t now, int from_b) {
    if (link_down) { d->c.drop_outage++; return; }
    if (cfg.loss > 0 && (double)(splitmix64() >> 11) * (1.0 / 9007199254740992.0) < cfg.loss) {
        d->c.drop_loss++;
        return;
    }
    if (cfg.path_mtu > 0 && len > (uint32_t)cfg.path_mtu) {
        d->c.drop_mtu++;
        if (cfg.icmp && len >= 20 && (pkt[0] >> 4) == 4 && (pkt[6] & 0x40)) send_frag_needed(d, pkt, len);
        return;
    }
    /* packets that have left the bottleneck no longer occupy its queue */
    while (d->ser != d->tail && d->ring[d->ser].depart <= now) {
        d->queued_bytes -= d->ring[d->ser].len;
        d->queued_pkts--;
        d->ser = (d->ser + 1) % d->nslots;
    }
    if (cfg.queue_bytes > 0 && d->queued_bytes + len > cfg.queue_bytes) { d->c.drop_queue++; return; }
    uint32_t next = (d->tail + 1) % d->nslots;
    if (next == d->head) { d->c.drop_ring++; return; }
    struct slot *s = &d->ring[d->tail];
    memcpy(s->data, pkt, len);
    nat(d, s->data, len, from_b);
    s->len = len;
    uint64_t start = d->last_depart > now ? d->last_depart : now;
    uint64_t ser_ns = cfg.rate_mbit > 0 ? (uint64_t)((double)len * 8000.0 / cfg.rate_mbit) : 0;
    s->depart = start + ser_ns;
    d->last_depart = s->depart;
    s->deliver = s->depart + (uint64_t)(cfg.delay_ms * 1e6);
    d->tail = next;
    if (cfg.rate_mbit > 0) {
        d->queued_bytes += len;
        d->queued_pkts++;
        if (d->queued_bytes > d->c.queue_peak_bytes) d->c.queue_peak_bytes = d->queued_bytes;
        if (d->queued_pkts > d->c.queue_peak_pkts) d->c.queue_peak_pkts = d->queued_pkts;
    } else {
        d->ser = d->tail;
    }
}

static void deliver(struct dir *d, uint64_t now) {
    while (d->head != d->tail && d->ring[d->head].deliver <= now) {
        struct slot *s = &d->ring[d->head];
        if (write(d->out_fd, s->data, s->len) == (ssize_t)s->len) {
            d->c.forwarded++;
            d->c.forwarded_bytes += s->len;
        } else {
            d->c.drop_write++;
        }
        if (d->ser == d->head) { /* departed long ago, not yet accounted */
            d->ser = (d->ser + 1) % d->nslots;
            if (cfg.rate_mbit > 0) {
                d->queued_bytes -= s->len;
                d->queued_pkts--;
            }
        }
        d->head = (d->head + 1) % d->nslots;
    }
}

static void read_side(struct dir *d, uint64_t now, int from_b) {
    unsigned char buf[SLOT_BYTES];
    for (int i = 0; i < 256; i++) {
        ssize_t n = read(d->in_fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            die("read tun");
        }
        if (n == 0) return;
        enqueue(d, buf, (uint32_t)n, now, from_b);
    }
}

static void print_counters(struct dir *dirs) {
    printf("{\"outages\":%llu,\"nat_shift\":%u", (unsigned long long)outages, nat_shift);
    for (int i = 0; i < 2; i++) {
        struct counters *c = &dirs[i].c;
        printf(",\"%s\":{\"forwarded\":%llu,\"forwarded_bytes\":%llu,\"drop_outage\":%llu,"
               "\"drop_loss\":%llu,\"drop_mtu\":%llu,\"drop_queue\":%llu,\"drop_ring\":%llu,"
               "\"drop_write\":%llu,\"icmp_sent\":%llu,\"nat_rewritten\":%llu,"
               "\"queue_peak_bytes\":%llu,\"queue_peak_pkts\":%llu}",
               dirs[i].name, (unsigned long long)c->forwarded,
               (unsigned long long)c->forwarded_bytes, (unsigned long long)c->drop_outage,
               (unsigned long long)c->drop_loss, (unsigned long long)c->drop_mtu,
               (unsigned long long)c->drop_queue, (unsigned long long)c->drop_ring,
               (unsigned long long)c->drop_write, (unsigned long long)c->icmp_sent,
               (unsigned long long)c->nat_rewritten, (unsigned long long)c->queue_peak_bytes,
               (unsigned long long)c->queue_peak_pkts);
    }
    printf("}\n");
    fflush(stdout);
}

static void usage(void) {
    fprintf(stderr,
            "usage: linkemu --ns-a NS --ns-b NS [--addr-a IP] [--addr-b IP] [--delay-ms MS]\n"
            "               [--loss P] [--rate-mbit R] [--queue-bytes B] [--path-mtu M] [--icmp]\n"
            "               [--dev-mtu M] [--seed S] [--nat-step N]\n"
            "  --delay-ms is one way (RTT/2); --loss is a probability (0.01 = 1%%);\n"
            "  --queue-bytes defaults to one BDP (rate x RTT, at least 64 KiB) with a rate;\n"
            "  SIGUSR1 toggles the link down/up, SIGUSR2 rebinds B's UDP source ports,\n"
            "  SIGHUP prints the counters, SIGTERM prints them and exits.\n");
    exit(2);
}

static double parse_num(const char *flag, const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || v < 0) {
        fprintf(stderr, "linkemu: %s: not a non-negative number: %s\n", flag, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv) {
    static struct option opts[] = {
        {"ns-a", 1, 0, 'a'},        {"ns-b", 1, 0, 'b'},      {"addr-a", 1, 0, 'A'},
        {"addr-b", 1, 0, 'B'},      {"delay-ms", 1, 0, 'd'},  {"loss", 1, 0, 'l'},
        {"rate-mbit", 1, 0, 'r'},   {"queue-bytes", 1, 0, 'q'}, {"path-mtu", 1, 0, 'm'},
        {"icmp", 0, 0, 'i'},        {"dev-mtu", 1, 0, 'M'},   {"seed", 1, 0, 's'},
        {"nat-step", 1, 0, 'n'},    {"help", 0, 0, 'h'},      {0, 0, 0, 0},
    };
    int opt;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'a': cfg.ns_a = optarg; break;
        case 'b': cfg.ns_b = optarg; break;
        case 'A': cfg.addr_a = optarg; break;
        case 'B': cfg.addr_b = optarg; break;
        case 'd': cfg.delay_ms = parse_num("--delay-ms", optarg); break;
        case 'l': cfg.loss = parse_num("--loss", optarg); break;
        case 'r': cfg.rate_mbit = parse_num("--rate-mbit", optarg); break;
        case 'q': cfg.queue_bytes = (uint64_t)parse_num("--queue-bytes", optarg); break;
        case 'm': cfg.path_mtu = (int)parse_num("--path-mtu", optarg); break;
        case 'i': cfg.icmp = 1; break;
        case 'M': cfg.dev_mtu = (int)parse_num("--dev-mtu", optarg); break;
        case 's': cfg.seed = (uint64_t)parse_num("--seed", optarg); break;
        case 'n': cfg.nat_step = (int)parse_num("--nat-step", optarg); break;
        default: usage();
        }
    }
    if (!cfg.ns_a || !cfg.ns_b || optind != argc) usage();
    if (cfg.loss > 1) { fprintf(stderr, "linkemu: --loss is a probability in [0, 1]\n"); exit(2); }
    if (cfg.dev_mtu < 576 || cfg.dev_mtu > SLOT_BYTES - 64) {
        fprintf(stderr, "linkemu: --dev-mtu must be in [576, %d]\n", SLOT_BYTES - 64);
        exit(2);
    }
    if (cfg.path_mtu && cfg.path_mtu < 576) {
        fprintf(stderr, "linkemu: --path-mtu must be at least 576\n");
        exit(2);
    }
    if (cfg.rate_mbit > 0 && cfg.queue_bytes == 0) {
        double bdp = cfg.rate_mbit * 1e6 / 8 * (2 * cfg.delay_ms / 1000.0);
        cfg.queue_bytes = bdp > 65536 ? (uint64_t)bdp : 65536;
    }
    rng_state = cfg.seed;

    /* slots for everything in flight plus the queue, counted in small packets */
    double inflight = (cfg.rate_mbit > 0 ? cfg.rate_mbit * 1e6 / 8 : 1.25e9) * cfg.delay_ms / 1000.0;
    uint64_t want = (uint64_t)((inflight + (double)cfg.queue_bytes) / 200.0) + 8192;
    if (want > (1u << 20)) want = 1u << 20;

    char dev_a[IFNAMSIZ], dev_b[IFNAMSIZ];
    snprintf(dev_a, sizeof dev_a, "le%da", (int)getpid());
    snprintf(dev_b, sizeof dev_b, "le%db", (int)getpid());
    int fd_a = open_tun(dev_a), fd_b = open_tun(dev_b);
    setup_side(dev_a, cfg.ns_a, cfg.addr_a, cfg.addr_b);
    setup_side(dev_b, cfg.ns_b, cfg.addr_b, cfg.addr_a);

    struct dir dirs[2] = {
        {.name = "a_to_b", .in_fd = fd_a, .out_fd = fd_b},
        {.name = "b_to_a", .in_fd = fd_b, .out_fd = fd_a},
    };
    for (int i = 0; i < 2; i++) {
        dirs[i].nslots = (uint32_t)want;
        /* untouched slots cost no memory (MAP_NORESERVE, zero pages on demand) */
        dirs[i].ring = mmap(NULL, want * sizeof(struct slot), PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (dirs[i].ring == MAP_FAILED) die("mmap");
    }

    sigset_t block, orig;
    sigemptyset(&block);
    int sigs[] = {SIGTERM, SIGINT, SIGUSR1, SIGUSR2, SIGHUP};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        sigaddset(&block, sigs[i]);
        sigaction(sigs[i], &sa, NULL);
    }
    sigprocmask(SIG_BLOCK, &block, &orig);
    printf("ready %s %s\n", dev_a, dev_b);
    fflush(stdout);

    struct pollfd pfd[2] = {{.fd = fd_a, .events = POLLIN}, {.fd = fd_b, .events = POLLIN}};
    while (!want_stop) {
        if (want_toggle) {
            want_toggle = 0;
            link_down = !link_down;
            if (link_down) outages++;
            fprintf(stderr, "linkemu: link %s\n", link_down ? "down" : "up");
        }
        if (want_rebind) {
            want_rebind = 0;
            nat_shift += (uint32_t)cfg.nat_step;
            fprintf(stderr, "linkemu: B's UDP source ports now shifted by %u\n", nat_shift);
        }
        if (want_report) {
            want_report = 0;
            print_counters(dirs);
        }
        uint64_t now = now_ns();
        deliver(&dirs[0], now);
        deliver(&dirs[1], now);
        uint64_t next = UINT64_MAX;
        for (int i = 0; i < 2; i++)
            if (dirs[i].head != dirs[i].tail && dirs[i].ring[dirs[i].head].deliver < next)
                next = dirs[i].ring[dirs[i].head].deliver;
        struct timespec ts, *tp = NULL;
        if (next != UINT64_MAX) {
            uint64_t wait = next > now ? next - now : 0;
            ts.tv_sec = (time_t)(wait / 1000000000ull);
            ts.tv_nsec = (long)(wait % 1000000000ull);
            tp = &ts;
        }
        int n = ppoll(pfd, 2, tp, &orig);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("ppoll");
        }
        now = now_ns();
        if (pfd[0].revents & POLLIN) read_side(&dirs[0], now, 0);
        if (pfd[1].revents & POLLIN) read_side(&dirs[1], now, 1);
        if ((pfd[0].revents | pfd[1].revents) & (POLLERR | POLLHUP | POLLNVAL)) {
            fprintf(stderr, "linkemu: a device went away\n");
            break;
        }
    }
    print_counters(dirs);
    return 0;
}
