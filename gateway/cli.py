"""``alarmgw``: the daemon and the technician's commands (shared/spec/OPERATOR.md).

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
    from gateway.signing import write_keypair  # noqa: PLC0415

    key, key_path, pub_path = write_keypair(args.out, args.name, force=args.force)
    print(f"wrote {key_path} (mode 0600) and {pub_path}", file=sys.stderr)
    print(key.kid)
    return 0


def _cmd_center(args: argparse.Namespace) -> int:
    from gateway import logs  # noqa: PLC0415
    from gateway.center import run_center  # noqa: PLC0415

    logs.configure(sys.stderr)
    asyncio.run(run_center(args.config, as_json=args.json))
    return 0


def _cmd_config_check(args: argparse.Namespace) -> int:
    from gateway.config import load_center_config, load_config  # noqa: PLC0415

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

    from gateway.envelope import parse, verify  # noqa: PLC0415
    from gateway.errors import EnvelopeError  # noqa: PLC0415
    from gateway.signing import load_verify_key  # noqa: PLC0415

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
    p.add_argument("--config", required=True, metavar="FILE", help="center config")
    p.add_argument("--json", action="store_true", help="one JSON object per envelope")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
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
