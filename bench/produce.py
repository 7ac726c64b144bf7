"""Puts COUNT events on a local broker as fast as its protocol allows, for
the trigger benchmarks; returns once the broker has them all.

    produce.py nats PORT SUBJECT COUNT    core NATS, one pipelined write
    produce.py redis PORT STREAM COUNT    XADD, pipelined (RESP)
    produce.py amqp PORT QUEUE COUNT      basic.publish with pika
"""

import socket
import sys


def nats(port, subject, count):
    s = socket.create_connection(("127.0.0.1", port))
    s.recv(4096)  # INFO
    publish = f"PUB {subject} 5\r\nhello\r\n".encode()
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n' + publish * count + b"PING\r\n")
    buf = b""
    while b"PONG" not in buf:
        buf += s.recv(4096)


def redis(port, stream, count):
    s = socket.create_connection(("127.0.0.1", port))
    key = stream.encode()
    command = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$1\r\n*\r\n$3\r\nmsg\r\n$5\r\nhello\r\n" % (len(key), key)
    s.sendall(command * count)
    # Each reply is a bulk string, the entry's id: `$N\r\nID\r\n`.
    buf = b""
    while buf.count(b"\r\n") < 2 * count:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("redis closed the connection")
        buf += chunk
        # An error reply starts a line with `-`; an id has one only inside it.
        if buf.startswith(b"-") or b"\r\n-" in buf:
            sys.exit(buf.decode(errors="replace")[-200:])


def amqp(port, queue, count):
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    for _ in range(count):
        channel.basic_publish("", queue, b"hello")
    # A synchronous request after the publishes: the broker has them all.
    channel.queue_declare(queue, passive=True)
    connection.close()


if __name__ == "__main__":
    broker, port, name, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    {"nats": nats, "redis": redis, "amqp": amqp}[broker](port, name, count)
