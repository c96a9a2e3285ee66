"""The embedding caches a sweep's probe baselines read, built before any trial starts: each
distinct recipe once, its rows split into chunks run as Ray tasks over the cluster's GPUs (one
each) or CPUs, the driver writing rows into the cache as they arrive (harness/embeddings.py)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import ray
from ray.exceptions import RayTaskError

import baselines
from harness.config import ExperimentConfig
from harness.data.cache import open_patch_cache
from harness.data.prepare import PreparedData
from harness.embeddings import (
    Blocks,
    EmbeddingRecipe,
    EncoderCompute,
    embedding_recipe,
    ensure_embeddings,
    write_embeddings,
)
from harness.run_spec import RunSpec
from harness.tracking import root_cause

# A task builds its encoder (and reads its weights file) once: fewer rows than this are not worth it.
MIN_CHUNK_ROWS = 1024
# Chunks per GPU (or CPU): the progress bar moves more than once per worker, and a fast worker
# takes a slow one's share.
CHUNKS_PER_WORKER = 2


def embedding_recipes(config: ExperimentConfig, data: PreparedData) -> dict[str, EmbeddingRecipe]:
    """Return the recipe of every embedding baseline of `config` on `data`: the encoder and its
    overrides from the baseline's resolved point (`encoder`, `encoder_arch`), its entry's weights."""
    recipes = {}
    for entry in config.baselines:
        if baselines.info(entry.name).input_kind != "embedding":
            continue
        # The encoder a trial of the recipe would read, as every run resolves it.
        encoder = RunSpec.build(config, data, entry.name, fold=config.protocol.search_fold).encoder
        assert encoder is not None, f"{entry.name} reads embeddings but names no encoder"
        recipes[entry.name] = embedding_recipe(data, encoder)
    return recipes


def prepare_embeddings(config: ExperimentConfig, data: PreparedData, *, show_progress: bool = True) -> dict[str, Path]:
    """Return each embedding baseline's cache, every distinct recipe built once (on the cluster
    when Ray is up) or reused, at the experiment's evaluation batch size."""
    recipes = embedding_recipes(config, data)
    batch_size, device = config.training.eval_batch_size, config.training.device
    paths = {
        key: embed_on_cluster(
            data,
            recipe,
            EncoderCompute(recipe, device, batch_size),
            batch_size=batch_size,
            use_gpus=device != "cpu",
            show_progress=show_progress,
        )
        for key, recipe in {recipe.key(): recipe for recipe in recipes.values()}.items()
    }
    return {name: paths[recipe.key()] for name, recipe in recipes.items()}


def _workers(use_gpus: bool) -> tuple[int, bool]:
    """Return how many chunks the cluster runs at once and whether on GPUs (1 each) or CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) if use_gpus else 0
    return (gpus, True) if gpus else (max(1, int(resources.get("CPU", 1))), False)


def embed_on_cluster(
    data: PreparedData,
    recipe: EmbeddingRecipe,
    compute: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    batch_size: int,
    chunk_rows: int | None = None,
    use_gpus: bool = True,
    show_progress: bool = True,
) -> Path:
    """Return the embeddings of `recipe` on `data`, reused or computed by `compute(images, rows)`:
    in chunks of `chunk_rows` rows (None: enough for two per worker, at least MIN_CHUNK_ROWS) as
    Ray tasks on the cluster's GPUs (unless not `use_gpus`) or CPUs, or here when Ray is not up or
    the rows make one chunk."""
    rows = len(open_patch_cache(data.cache_path))
    workers, on_gpus = _workers(use_gpus) if ray.is_initialized() else (1, False)
    size = chunk_rows or max(MIN_CHUNK_ROWS, math.ceil(rows / (workers * CHUNKS_PER_WORKER)))
    if not ray.is_initialized() or size >= rows:
        return ensure_embeddings(data, recipe, batch_size=batch_size, show_progress=show_progress, compute=compute)
    where = f"Ray tasks on {'GPUs' if on_gpus else 'CPUs'} (fp32), {size:,} rows each"
    blocks = _chunks(compute, size, workers, on_gpus)
    return write_embeddings(data, recipe, blocks, computed_on=where, show_progress=show_progress)


def _chunks(compute: Callable[[np.ndarray, np.ndarray], np.ndarray], size: int, workers: int, on_gpus: bool) -> Blocks:
    """Return blocks of `size` rows, each a Ray task (1 GPU, or 1 CPU) given its images through the
    object store; at most two per worker in flight, so the store holds a few chunks at a time."""

    # Defined here, so Ray ships it by value: a worker imports what `compute` needs (the encoder's
    # modules), not the sweep's.
    def embed_chunk(compute: Callable[[np.ndarray, np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
        return compute(images, np.arange(len(images))).astype(np.float16)

    # SPREAD: chunks go to every node with room rather than filling one first (Ray's default packs).
    # A chunk is pure and idempotent: a worker or node lost midway is retried elsewhere.
    task = ray.remote(embed_chunk).options(num_gpus=1 if on_gpus else 0, max_retries=2, scheduling_strategy="SPREAD")

    def blocks(images: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        starts = list(range(0, len(images), size))[::-1]
        pending: dict[ray.ObjectRef, int] = {}
        shared = ray.put(compute)
        try:
            while starts or pending:
                while starts and len(pending) < CHUNKS_PER_WORKER * workers:
                    first = starts.pop()
                    pending[task.remote(shared, np.ascontiguousarray(images[first : first + size]))] = first
                [done], _ = ray.wait(list(pending), num_returns=1)
                yield pending.pop(done), ray.get(done)
        except RayTaskError as exc:
            raise root_cause(exc) from None
        finally:
            for ref in pending:
                ray.cancel(ref)

    return blocks
