"""The `maas` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from maas_operator.api.common import describe_validation_error
from maas_operator.api.crd import custom_resource_definition
from maas_operator.api.resources import ALL
from maas_operator.api.trainingjob import KIND as TRAININGJOB_KIND
from maas_operator.api.trainingjob import TrainingJobSpec
from maas_operator.builders.meta import Owner
from maas_operator.builders.trainingjob import attempt_children
from maas_operator.config import OperatorConfig

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"


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


def render_objects(document: dict[str, Any], config: OperatorConfig) -> list[dict[str, Any]]:
    """The children the operator creates for one custom resource (its first attempt)."""
    metadata = document.get("metadata") or {}
    owner = Owner(
        document["kind"],
        metadata.get("name", "unnamed"),
        metadata.get("namespace", "default"),
        metadata.get("uid", PLACEHOLDER_UID),
    )
    spec = TrainingJobSpec.model_validate(document.get("spec") or {})
    return attempt_children(owner, spec, 1, config.training_image)


def render_command(args: argparse.Namespace) -> int:
    config = OperatorConfig.from_env()
    text = sys.stdin.read() if args.file == "-" else pathlib.Path(args.file).read_text()
    rendered: list[dict[str, Any]] = []
    for document in yaml.safe_load_all(text):
        if not isinstance(document, dict) or document.get("kind") != TRAININGJOB_KIND:
            continue
        try:
            rendered.extend(render_objects(document, config))
        except ValidationError as error:
            name = (document.get("metadata") or {}).get("name", "?")
            print(f"{document['kind']} {name}: {describe_validation_error(error)}", file=sys.stderr)
            return 2
    if not rendered:
        print(f"{args.file}: no {TRAININGJOB_KIND} found", file=sys.stderr)
        return 2
    sys.stdout.write(_dump_all(rendered))
    return 0


def operator_command(args: argparse.Namespace) -> int:
    import kopf

    import maas_operator.handlers  # noqa: F401  (registers the handlers)

    config = OperatorConfig.from_env()
    namespaces = args.namespace or list(config.namespaces)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON if args.json_logs else kopf.LogFormat.FULL)
    for noisy in ("aiohttp.access", "kubernetes_asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
            standalone=True,
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maas", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    crds = commands.add_parser("crds", help="print or write the CustomResourceDefinitions")
    crds.add_argument("--output-dir", help="write one file per CRD here instead of printing")
    crds.set_defaults(handler=crds_command)

    render = commands.add_parser("render", help="print the objects the operator creates for a resource")
    render.add_argument("-f", "--file", required=True, help="YAML file with TrainingJob documents, or -")
    render.set_defaults(handler=render_command)

    operator = commands.add_parser("operator", help="run the operator against the current cluster")
    operator.add_argument("-n", "--namespace", action="append", help="watch only this namespace (repeatable)")
    operator.add_argument("--json-logs", action="store_true", help="structured JSON logs")
    operator.add_argument("-v", "--verbose", action="store_true")
    operator.set_defaults(handler=operator_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
