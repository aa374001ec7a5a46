"""`var app`: serve the web UI (app/web.py) for one or several models, each loaded once at start.

Access: by default the server binds 127.0.0.1 (this machine only). `--auth USER:PASSWORD` (repeatable) or
`--auth-file FILE` (one `user:password` a line; kept out of the process list and the shell history) asks
for a login. Binding any other address without a login is refused unless `--public` says that anyone who
can reach it may use it. Every client (login, else address) gets `--requests-per-minute` model requests a
minute and two at once.

The private cache (generated images and uploads, :func:`private_cache_dir`) is removed when the server
stops, whether by Ctrl-C or by SIGTERM (a service manager's stop); a folder the user named with
GRADIO_TEMP_DIR is the user's and is left alone.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from scaffold.errors import UserError

__all__ = ["add_arguments", "check_access", "parse_logins", "private_cache_dir", "resolve_device", "run", "serve"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="DIR_OR_NAME",
        help="an exported model folder or a published name (d16, d20, d24, d30); repeat for a model picker",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda if available")
    parser.add_argument(
        "--auth", action="append", default=[], metavar="USER:PASSWORD", help="a login the page asks for (repeatable)"
    )
    parser.add_argument("--auth-file", metavar="FILE", help="logins, one user:password a line (# comments)")
    parser.add_argument(
        "--public",
        action="store_true",
        help="serve a non-loopback --host without a login: anyone who can reach the address may use it",
    )
    parser.add_argument(
        "--requests-per-minute", type=int, default=30, help="model requests a minute per client (default 30)"
    )


def parse_logins(pairs: list[str], auth_file: str | None = None) -> list[tuple[str, str]]:
    """(user, password) pairs from `--auth` values and the lines of `--auth-file`; a malformed one is an error
    naming where it is (never echoing a password)."""
    entries = [(f"--auth value {i + 1}", p) for i, p in enumerate(pairs)]
    if auth_file:
        try:
            text = Path(auth_file).read_text(encoding="utf-8")
        except OSError as err:
            raise UserError(f"--auth-file {auth_file}: {os.strerror(err.errno or 0)}") from None
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                entries.append((f"{auth_file} line {n}", line.strip()))
    logins = []
    for where, entry in entries:
        user, sep, password = entry.partition(":")
        if not sep or not user.strip() or not password:
            raise UserError(f"{where}: expected user:password with a non-empty user and password")
        logins.append((user.strip(), password))
    if auth_file and not logins:
        raise UserError(f"--auth-file {auth_file} holds no user:password line")
    return logins


_CREATED: list[str] = []  # the private cache folders this process made (and so removes)


def private_cache_dir() -> str:
    """Where Gradio keeps uploads and outputs: a fresh 0700 folder unless GRADIO_TEMP_DIR names one.

    Gradio's default, /tmp/gradio, is shared by every user of the machine. A folder made here is
    removed when the process exits (see :func:`cache_removed_on_exit`).
    """
    path = os.environ.get("GRADIO_TEMP_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="var-app-")  # mkdtemp creates it with mode 0700
        os.environ["GRADIO_TEMP_DIR"] = path
        _CREATED.append(path)
        atexit.register(shutil.rmtree, path, ignore_errors=True)  # whatever way Python exits
    return path


def _terminated(signum, frame) -> None:
    # SIGTERM's default action ends the process at once, skipping every cleanup: stop the way Ctrl-C does.
    raise KeyboardInterrupt


@contextlib.contextmanager
def cache_removed_on_exit() -> Iterator[str]:
    """Serve inside this: SIGTERM stops the server as Ctrl-C does, and the private cache is removed."""
    path = private_cache_dir()
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield path
    finally:
        signal.signal(signal.SIGTERM, previous)
        if path in _CREATED:
            shutil.rmtree(path, ignore_errors=True)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (use --device cpu)")
    return device


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_access(host: str, auth: list[tuple[str, str]] | None, public: bool) -> None:
    """Refuse to serve beyond this machine without a login, unless the server is declared public."""
    if not _is_loopback(host) and not auth and not public:
        raise UserError(
            f"--host {host} serves the UI beyond this machine without a login: add --auth USER:PASSWORD "
            "(or --auth-file FILE), or --public if anyone who can reach it may use it"
        )


def serve(
    sources: list[str],
    host: str = "127.0.0.1",
    port: int = 7860,
    device: str = "auto",
    auth: list[tuple[str, str]] | None = None,
    public: bool = False,
    requests_per_minute: int = 30,
) -> None:
    """Load every model (exported folders or published names), then serve the UI until interrupted."""
    from var.export import load_model

    check_access(host, auth, public)
    if requests_per_minute < 1:
        raise UserError(f"--requests-per-minute must be >= 1, got {requests_per_minute}")
    device = resolve_device(device)
    models = []
    for source in sources:  # load every model before importing Gradio: a bad path fails fast
        loaded = load_model(source, device=device)
        print(f"loaded {loaded.describe()} on {device}")
        models.append(loaded)
    with cache_removed_on_exit() as cache:
        try:
            import gradio  # noqa: F401
        except ImportError:
            raise UserError("the web UI needs Gradio: pip install 'nextscale[app]'") from None
        from app.web import ClientLimiter, build_demo, launch

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own startup requests, one line each
        if not _is_loopback(host) and not auth:
            log.warning("binding %s with --public: no login; anyone who can reach this address can use it", host)
        print(f"cache of generated images and uploads: {cache}" + (" (removed on exit)" if cache in _CREATED else ""))
        if auth:
            print(f"login required: {len(auth)} user(s)")
        demo = build_demo(models, ClientLimiter(per_minute=requests_per_minute))
        launch(demo, host=host, port=port, block=True, auth=auth)


def run(args: argparse.Namespace) -> int:
    logins = parse_logins(args.auth, args.auth_file)
    serve(args.model, args.host, args.port, args.device, logins, args.public, args.requests_per_minute)
    return 0
