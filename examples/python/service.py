#!/usr/bin/env python3
"""A service protected by an understudy agent, in Python with the standard library only.

It follows docs/service-contract.md, the same contract the Rust crate understudy-sdk implements:

- the activation signal (SIGUSR1) and the stop signals (SIGTERM, SIGINT) are blocked first,
  before anything slow, and received with sigtimedwait: a signal sent at any moment is kept
  pending, never lost and never fatal;
- role and epoch come from UNDERSTUDY_* (none set: stand-alone, active at epoch 0; set but
  incomplete or malformed: exit 2 naming the variable);
- a standby told it is active reads its new epoch from GET http://$UNDERSTUDY_ADMIN/status
  (retried until the agent is Hot with an epoch above the old one, at most 10 s; without it the
  service exits 1 and never acts), then acknowledges with POST /service/active-ack;
- SIGTERM: log, exit 0.

With SERVICE_LOG=FILE it appends one line per event, "<CLOCK_MONOTONIC ns> <pid> <node> <event>
<epoch>": start, active (the moment it acts, with its epoch), tick (every SERVICE_TICK_MS,
default 10, while active) and stop. From these lines a test proves that no two services of a
group were ever active at once.
"""

import signal

# First, before the imports below take their milliseconds: the agent sends the activation signal
# as soon as /proc shows it blocked, and its default action would kill us.
ACTIVATE = signal.SIGUSR1
STOP = (signal.SIGTERM, signal.SIGINT)
WATCHED = (ACTIVATE,) + STOP
# A wrapper may have started us with the signal ignored: the agent counts that as handled too,
# and a signal it sent before the block above was discarded, so it must be asked (see main).
IGNORED_AT_ENTRY = signal.getsignal(ACTIVATE) == signal.SIG_IGN
signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)

import ipaddress  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402

EXIT_BAD_ENV = 2
EPOCH_WAIT_S = 10.0
CALL_TIMEOUT_S = 0.5
MAX_ANSWER = 1 << 20
VARS = ("UNDERSTUDY_ROLE", "UNDERSTUDY_EPOCH", "UNDERSTUDY_GROUP", "UNDERSTUDY_NODE",
        "UNDERSTUDY_ADMIN")

# The agent is on this host or network: never through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class BadEnv(Exception):
    """The environment breaks the contract's rule; the message names the variable."""


class NoEpoch(Exception):
    """The agent did not report Hot with a newer epoch in time: the service must not act."""


def read_env(environ):
    """Returns (role, epoch, node, admin, standalone) by the contract's rule."""
    def get(k):
        return environ.get(k) or None

    role = get("UNDERSTUDY_ROLE")
    if role is None:
        for k in VARS:
            if get(k):
                raise BadEnv(f"UNDERSTUDY_ROLE is not set, but {k} is (set all of the agent's "
                             "variables, or none to run stand-alone)")
        return "active", 0, None, None, True
    if role not in ("active", "standby"):
        raise BadEnv(f'UNDERSTUDY_ROLE={role!r}: expected "active" or "standby"')
    raw = get("UNDERSTUDY_EPOCH")
    if raw is None:
        raise BadEnv("UNDERSTUDY_EPOCH is not set, but UNDERSTUDY_ROLE is")
    if not (raw.isascii() and raw.isdigit()) or int(raw) >= 1 << 64:
        raise BadEnv(f"UNDERSTUDY_EPOCH={raw!r}: not an unsigned 64-bit integer")
    admin = get("UNDERSTUDY_ADMIN")
    if admin is None and role == "standby":
        raise BadEnv("UNDERSTUDY_ADMIN is not set, but UNDERSTUDY_ROLE=standby needs it to "
                     "learn its epoch when activated")
    if admin is not None and not is_socket_address(admin):
        raise BadEnv(f"UNDERSTUDY_ADMIN={admin!r}: not an IP:port socket address")
    return role, int(raw), get("UNDERSTUDY_NODE"), admin, False


def is_socket_address(text):
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return port.isascii() and port.isdigit() and int(port) < 65536


