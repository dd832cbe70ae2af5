"""The client side of the socket load balancer tests. It runs in the test's child cgroup (where the
programs are attached) and in a client network namespace; it prints one JSON object per line.

  tcp IP PORT COUNT      COUNT connections: who answered, getpeername, or the errno and how long it took
  udp IP PORT COUNT      COUNT datagrams from one unconnected socket (sendto/recvfrom), then one
                         round trip on a connected socket (connect/send/recv/getpeername)
  netns-cookie           this network namespace's cookie (SO_NETNS_COOKIE)
"""
import errno
import json
import signal
import socket
import struct
import sys
import time

SO_NETNS_COOKIE = 71
# No single step may hang the test: sockets time out, and so does the whole run.
signal.alarm(120)
TIMEOUT = 10


def addr(pair):
    return "%s:%d" % pair


def out(**fields):
    print(json.dumps(fields), flush=True)


def tcp(ip, port, count):
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        start = time.monotonic()
        try:
            s.connect((ip, port))
            peer = addr(s.getpeername())
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            out(backend=data.decode().strip(), peer=peer)
        except OSError as e:
            out(errno=e.errno if e.errno is not None else errno.ETIMEDOUT, ms=int((time.monotonic() - start) * 1000))
        finally:
            s.close()


def udp(ip, port, count):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    for i in range(count):
        start = time.monotonic()
        try:
            s.sendto(b"ping %d" % i, (ip, port))
            data, source = s.recvfrom(256)
            out(backend=data.decode().strip(), source=addr(source))
        except OSError as e:
            out(errno=e.errno if e.errno is not None else errno.ETIMEDOUT, ms=int((time.monotonic() - start) * 1000))
    s.close()
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(TIMEOUT)
    try:
        c.connect((ip, port))
        c.send(b"ping connected")
        data = c.recv(256)
        out(backend=data.decode().strip(), peer=addr(c.getpeername()), connected=True)
    except OSError as e:
        out(errno=e.errno, connected=True)
    c.close()


def netns_cookie():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    (cookie,) = struct.unpack("Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))
    out(cookie=cookie)


command = sys.argv[1]
if command == "tcp":
    tcp(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
elif command == "udp":
    udp(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
elif command == "netns-cookie":
    netns_cookie()
else:
    sys.exit("unknown command %r" % command)
