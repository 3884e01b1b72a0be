"""The head's part of a causal-LM job, before any worker starts: check everything that can be
checked (exit 64 in seconds, naming the field), settle the tokenizer, and tokenize the data
unless it is streamed.

Checked here: the base model has a tokenizer (and, for chat data, a chat template); the
sequence length fits its context; LoRA's target modules exist (on the model built on the meta
device, without weights); every record fits the dataset format (a sample, when streamed); the
data fills at least one global batch.
"""

from __future__ import annotations

import logging
import pathlib
import random
import tempfile
from dataclasses import dataclass
from typing import Any

from maas_operator.api.trainer import TrainerSpec
from maas_workloads.train.config import JobContext
from maas_workloads.train.errors import ConfigurationError
from maas_workloads.train.llm import base, encoding, modeling, records
from maas_workloads.train.llm.encoding import TokenBlocks
from maas_workloads.train.llm.tokenizer import texts_of, train_tokenizer

DATASET_FIELD = "spec.trainer.dataset.uri"
VALIDATION_FIELD = "spec.trainer.dataset.validationUri"
LM_FIELD = "spec.trainer.causalLM"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedLM:
    """What the workers need from the head."""

    files: dict[str, bytes]
    """Tokenizer files, and config.json for a model trained from scratch."""
    source: records.DataSource
    train: TokenBlocks | None
    """None when the data is streamed."""
    validation: TokenBlocks | None


