"""The `maas` command line."""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Sequence

import yaml

from maas_operator.api.crd import custom_resource_definition
from maas_operator.api.resources import ALL


def _dump_all(documents: Sequence[object]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, width=100)


def crds_command(args: argparse.Namespace) -> int:
    documents = {spec.plural: custom_resource_definition(spec) for spec in ALL}
    if args.output_dir is None:
        sys.stdout.write(_dump_all(list(documents.values())))
        return 0
    out = pathlib.Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for plural, document in documents.items():
        (out / f"{plural}.maas.dev.yaml").write_text(_dump_all([document]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maas", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    crds = commands.add_parser("crds", help="print or write the CustomResourceDefinitions")
    crds.add_argument("--output-dir", help="write one file per CRD here instead of printing")
    crds.set_defaults(handler=crds_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
