"""The bench's manager: a ``BaseManager`` sharing ``Echo`` objects (``echo(x)`` returns ``x``).

``python -m bench.manager_server HOST:PORT --ready-file PATH``; the key is in
``BENCH_DEMO_AUTHKEY`` (hex text, used as bytes). Port 0 picks a free port;
the bound ``host:port`` is written to the ready file.
"""

from __future__ import annotations

import argparse
import os
from multiprocessing.managers import BaseManager

from .servers import AUTHKEY_ENV, write_ready_file


class Echo:
    def echo(self, value: object) -> object:
        return value


class EchoManager(BaseManager):
    pass


EchoManager.register("Echo", callable=Echo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args()
    host, port = args.address.rsplit(":", 1)
    key = os.environ[AUTHKEY_ENV].encode("ascii")
    server = EchoManager(address=(host, int(port)), authkey=key).get_server()
    bound_host, bound_port = server.address
    write_ready_file(args.ready_file, f"{bound_host}:{bound_port}")
    server.serve_forever()


if __name__ == "__main__":
    main()
