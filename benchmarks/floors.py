"""Floor servers: the least any hub hop could cost on this machine, measured beside it.

Two servers the benchmark scripts start in the same run as their measurements:

* ``http`` - a bare tornado app answering ``POST /echo`` with the request body;
* ``zmq`` - a bare tornado app that forwards the body over one persistent ZMQ DEALER
  socket to an echo process (ROUTER) and answers with the reply: the hub's HTTP -> ZMQ
  -> worker hop without authentication, signing, routing or bookkeeping.

Run alone (``python benchmarks/floors.py http``) a server prints ``{"url": ...}`` on
stdout and serves until stdin closes or it is terminated; the scripts use
:func:`floor_servers`, which starts both and stops them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import orjson


def _serve_zmq_echo() -> None:
    """The echo 'worker': a ROUTER socket that sends every message straight back."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind("tcp://127.0.0.1:0")
    print(
        orjson.dumps({"endpoint": sock.getsockopt_string(zmq.LAST_ENDPOINT)}).decode(), flush=True
    )
    while True:
        frames = sock.recv_multipart(copy=False)
        sock.send_multipart(frames, copy=False)


def _make_app(zmq_endpoint: str | None) -> object:
    import tornado.web
    import zmq
    import zmq.asyncio

    pending: dict[bytes, asyncio.Future[bytes]] = {}
    dealer = None
    if zmq_endpoint:
        ctx = zmq.asyncio.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(zmq_endpoint)

        async def read() -> None:
            while True:
                msg_id, body = await dealer.recv_multipart()
                fut = pending.pop(msg_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(body)

        asyncio.get_running_loop().create_task(read())

    class Echo(tornado.web.RequestHandler):
        async def post(self) -> None:
            self.set_header("Content-Type", "application/json")
            if dealer is None:
                self.finish(self.request.body)
                return
            msg_id = uuid.uuid4().bytes
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            pending[msg_id] = fut
            await dealer.send_multipart([msg_id, self.request.body], copy=False)
            self.finish(await fut)

    return tornado.web.Application([(r"/echo", Echo)])


async def _serve_http(kind: str) -> None:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    echo: subprocess.Popen[bytes] | None = None
    endpoint = None
    if kind == "zmq":
        echo = subprocess.Popen(
            [sys.executable, __file__, "zmq-echo"], stdout=subprocess.PIPE, stdin=subprocess.PIPE
        )
        assert echo.stdout is not None
        endpoint = orjson.loads(echo.stdout.readline())["endpoint"]
    try:
        server = HTTPServer(_make_app(endpoint), max_body_size=1024**3)  # type: ignore[arg-type]
        socks = bind_sockets(0, "127.0.0.1")
        server.add_sockets(socks)
        port = socks[0].getsockname()[1]
        print(orjson.dumps({"url": f"http://127.0.0.1:{port}/echo"}).decode(), flush=True)
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.add_reader(sys.stdin.fileno(), lambda: done.done() or done.set_result(None))
        await done  # stdin closed: the benchmark is over
    finally:
        if echo is not None:
            echo.kill()
            echo.wait()


@contextlib.contextmanager
def floor_servers() -> Iterator[dict[str, str]]:
    """Start both floors as subprocesses; yields ``{"http": url, "zmq": url}``."""
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for kind in ("http", "zmq"):
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), kind],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            procs.append(proc)
            assert proc.stdout is not None
            urls[kind] = orjson.loads(proc.stdout.readline())["url"]
        yield urls
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["http", "zmq", "zmq-echo"])
    args = parser.parse_args()
    if args.kind == "zmq-echo":
        _serve_zmq_echo()
    else:
        asyncio.run(_serve_http(args.kind))


if __name__ == "__main__":
    main()
