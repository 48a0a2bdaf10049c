"""``alarmgw center user add|passwd|disable`` and ``alarmgw center token add|disable``: the
console's accounts and integrators' API tokens, in the center's store. A password is read
from the terminal (twice), or from the first line of stdin when it is not a terminal."""

from __future__ import annotations

import argparse
import getpass
import sys
import time

from center.config import load_center_config
from center.console.auth import (
    ROLES,
    AccountError,
    check_name,
    check_role,
    hash_password,
    new_token,
)
from center.run import open_config_store
from center.store.consoledata import ConsoleQueries


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alarmgw center", description="Console accounts and API tokens."
    )
    top = parser.add_subparsers(dest="what", metavar="user|token", required=True)
    user = top.add_parser("user", help="console accounts").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    token = top.add_parser("token", help="API bearer tokens").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    for sub, name, helptext in (
        (user, "add", "create an account (password from the terminal or stdin)"),
        (user, "passwd", "set an account's password"),
        (user, "disable", "disable an account (its sessions end at their next request)"),
        (user, "list", "list the accounts"),
        (token, "add", "create a bearer token for an integrator (printed once)"),
        (token, "disable", "disable every token of NAME"),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext)
        p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
        if name != "list":
            p.add_argument("name", metavar="NAME")
        if name == "add":
            p.add_argument("--role", required=True, choices=ROLES)
    return parser


def _password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise AccountError("the passwords differ")
    return first


def main(argv: list[str], *, config: str | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = getattr(args, "config", None) or config
    if path is None:
        print(
            f"alarmgw center {args.what} {args.action}: --config FILE is required", file=sys.stderr
        )
        return 2
    store = open_config_store(load_center_config(path))
    try:
        if not isinstance(store, ConsoleQueries):
            print("alarmgw center: this store keeps no console accounts", file=sys.stderr)
            return 1
        return _run(store, args)
    except AccountError as err:
        print(f"alarmgw center {args.what} {args.action}: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _run(store: ConsoleQueries, args: argparse.Namespace) -> int:
    now = time.time()
    actor = "cli:" + getpass.getuser()
    if args.what == "token":
        name = check_name(args.name)
        if args.action == "add":
            token, digest = new_token()
            store.add_console_token(digest, name, check_role(args.role), now=now)
            store.console_audit_add(actor, "token-add", f"{name} ({args.role})", now=now)
            print(token)
            return 0
        if not store.disable_console_token(name):
            raise AccountError(f"no token named {name!r}")
        store.console_audit_add(actor, "token-disable", name, now=now)
        return 0
    if args.action == "list":
        for user in store.console_users():
            off = "  (disabled)" if user["disabled"] else ""
            print(f"{user['name']!r:<24} {user['role']}{off}".replace("'", ""))
        return 0
    name = check_name(args.name)
    if args.action == "add":
        role = check_role(args.role)
        if store.console_user(name) is not None:
            raise AccountError(f"user {name!r} exists (use passwd)")
        if not store.add_console_user(name, role, hash_password(_password()), now=now):
            raise AccountError(f"user {name!r} exists (use passwd)")
        store.console_audit_add(actor, "user-add", f"{name} ({role})", now=now)
        print(f"added {name} ({role})")
        return 0
    if args.action == "passwd":
        if not store.update_console_user(name, pw_hash=hash_password(_password())):
            raise AccountError(f"no user {name!r}")
        store.console_audit_add(actor, "user-passwd", name, now=now)
        return 0
    if not store.update_console_user(name, disabled=1):
        raise AccountError(f"no user {name!r}")
    store.console_audit_add(actor, "user-disable", name, now=now)
    return 0