def _tokenizer_of(model: base.BaseModel) -> Any:
    from transformers import AutoTokenizer

    if not any((model.directory / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise ConfigurationError(
            f"{LM_FIELD}.baseModel.uri: {model.uri} has no tokenizer (tokenizer.json or tokenizer.model): "
            "publish the model with its tokenizer"
        )
    try:
        return AutoTokenizer.from_pretrained(model.directory)
    except (OSError, ValueError) as error:
        raise ConfigurationError(
            f"{LM_FIELD}.baseModel.uri: cannot load the tokenizer of {model.uri}: {error}"
        ) from error


def _check_base(spec: TrainerSpec, model: base.BaseModel, tokenizer: Any, data_format: str) -> Any:
    from transformers import AutoConfig

    lm = spec.causal_lm
    assert lm is not None and lm.base_model is not None
    try:
        config = AutoConfig.from_pretrained(model.directory)
    except (OSError, ValueError) as error:
        raise ConfigurationError(
            f"{LM_FIELD}.baseModel.uri: cannot read config.json of {model.uri}: {error}"
        ) from error
    context = modeling.context_length(config)
    if context is not None and lm.sequence_length > context:
        raise ConfigurationError(
            f"{LM_FIELD}.sequenceLength: {lm.sequence_length} is longer than the base model's context length "
            f"{context} (max_position_embeddings)"
        )
    if data_format == "chat" and not tokenizer.chat_template:
        raise ConfigurationError(
            f"{LM_FIELD}.baseModel.uri: the tokenizer of {model.uri} has no chat template, which chat data "
            "needs: add one to its tokenizer_config.json, or train on text data"
        )
    if lm.method != "full":
        modeling.check_adapter_targets(config, lm.lora)
        if not lm.merge_adapter and model.manifest_sha256 is None:
            raise ConfigurationError(
                f"{LM_FIELD}.mergeAdapter: an adapter alone names its base by manifest sha256, and {model.uri} "
                "has no manifest.json: keep mergeAdapter, or publish the base model as an artifact"
            )
    return config


def _split(
    items: list[tuple[str, records.Record]], fraction: float, seed: int
) -> tuple[list[tuple[str, records.Record]], list[tuple[str, records.Record]]]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    held_out = int(len(items) * fraction)
    return [items[i] for i in sorted(order[held_out:])], [items[i] for i in sorted(order[:held_out])]


def _encode(
    encoder: encoding.Encoder, items: list[tuple[str, records.Record]], spec: TrainerSpec, field: str
) -> TokenBlocks:
    from jinja2 import TemplateError

    lm = spec.causal_lm
    assert lm is not None
    try:
        return encoding.blocks(encoder, items, lm.sequence_length, lm.packing, encoding.pad_token_id(encoder.tokenizer))
    except TemplateError as error:
        raise ConfigurationError(f"{field}: the chat template cannot render these messages: {error}") from error


def prepare(context: JobContext, scratch: pathlib.Path | None = None) -> PreparedLM:
    """Check the spec against the model and data; ConfigurationError names the field."""
    spec = context.spec.trainer
    assert spec is not None and spec.causal_lm is not None
    lm, dataset, hp = spec.causal_lm, spec.dataset, spec.hyperparameters
    scratch = scratch or pathlib.Path(tempfile.mkdtemp(prefix="maas-prepare-"))
    source = records.open_source(dataset.uri, DATASET_FIELD, dataset.format)
    validation_source = (
        records.open_source(dataset.validation_uri, VALIDATION_FIELD, source.format) if dataset.validation_uri else None
    )
    streaming = bool(dataset.streaming)
    items = list(records.read(source, records.SAMPLE_BYTES if streaming else None))
    if not items:
        raise ConfigurationError(f"{DATASET_FIELD}: {dataset.uri} holds no records")
    train_items, held_out = _split(items, 0.0 if streaming else spec.validation_split, hp.seed)
    if validation_source is not None:
        held_out = list(records.read(validation_source))
    files_dir = scratch / "files"
    if lm.base_model is not None:
        model = base.fetch_metadata(lm.base_model, scratch / "base")
        tokenizer = _tokenizer_of(model)
        _check_base(spec, model, tokenizer, source.format)
        tokenizer.save_pretrained(files_dir)
    else:
        assert lm.architecture is not None
        vocab = lm.architecture.vocab_size or modeling.DEFAULT_VOCAB[lm.architecture.size]
        tokenizer = train_tokenizer(texts_of(record for _, record in train_items), vocab, files_dir)
        modeling.scratch_config(lm.architecture, tokenizer).save_pretrained(files_dir)
    encoder = encoding.Encoder(tokenizer, source.format, lm.loss_on)
    train = _encode(encoder, train_items, spec, DATASET_FIELD)
    validation = _encode(encoder, held_out, spec, VALIDATION_FIELD if validation_source else DATASET_FIELD)
    if not streaming:
        _check_size(train, spec, context.workers)
    if context.spec.output.variants and not len(validation):
        split = "spec.trainer.hyperparameters.validationSplit"
        fix = f"add records to {VALIDATION_FIELD}" if validation_source else f"raise {split}"
        raise ConfigurationError(
            f"spec.output.variants: the validation data makes no sequences to measure perplexity on: {fix}"
        )
    files = {path.name: path.read_bytes() for path in files_dir.iterdir() if path.is_file()}
    log.info(
        "%s: %s sequences of %d tokens to train on, %d to validate on; a tokenizer of %d tokens",
        dataset.uri,
        "streamed" if streaming else len(train),
        lm.sequence_length,
        len(validation),
        len(tokenizer),
    )
    return PreparedLM(files, source, None if streaming else train, validation if len(validation) else None)


def _check_size(train: TokenBlocks, spec: TrainerSpec, workers: int) -> None:
    hp = spec.hyperparameters
    assert spec.causal_lm is not None
    global_batch = hp.batch_size * workers * (hp.gradient_accumulation_steps or 1)
    if len(train) < global_batch:
        raise ConfigurationError(
            f"{DATASET_FIELD}: the data makes {len(train)} training sequences of {spec.causal_lm.sequence_length} "
            f"tokens, fewer than one global batch (batchSize {hp.batch_size} x {workers} workers x "
            f"gradientAccumulationSteps): add data, or lower batchSize or sequenceLength"
        )
