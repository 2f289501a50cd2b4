"""The host agent as jobs start it: ``python -m monarch.job._agent``.

The agent of ``monarch host serve`` (:class:`monarch._mesh.host_agent.HostAgent`) plus what a
launcher needs:

- ``--token-stdin``: the cluster token is the first line of stdin (never on a command line,
  where ``ps`` shows it), ``--token-file``: read from a file (mode 0600 on a shared disk);
- ``--lifeline``: the agent stops (killing its clients' procs) when stdin reaches EOF, so it
  ends with the process that started it, even when that one is SIGKILLed (its end of the pipe
  closes); over ssh the same holds for the ssh client;
- ``--advertise-route-to IP``: advertise this machine's address on the route to ``IP`` (a node
  whose hostname resolves to loopback, as in containers and network namespaces);
- ``--register DIR``: write the bound address to ``DIR/NAME.addr`` (atomically) for a client
  that finds its agents by self-registration (``SlurmJob``);
- SIGTERM stops the agent as a lifeline EOF does.

The first line of stdout is ``monarch host agent listening on tcp:HOST:PORT``, as for
``monarch host serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading


def route_source(ip: str) -> str:
    """This machine's address on the route to ``ip`` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((ip, 9))
        return str(s.getsockname()[0])


def main(argv: list[str] | None = None) -> int:
    """Run an agent until SIGTERM (or lifeline EOF); returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m monarch.job._agent")
    p.add_argument("--listen", default="tcp://0.0.0.0:0")
    p.add_argument("--advertise", default=None)
    p.add_argument("--advertise-route-to", default=None)
    p.add_argument("--token-stdin", action="store_true")
    p.add_argument("--token-file", default=None)
    p.add_argument("--lifeline", action="store_true")
    p.add_argument("--register", default=None, help="directory to write NAME.addr into")
    p.add_argument("--register-name", default=None)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="[monarch agent %(levelname)s] %(message)s"
    )

    if args.token_stdin:
        token = sys.stdin.buffer.readline().strip()
        if not token:
            print("error: --token-stdin: no token on stdin", file=sys.stderr)
            return 2
        os.environ["MONARCH_CLUSTER_TOKEN"] = token.decode()
    elif args.token_file:
        with open(args.token_file, "rb") as f:
            os.environ["MONARCH_CLUSTER_TOKEN"] = f.read().strip().decode()
    advertise = args.advertise
    if advertise is None and args.advertise_route_to:
        advertise = route_source(args.advertise_route_to)

    from monarch._mesh.host_agent import HostAgent, token_from_config

    tok = token_from_config()
    agent = HostAgent(args.listen, advertise=advertise, token=tok, insecure=False)

    closed = threading.Event()

    def ready(addr: str) -> None:
        if closed.is_set():  # the lifeline closed or SIGTERM came before the agent could stop
            agent.stop()
        print(f"monarch host agent listening on {addr}", flush=True)
        if args.register:
            name = args.register_name or f"{socket.gethostname()}-{os.getpid()}"
            path = os.path.join(args.register, f"{name}.addr")
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(addr + "\n")
            os.replace(tmp, path)

    def stop(*_: object) -> None:
        closed.set()
        agent.stop()

    signal.signal(signal.SIGTERM, stop)
    if args.lifeline:

        def watch() -> None:
            while os.read(sys.stdin.fileno(), 65536):
                pass
            logging.getLogger("monarch.job").info("lifeline closed: stopping the agent")
            stop()

        threading.Thread(target=watch, name="monarch agent lifeline", daemon=True).start()
    try:
        asyncio.run(agent.serve(on_ready=ready))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
