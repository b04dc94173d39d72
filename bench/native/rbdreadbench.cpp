/*
 * What a native read loop would cost: read an RBD snapshot through librbd's C++ API with aio reads in
 * flight into bufferlists (no copy into a caller's buffer, no Python, no allocation per chunk beyond
 * librbd's own) and MD5 it in offset order (libcrypto, the MD5 hashlib uses). Prints the process' CPU
 * seconds per GiB (getrusage: every thread, librados' included) and the MD5, to compare with the agent's
 * pipeline reading the same snapshot (bench/worker.py mode hash-only) and with MD5 alone.
 *
 *     g++ -O2 -std=c++17 bench/native/rbdreadbench.cpp -lrbd -lrados -lcrypto -o /tmp/rbdreadbench
 *     /tmp/rbdreadbench CEPH_CONF POOL IMAGE SNAP [chunk_mib=2] [in_flight=16]
 *
 * Needs librbd-dev, libradospp-dev and libssl-dev (bench only; the agent does not build it).
 */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/md5.h>
#include <rados/librados.hpp>
#include <rbd/librbd.hpp>
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <string>

static double cpu_s() {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

struct Read {
    ceph::bufferlist data;
    librbd::RBD::AioCompletion *completion = nullptr;
};

int main(int argc, char **argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s CEPH_CONF POOL IMAGE SNAP [chunk_mib] [in_flight]\n", argv[0]);
        return 2;
    }
    const uint64_t chunk = (argc > 5 ? std::strtoull(argv[5], nullptr, 10) : 2) << 20;
    const size_t in_flight = argc > 6 ? std::strtoul(argv[6], nullptr, 10) : 16;
    auto start = std::chrono::steady_clock::now();
    double cpu_start = cpu_s();
    librados::Rados rados;
    if (rados.init2("client.admin", "ceph", 0) < 0 || rados.conf_read_file(argv[1]) < 0 || rados.connect() < 0) {
        std::fprintf(stderr, "cannot connect\n");
        return 1;
    }
    librados::IoCtx ioctx;
    if (rados.ioctx_create(argv[2], ioctx) < 0) {
        std::fprintf(stderr, "no pool %s\n", argv[2]);
        return 1;
    }
    librbd::RBD rbd;
    librbd::Image image;
    if (rbd.open_read_only(ioctx, image, argv[3], argv[4]) < 0) {
        std::fprintf(stderr, "cannot open %s@%s\n", argv[3], argv[4]);
        return 1;
    }
    uint64_t size = 0;
    image.size(&size);
    double cpu_opened = cpu_s();
    MD5_CTX md5;
    MD5_Init(&md5);
    std::deque<std::unique_ptr<Read>> queue;
    uint64_t next = 0;
    while (next < size || !queue.empty()) {
        while (next < size && queue.size() < in_flight) {
            auto read = std::make_unique<Read>();
            read->completion = new librbd::RBD::AioCompletion(nullptr, nullptr);
            uint64_t length = std::min(chunk, size - next);
            image.aio_read(next, length, read->data, read->completion);
            next += length;
            queue.push_back(std::move(read));
        }
        auto &oldest = queue.front();
        oldest->completion->wait_for_complete();
        if (oldest->completion->get_return_value() < 0) {
            std::fprintf(stderr, "read failed: %zd\n", oldest->completion->get_return_value());
            return 1;
        }
        for (const auto &segment : oldest->data.buffers())
            MD5_Update(&md5, segment.c_str(), segment.length());
        oldest->completion->release();
        queue.pop_front();
    }
    unsigned char digest[16];
    MD5_Final(digest, &md5);
    double cpu_end = cpu_s();
    double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double gib = size / double(1ull << 30);
    std::printf("{\"seconds\": %.3f, \"read_cpu_s\": %.3f, \"read_cpu_s_per_gib\": %.3f, \"md5\": \"", wall,
                cpu_end - cpu_opened, (cpu_end - cpu_opened) / gib);
    for (unsigned char b : digest)
        std::printf("%02x", b);
    std::printf("\", \"connect_cpu_s\": %.3f}\n", cpu_opened - cpu_start);
    image.close();
    return 0;
}
