"""`mxport inspect OUT_DIR`: print what an export folder holds (exporter/inspect.py's summarize + format_summary)."""

from __future__ import annotations

import argparse

from mxport.exporter.inspect import format_summary, summarize


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("export_dir", metavar="OUT_DIR", help="an export folder (or a model.onnx)")


def run(args: argparse.Namespace) -> int:
    print(format_summary(summarize(args.export_dir)))
    return 0
