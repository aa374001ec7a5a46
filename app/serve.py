"""`var app`: serve the web UI (app/web.py) for one or several models, each loaded once at start."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import tempfile

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


def private_cache_dir() -> str:
    """Where Gradio keeps uploads and outputs: a fresh 0700 folder unless GRADIO_TEMP_DIR names one.

    Gradio's default, /tmp/gradio, is shared by every user of the machine.
    """
    path = os.environ.get("GRADIO_TEMP_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="var-app-")  # mkdtemp creates it with mode 0700
        os.environ["GRADIO_TEMP_DIR"] = path
    return path


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
    private_cache_dir()
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError("the web UI needs Gradio: pip install 'nextscale[app]'") from None
    from app.web import build_demo, launch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own startup requests, one line each
    if not _is_loopback(host):
        log.warning("binding %s: the UI has no login; anyone who can reach this address can use it", host)
    launch(build_demo(models), host=host, port=port, block=True)


def run(args: argparse.Namespace) -> int:
    serve(args.model, args.host, args.port, args.device)
    return 0
