"""An embedding cache built as Ray tasks over the workers of the namespaced cluster: chunks of the
stored images go through the object store to tasks on both worker hosts, each reads the encoder's
weights file where it runs (its digest checked there), and the driver writes the rows: the same
embeddings a local build computes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from harness.embeddings import open_embeddings
from tools.netns_cluster import NetnsCluster

# Run on the driver host: prepare a synthetic IDC tree, write a tiny Phikon-family weights file,
# join the cluster and build the cache in chunks of 40 rows; each task leaves its node's id behind.
SCRIPT = """
import json, sys, time
from pathlib import Path

import ray

import baselines
from harness.config import DatasetSpec, ProtocolSpec
from harness.data.datasets.idc import write_synthetic_idc
from harness.data.prepare import index_dataset, prepare
from harness.embeddings import EncoderCompute, embedding_recipe, ensure_embeddings
from harness.sweep._embeddings import embed_on_cluster

out, address = Path(sys.argv[1]), sys.argv[2]
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32}


class Where(EncoderCompute):
    def __call__(self, images, rows):
        nodes = out / "nodes"
        nodes.mkdir(exist_ok=True)
        (nodes / ray.get_runtime_context().get_node_id()).touch()
        # Each chunk waits (2 minutes at most) until both workers have one: with three chunks in
        # flight and 2 CPUs a worker, the third goes to the other worker however fast the first run.
        deadline = time.monotonic() + 120
        while len(list(nodes.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        return super().__call__(images, rows)


root = write_synthetic_idc(out / "idc", patients=6, seed=0)
spec = DatasetSpec(name="idc", root=root, allow_subset=True)
manifest = index_dataset(spec)[0]
data = prepare(manifest, spec, ProtocolSpec(folds=2, test_fraction=0.25), out / "cluster")
local = prepare(manifest, spec, ProtocolSpec(folds=2, test_fraction=0.25), out / "local")
weights = baselines.write_random_encoder("phikon", out / "phikon.bin", **TINY)
recipe = embedding_recipe(data, baselines.EncoderRef.of("phikon", weights, TINY))
ray.init(address=address)
built = embed_on_cluster(
    data, recipe, Where(recipe, "cpu", 32), batch_size=32, chunk_rows=40, use_gpus=False, show_progress=False
)
ray.shutdown()
alone = ensure_embeddings(local, embedding_recipe(local, recipe.encoder), device="cpu", show_progress=False)
print(json.dumps({"cluster": str(built), "local": str(alone), "rows": data.rows}))
"""


def test_the_cache_is_built_by_tasks_on_both_workers_and_equals_a_local_build(
    netns_cluster: NetnsCluster, tmp_path: Path
) -> None:
    script = tmp_path / "embed.py"
    script.write_text(SCRIPT)
    done = netns_cluster.run(
        netns_cluster.driver, [sys.executable, str(script), str(tmp_path), netns_cluster.ray_address], timeout=300
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    cluster, local = Path(found["cluster"]), Path(found["local"])
    assert (
        json.loads(cluster.with_suffix(".json").read_text())["computed_on"] == "Ray tasks on CPUs (fp32), 40 rows each"
    )
    np.testing.assert_array_equal(open_embeddings(cluster), open_embeddings(local))
    assert open_embeddings(cluster).shape[0] == found["rows"] > 80
    addresses = {w.address for w in netns_cluster.workers}
    workers = {n["NodeID"] for n in netns_cluster.ray_nodes() if n["NodeManagerAddress"] in addresses}
    assert {p.name for p in (tmp_path / "nodes").iterdir()} == workers and len(workers) == 2
