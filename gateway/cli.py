"""``alarmgw``: the daemon and the technician's commands (OPERATOR.md).

Expected failures print one line (``alarmgw: what, where``) and exit 2; ``DEBUG=1`` shows
the traceback instead. Exit status: 0 all good, 1 warnings, 2 failures or errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from gateway import __version__
from gateway.errors import AlarmgwError, ConfigError

DEFAULT_CONFIG = "/etc/alarmgw/gateway.toml"


def _cmd_run(args: argparse.Namespace) -> int:
    from gateway import logs  # noqa: PLC0415 - each command imports only what it needs
    from gateway.config import load_config  # noqa: PLC0415
    from gateway.daemon import run_daemon  # noqa: PLC0415

    cfg = load_config(args.config)
    logs.configure(sys.stdout)
    asyncio.run(run_daemon(cfg))
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from gateway.contract.signing import write_keypair  # noqa: PLC0415

    key, key_path, pub_path = write_keypair(args.out, args.name, force=args.force)
    print(f"wrote {key_path} (mode 0600) and {pub_path}", file=sys.stderr)
    print(key.kid)
    return 0


def _cmd_center(args: argparse.Namespace) -> int:
    if args.action and args.action[0] in ("user", "token"):  # console accounts, API tokens
        from center.console.cli import main as console_main  # noqa: PLC0415

        return console_main(args.action, config=args.config)
    if args.action:  # alarmgw center alarms|ack|resolve|status ...
        from center.cli import main as center_main  # noqa: PLC0415

        return center_main(args.action, config=args.config)
    if args.config is None:
        print("alarmgw center: --config FILE is required", file=sys.stderr)
        return 2
    from center.run import run_center  # noqa: PLC0415
    from gateway import logs  # noqa: PLC0415

    logs.configure(sys.stderr)
    asyncio.run(run_center(args.config, as_json=args.json))
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    from center.config import load_center_config  # noqa: PLC0415
    from gateway.config import load_config  # noqa: PLC0415

    loader = load_center_config if args.center else load_config
    try:
        loader(args.file)
    except ConfigError as err:
        for problem in err.problems:
            print(problem)
        print(f"{len(err.problems)} problem(s) in {args.file}", file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import rfc8785  # noqa: PLC0415

    from gateway.contract.envelope import parse, verify  # noqa: PLC0415
    from gateway.contract.signing import load_verify_key  # noqa: PLC0415
    from gateway.errors import EnvelopeError  # noqa: PLC0415

    keys = {k.kid: k for k in (load_verify_key(p) for p in args.key)}
    data = sys.stdin.buffer.read() if args.file in (None, "-") else Path(args.file).read_bytes()
    try:
        env = parse(data.strip())
        # The integrators' tool canonicalises with the independent reference implementation.
        verify(env, keys, canonicalize=lambda obj: bytes(rfc8785.dumps(obj)))
    except EnvelopeError as err:
        result = {"valid": False, "reason": err.reason, "detail": err.detail}
        print(json.dumps(result) if args.json else f"INVALID: {err}")
        return 2
    if args.json:
        print(
            json.dumps(
                {
                    "valid": True,
                    "type": env.type,
                    "id": env.id,
                    "seq": env.seq,
                    "kid": env.kid,
                    "site": env.site,
                    "gw": env.gw,
                    "ts": env.ts,
                }
            )
        )
    else:
        print(
            f"VALID: {env.type} {env.id} seq {env.seq} from {env.site}/{env.gw}, "
            f"signed by kid {env.kid} at {env.ts}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alarmgw",
        description="School alarm gateway: relays signed alarms to the 110 command center.",
        epilog="DEBUG=1 shows tracebacks. Exit status: 0 good, 1 warnings, 2 failures.",
    )
    parser.add_argument("--version", action="version", version=f"alarmgw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run",
        help="run the gateway daemon (what systemd starts)",
        description="Run the gateway. Logs JSON lines to stdout when not on a "
        "terminal; exits 2 with a one-line reason on a bad config.",
    )
    p.add_argument(
        "--config",
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help=f"gateway config (default {DEFAULT_CONFIG})",
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "keygen",
        help="create an Ed25519 signing key pair and print its kid",
        description="Write DIR/NAME.key (PKCS#8 PEM, mode 0600) and DIR/NAME.pub "
        "(SubjectPublicKeyInfo PEM); print the kid. Refuses to overwrite.",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the key files")
    p.add_argument("--name", required=True, help="file name stem, e.g. gateway")
    p.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser(
        "center",
        help="run the reference command-center receiver",
        description="Verify, de-duplicate and acknowledge every gateway's "
        "envelopes; print one line per envelope (--json: one JSON object).",
    )
    p.add_argument("--config", metavar="FILE", help="center config")
    p.add_argument("--json", action="store_true", help="one JSON object per envelope")
    p.add_argument(
        "action",
        nargs=argparse.REMAINDER,
        metavar="ACTION ...",
        help="alarms | ack ID --by NAME | resolve ID --outcome O --by NAME | status | "
        "user add|passwd|disable|list | token add|disable (alarmgw center ACTION --help)",
    )
    p.set_defaults(func=_cmd_center)

    p = sub.add_parser("config", help="config tools", description="Config tools.")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser(
        "check",
        help="validate a config file",
        description="Validate a config; print every problem with file line "
        "and key. Exit 0 when valid, 2 otherwise.",
    )
    c.add_argument("file", metavar="FILE")
    c.add_argument("--center", action="store_true", help="FILE is a command-center config")
    c.set_defaults(func=_cmd_config_check)

    p = sub.add_parser(
        "verify",
        help="check an envelope's signature and fields",
        description="For integrators: verify one envelope (a file or stdin) "
        "against one or more public keys. Exit 0 valid, 2 invalid.",
    )
    p.add_argument("file", nargs="?", metavar="FILE|-", help="envelope JSON (default stdin)")
    p.add_argument(
        "--key", action="append", required=True, metavar="PUB", help="public key file (repeatable)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=_cmd_verify)
    _add_technician_tools(sub)
    return parser


# --- technician tools (gateway/technician/tools.py and diag.py) -----------------------

_STATUS_HELP = """\
Ask the running daemon how it is: the alarm path (health), the broker
session, the queue, the last alarm and its ack time, each input, the
bollard and the camera.

