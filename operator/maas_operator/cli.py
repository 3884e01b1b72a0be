"""The `maas` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import pathlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from maas_operator.api.crd import custom_resource_definition
from maas_operator.api.modelservice import KIND as MODELSERVICE_KIND
from maas_operator.api.modelservice import ModelServiceSpec, ModelServiceStatus
from maas_operator.api.resources import ALL, InvalidResourceError, parse_spec
from maas_operator.api.trainingjob import KIND as TRAININGJOB_KIND
from maas_operator.api.trainingjob import TrainingJobSpec
from maas_operator.builders.meta import Owner
from maas_operator.builders.trainingjob import attempt_children
from maas_operator.config import OperatorConfig
from maas_operator.status.modelservice import ModelServiceView, plan_modelservice
from maas_operator.status.modelservice import Observed as ModelServiceObserved
from maas_operator.status.plan import written_manifests

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
RENDERED_KINDS = (TRAININGJOB_KIND, MODELSERVICE_KIND)


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


def _owner(document: dict[str, Any]) -> Owner:
    metadata = document["metadata"]
    return Owner(
        document["kind"], metadata["name"], metadata.get("namespace", "default"), metadata.get("uid", PLACEHOLDER_UID)
    )


def render_objects(
    document: dict[str, Any], config: OperatorConfig, training_jobs: dict[str, dict[str, Any] | None]
) -> list[dict[str, Any]]:
    """The children the operator creates first for one custom resource.

    A ModelService goes through the real planner, with the TrainingJobs of the same file as
    the ones it may reference: until one has succeeded, nothing is created for it. Raises
    InvalidResourceError, naming the field, for what the API server or the operator would refuse.
    """
    spec = parse_spec(document)
    owner = _owner(document)
    if isinstance(spec, TrainingJobSpec):
        return attempt_children(owner, spec, 1, config.training_image)
    assert isinstance(spec, ModelServiceSpec)
    service = ModelServiceView(owner, 1, spec, None, ModelServiceStatus())
    plan = plan_modelservice(
        service,
        ModelServiceObserved(training_jobs=training_jobs),
        datetime.datetime.now(datetime.UTC),
        config.serving_image,
    )
    if plan.status.model is None:
        resolved = next(c for c in plan.status.conditions if c.type == "ModelResolved")
        print(f"{owner.kind} {owner.name}: nothing to create yet: {resolved.message}", file=sys.stderr)
    return written_manifests(plan)


def _read_documents(path: str) -> list[dict[str, Any]]:
    """The TrainingJob and ModelService documents of a YAML file (or stdin for `-`)."""
    text = sys.stdin.read() if path == "-" else pathlib.Path(path).read_text()
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict) and d.get("kind") in RENDERED_KINDS]


def render_command(args: argparse.Namespace) -> int:
    config = OperatorConfig.from_env()
    try:
        documents = _read_documents(args.file)
    except (OSError, yaml.YAMLError) as error:
        print(f"maas render: cannot read {args.file}: {error}", file=sys.stderr)
        return 2
    training_jobs: dict[str, dict[str, Any] | None] = {
        str((d.get("metadata") or {}).get("name", "")): d for d in documents if d["kind"] == TRAININGJOB_KIND
    }
    rendered: list[dict[str, Any]] = []
    for document in documents:
        try:
            rendered.extend(render_objects(document, config, training_jobs))
        except InvalidResourceError as error:
            metadata = document.get("metadata")
            name = metadata.get("name", "?") if isinstance(metadata, dict) else "?"
            print(f"{document['kind']} {name}: {error}", file=sys.stderr)
            return 2
    if not documents:
        print(f"{args.file}: no {' or '.join(RENDERED_KINDS)} found", file=sys.stderr)
        return 2
    sys.stdout.write(_dump_all(rendered))
    return 0


def run_command(args: argparse.Namespace) -> int:
    from maas_operator import local
    from maas_operator.local_kubelet import RunError

    config = OperatorConfig.from_env()
    documents = [
        document
        for path in args.file
        for document in yaml.safe_load_all(pathlib.Path(path).read_text())
        if isinstance(document, dict)
    ]

    def wait_for_interrupt(url: str) -> None:
        print(f"serving at {url} until Ctrl-C", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()

    try:
        for document in documents:
            if document.get("kind") in RENDERED_KINDS:
                parse_spec(document)
        local.run(
            documents,
            pathlib.Path(args.workdir),
            config.training_image,
            config.serving_image,
            keep_serving=wait_for_interrupt if args.keep_serving else None,
        )
    except InvalidResourceError as error:
        print(f"maas run: {error}", file=sys.stderr)
        return 2
    except RunError as error:
        print(f"maas run: {error}", file=sys.stderr)
        return 1
    return 0


def operator_command(args: argparse.Namespace) -> int:
    import kopf

    import maas_operator.handlers  # noqa: F401  (registers the handlers)
    from maas_operator.handlers.leadership import lease_namespace

    config = OperatorConfig.from_env()
    if args.workers is not None:
        config = OperatorConfig.model_validate({**config.model_dump(), "workers": args.workers})
    namespaces = args.namespace or list(config.namespaces)
    if config.leader_election:
        try:
            lease_namespace(config)
        except ValueError as error:
            print(f"maas operator: {error}", file=sys.stderr)
            return 2
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON if args.json_logs else kopf.LogFormat.FULL)
    for noisy in ("aiohttp.access", "kubernetes_asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:  # kopf logs "Handler ... succeeded" for every watch event at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
            standalone=True,
            memo=kopf.Memo(config=config),
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
    render.add_argument(
        "-f", "--file", required=True, help="YAML file with TrainingJob and ModelService documents, or -"
    )
    render.set_defaults(handler=render_command)

    run = commands.add_parser("run", help="train a TrainingJob and serve its model on this machine, without a cluster")
    run.add_argument(
        "-f", "--file", action="append", required=True, help="YAML with a TrainingJob, ModelServices, Secrets"
    )
    run.add_argument("--workdir", default=".maas-run", help="logs, volumes and caches (default .maas-run)")
    run.add_argument("--keep-serving", action="store_true", help="serve until Ctrl-C instead of stopping")
    run.set_defaults(handler=run_command)

    operator = commands.add_parser("operator", help="run the operator against the current cluster")
    operator.add_argument("-n", "--namespace", action="append", help="watch only this namespace (repeatable)")
    operator.add_argument(
        "--workers", type=int, help="objects reconciled at once (default MAAS_OPERATOR_WORKERS, else 32)"
    )
    operator.add_argument("--json-logs", action="store_true", help="structured JSON logs")
    operator.add_argument("-v", "--verbose", action="store_true")
    operator.set_defaults(handler=operator_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
