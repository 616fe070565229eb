"""Floor servers: the least any hub hop could cost on this machine, measured beside it.

Two servers the benchmark scripts start in the same run as their measurements:

* ``http`` - a bare tornado app answering ``POST /echo`` with the request body;
* ``zmq`` - a bare tornado app that forwards the body over one persistent ZMQ DEALER
  socket to an echo process (ROUTER) and answers with the reply: the hub's HTTP -> ZMQ
  -> worker hop without authentication, signing, routing or bookkeeping.
* ``zmq16`` - the same with 16 echo processes, one DEALER each, ``POST /echo/<i>``:
  the process structure of 16 sessions (every request wakes its own process), for
  reading the 16-client numbers beside the single-echo floor the issue names.

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


def _make_app(zmq_endpoints: list[str]) -> object:
    import tornado.web
    import zmq
    import zmq.asyncio

    pending: dict[bytes, asyncio.Future[bytes]] = {}
    dealers = []
    ctx = zmq.asyncio.Context()
    for endpoint in zmq_endpoints:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(endpoint)
        dealers.append(dealer)

        async def read(dealer: zmq.asyncio.Socket = dealer) -> None:
            while True:
                msg_id, body = await dealer.recv_multipart()
                fut = pending.pop(msg_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(body)

        asyncio.get_running_loop().create_task(read())

    class Echo(tornado.web.RequestHandler):
        async def post(self, index: str = "0") -> None:
            self.set_header("Content-Type", "application/json")
            if not dealers:
                self.finish(self.request.body)
                return
            msg_id = uuid.uuid4().bytes
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            pending[msg_id] = fut
            await dealers[int(index) % len(dealers)].send_multipart(
                [msg_id, self.request.body], copy=False
            )
            self.finish(await fut)

    return tornado.web.Application([(r"/echo", Echo), (r"/echo/(\d+)", Echo)])


async def _serve_http(kind: str) -> None:
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    echoes: list[subprocess.Popen[bytes]] = []
    endpoints = []
    for _ in range({"zmq": 1, "zmq16": 16}.get(kind, 0)):
        echo = subprocess.Popen(
            [sys.executable, __file__, "zmq-echo"], stdout=subprocess.PIPE, stdin=subprocess.PIPE
        )
        echoes.append(echo)
        assert echo.stdout is not None
        endpoints.append(orjson.loads(echo.stdout.readline())["endpoint"])
    try:
        server = HTTPServer(_make_app(endpoints), max_body_size=1024**3)  # type: ignore[arg-type]
        socks = bind_sockets(0, "127.0.0.1")
        server.add_sockets(socks)
        port = socks[0].getsockname()[1]
        print(orjson.dumps({"url": f"http://127.0.0.1:{port}/echo"}).decode(), flush=True)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def stdin_closed() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(sys.stdin.fileno(), stdin_closed)
        await done  # stdin closed: the benchmark is over
    finally:
        for echo in echoes:
            echo.kill()
            echo.wait()


@contextlib.contextmanager
def floor_servers() -> Iterator[dict[str, str]]:
    """Start the floors as subprocesses; yields ``{"http": url, "zmq": url, "zmq16": url}``."""
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for kind in ("http", "zmq", "zmq16"):
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
    parser.add_argument("kind", choices=["http", "zmq", "zmq16", "zmq-echo"])
    args = parser.parse_args()
    if args.kind == "zmq-echo":
        _serve_zmq_echo()
    else:
        asyncio.run(_serve_http(args.kind))


if __name__ == "__main__":
    main()