def call(method, admin, path, body=None):
    """One request to the agent; returns (HTTP status, body bytes)."""
    req = urllib.request.Request(f"http://{admin}{path}", data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(req, timeout=CALL_TIMEOUT_S) as resp:
            return resp.status, resp.read(MAX_ANSWER)
    except urllib.error.HTTPError as e:
        return e.code, e.read(MAX_ANSWER)


def hot_epoch_above(admin, above):
    """The agent's epoch if it is Hot with one above `above`, else None. Raises on errors."""
    status, body = call("GET", admin, "/status")
    if status != 200:
        raise OSError(f"GET /status answered {status}")
    answer = json.loads(body)
    epoch = answer.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch < 1 << 64:
        raise ValueError(f"no unsigned epoch in {body[:200]!r}")
    if answer.get("mode", "Hot") == "Hot" and epoch > above:
        return epoch
    return None


def wait_for_epoch(admin, above):
    """Asks until the agent is Hot with an epoch above `above` (it publishes that before it
    signals, so the first answer is normally the one); NoEpoch after EPOCH_WAIT_S."""
    deadline = time.monotonic() + EPOCH_WAIT_S
    pause = 0.001
    while True:
        try:
            epoch = hot_epoch_above(admin, above)
            if epoch is not None:
                return epoch
            last = "not Hot with a newer epoch yet"
        except (OSError, ValueError) as e:
            last = str(e)
        if time.monotonic() + pause >= deadline:
            raise NoEpoch(f"agent at {admin} did not report Hot with an epoch above {above} "
                          f"within {EPOCH_WAIT_S} s (last: {last})")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def acknowledge(admin, epoch):
    """POST /service/active-ack: for the agent's takeover timeline. 404/405: an older agent."""
    if admin is None:
        return
    body = json.dumps({"pid": os.getpid(), "epoch": epoch}).encode()
    try:
        status, _ = call("POST", admin, "/service/active-ack", body)
        if not (200 <= status < 300 or status in (404, 405)):
            print(f"service.py: the agent answered {status} to the acknowledgement",
                  file=sys.stderr)
    except OSError as e:
        print(f"service.py: cannot acknowledge the activation: {e}", file=sys.stderr)


class Log:
    def __init__(self, path, node):
        self.fd = None
        if path:
            self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.node = node or "-"

    def line(self, event, epoch):
        if self.fd is not None:
            # One write per line with O_APPEND keeps lines whole when processes share the file.
            os.write(self.fd, f"{time.monotonic_ns()} {os.getpid()} {self.node} {event} "
                              f"{epoch}\n".encode())


def main():
    try:
        role, epoch, node, admin, standalone = read_env(os.environ)
    except BadEnv as e:
        print(f"service.py: bad environment: {e}", file=sys.stderr)
        return EXIT_BAD_ENV
    if standalone:
        print("service.py: no UNDERSTUDY_* variables: running stand-alone, active at epoch 0",
              file=sys.stderr)
    # A disposition other than ignore, so a signal is never discarded from now on; it is still
    # blocked, so it only ever reaches sigtimedwait below.
    for s in WATCHED:
        signal.signal(s, lambda *_: None)
    tick = int(os.environ.get("SERVICE_TICK_MS", "10")) / 1000
    log = Log(os.environ.get("SERVICE_LOG"), node)
    node = log.node
    log.line("start", epoch)
    activate_now = False
    if role == "active":
        log.line("active", epoch)
        print(f"service.py on {node}: active, epoch {epoch}", flush=True)
        acknowledge(admin, epoch)
    else:
        print(f"service.py on {node}: standby, epoch {epoch}", flush=True)
        if IGNORED_AT_ENTRY:
            try:
                activate_now = hot_epoch_above(admin, epoch) is not None
            except (OSError, ValueError) as e:
                print(f"service.py: cannot ask the agent whether it is Hot: {e}", file=sys.stderr)
    while True:
        if activate_now:
            signo = ACTIVATE
            activate_now = False
        else:
            info = signal.sigtimedwait(WATCHED, tick if role == "active" else 1.0)
            signo = info.si_signo if info is not None else None
        if signo is None:
            if role == "active":
                log.line("tick", epoch)
        elif signo in STOP:
            break
        elif signo == ACTIVATE and role == "standby":
            try:
                epoch = wait_for_epoch(admin, epoch)
            except NoEpoch as e:
                print(f"service.py: activated, but {e}", file=sys.stderr)
                log.line("stop", epoch)
                return 1
            role = "active"
            log.line("active", epoch)
            print(f"service.py on {node}: now active, epoch {epoch}", flush=True)
            acknowledge(admin, epoch)
    log.line("stop", epoch)
    print(f"service.py on {node}: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
