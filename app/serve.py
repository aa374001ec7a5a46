"""`var app`: serve the web UI (app/web.py) for one or several models, each loaded once at start.

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

from scaffold.errors import UserError

__all__ = ["add_arguments", "private_cache_dir", "resolve_device", "run"]

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


def serve(sources: list[str], host: str = "127.0.0.1", port: int = 7860, device: str = "auto") -> None:
    """Load every model (exported folders or published names), then serve the UI until interrupted."""
    from var.export import load_model

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
        from app.web import build_demo, launch

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own startup requests, one line each
        if not _is_loopback(host):
            log.warning("binding %s: the UI has no login; anyone who can reach this address can use it", host)
        print(f"cache of generated images and uploads: {cache}" + (" (removed on exit)" if cache in _CREATED else ""))
        launch(build_demo(models), host=host, port=port, block=True)


def run(args: argparse.Namespace) -> int:
    serve(args.model, args.host, args.port, args.device)
    return 0