exit status: 0 all good; 1 warnings (an input in trouble, an event waiting
more than 60 s, ...); 2 the alarm path is failing or the daemon is not
running.

example:  alarmgw status --config /etc/alarmgw/gateway.toml"""

_DIAG_HELP = """\
Check everything a working gateway needs, with the daemon stopped or
running: the config; the signing key (present, mode 0600, kid); the center
keys; the GPIO pins; each serial box answers PING; the broker is reachable
with TLS and credentials; certificate expiry; the clock is synchronised;
free disk; the NVR and bollard URLs; the outbox's integrity; with [dc09],
each receiver takes a connection and a NULL message, ACKs it, and how far
its clock is from ours (when its answer carries its time).

One line per check: PASS, WARN or FAIL and what was found; under a WARN or
FAIL, "->" says what to do. With the daemon running, what it holds (its
health, GPIO pins, serial ports) is asked of the daemon.

exit status: 0 all PASS; 1 any WARN; 2 any FAIL."""

_TEST_HELP = """\
Send a TEST event (Contact ID 601) through the running daemon's real path:
signed, queued durably, published to the broker; then wait for the command
center's signed ack and print the round-trip time. The center shows it as a
test and never dispatches it; no LED or buzzer at the gate changes.

exit status: 0 acknowledged; 2 no ack within --timeout (the test stays
queued and is re-sent until the center acks it), or the daemon is not
running.

example:  alarmgw test-alarm --timeout 60 --input serial:box-gate-main"""

_QUEUE_HELP = """\
Show the events waiting for the command center's ack, by type: how many,
the age of the oldest, the most send attempts of one event, the last error.
With [dc09], also what the DC-09 receiver still owes, and the oldest events
with the paths that owe each an ack. Asks the running daemon; with the
daemon stopped, reads the outbox file (read-only).

exit status: 0 empty; 1 events waiting; 2 an alarm has waited longer than
[alarm] ack_timeout_s on any path, or the outbox cannot be read."""


def _cmd_status(args: argparse.Namespace) -> int:
    from gateway.technician.tools import cmd_status  # noqa: PLC0415

    return cmd_status(args.config, as_json=args.json)


def _cmd_queue(args: argparse.Namespace) -> int:
    from gateway.technician.tools import cmd_queue  # noqa: PLC0415

    return cmd_queue(args.config, as_json=args.json)


def _cmd_test_alarm(args: argparse.Namespace) -> int:
    from gateway.technician.tools import cmd_test_alarm  # noqa: PLC0415

    return cmd_test_alarm(
        args.config, timeout_s=args.timeout, input_ref=args.input, as_json=args.json, path=args.path
    )


def _cmd_diag(args: argparse.Namespace) -> int:
    from gateway.technician import diag  # noqa: PLC0415

    checks = diag.run_checks(args.config)
    code = diag.exit_code(checks)
    if args.json:
        print(json.dumps(diag.as_json(checks)))
        return code
    for check in checks:
        print("\n".join(diag.format_check(check)))
    counts = {s: sum(1 for c in checks if c.status == s) for s in ("PASS", "WARN", "FAIL")}
    print(f"diag: {counts['PASS']} PASS, {counts['WARN']} WARN, {counts['FAIL']} FAIL")
    return code


def _add_technician_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    specs = [
        ("status", "how the running gateway is, at a glance", _STATUS_HELP, _cmd_status),
        ("diag", "check config, keys, pins, ports, broker, clock, disk", _DIAG_HELP, _cmd_diag),
        ("test-alarm", "prove an alarm gets through (not dispatched)", _TEST_HELP, _cmd_test_alarm),
        ("queue", "events waiting for an ack, per path", _QUEUE_HELP, _cmd_queue),
    ]
    for name, short, long, func in specs:
        p = sub.add_parser(name, help=short, description=long, formatter_class=raw)
        p.add_argument(
            "--config",
            default=DEFAULT_CONFIG,
            metavar="FILE",
            help=f"gateway config (default {DEFAULT_CONFIG})",
        )
        p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
        if name == "test-alarm":
            p.add_argument(
                "--timeout",
                type=float,
                default=30.0,
                metavar="S",
                help="seconds to wait for the ack (default 30)",
            )
            p.add_argument(
                "--input",
                metavar="REF",
                help="input to test, e.g. gpio:gate-main (default: the first configured)",
            )
            p.add_argument(
                "--path",
                choices=("mqtt", "dc09"),
                default="mqtt",
                help="whose ack ends the test: the center's (mqtt, default) or the [dc09] "
                "receiver's",
            )
        p.set_defaults(func=func)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``alarmgw status | head``): end quietly. Point stdout at
        # /dev/null so the interpreter's final flush does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a process ended by it
    except ConfigError as err:
        if os.environ.get("DEBUG"):
            raise
        hint = "" if args.command == "config" else f"; run: alarmgw config check {err.path}"
        print(f"alarmgw: config: {err}{hint}", file=sys.stderr)
        return 2
    except (AlarmgwError, OSError) as err:
        if os.environ.get("DEBUG"):
            raise
        print(f"alarmgw: {err}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
