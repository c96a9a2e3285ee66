"""bench/sweep_scale.py --smoke: 2 trials through the harness's sweep (SQLite) and a bare Tuner over
the same points; --study-only: the harness's searcher alone over SQLite, PostgreSQL and Optuna's
journal. Their figures, read at full precision from --figures, are checked against the lines they
print and against each other, never judged as timings. make test runs the study-only run (seconds);
the smoke starts a Ray per side, minutes on two cores, so make test-cluster runs it, with Ray embedded
and on the namespaced cluster (tools/netns_cluster.py, skipped with the reason where network
namespaces are not permitted)."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from types import ModuleType

import pytest

from tests.bench.conftest import BenchRun
from tests.conftest import REPO


def _ms(p: dict[str, float]) -> str:
    return f"{p['p50_ms']:.1f}/{p['p99_ms']:.1f} ms"


def _searcher_line(latency: dict) -> str:
    ask, tell = latency["ask"], latency["tell"]
    return (
        f"Optuna ask p50/p99: first 10% {_ms(ask['first'])}, last 10% {_ms(ask['last'])}; "
        f"tell: first 10% {_ms(tell['first'])}, last 10% {_ms(tell['last'])}"
    )


def _check_latencies(latency: dict) -> None:
    # Every trial asked and told once; the first and last 10% of 2 calls are one call each.
    assert (latency["asks"], latency["tells"]) == (2, 2)
    for call in ("ask", "tell"):
        for end in ("first", "last"):
            measured = latency[call][end]
            assert measured["p50_ms"] == measured["p99_ms"] > 0
    for source in ("mlflow_driver", "mlflow_probe"):
        assert latency[source]["calls"] > 0 and 0 < latency[source]["p50_ms"] <= latency[source]["p99_ms"]


def _netns_refusal() -> str | None:
    from tools.netns_cluster import NetnsUnavailable, ensure_netns_permitted

    try:
        ensure_netns_permitted()
    except NetnsUnavailable as refused:
        return str(refused)
    return None


@pytest.mark.e2e
@pytest.mark.parametrize("cluster", ["local", pytest.param("netns", marks=pytest.mark.cluster)])
def test_sweep_scale_smoke_measures_both_sides(cluster: str, run_bench: Callable[..., BenchRun]) -> None:
    if cluster == "netns" and (refusal := _netns_refusal()) is not None:
        pytest.skip(refusal)
    run = run_bench("sweep_scale.py", "--smoke", "--cluster", cluster, timeout=1200)
    figures = run.figures
    assert (figures["epochs"], figures["cluster"], list(figures["sizes"])) == (3, cluster, ["2"])
    size = figures["sizes"]["2"]
    # The bare side trains exactly the points the harness's trials trained.
    assert size["trials"] == size["bare_trials"] == 2
    assert size["ratio"] == pytest.approx(size["harness_s"] / size["bare_s"], rel=1e-9)
    assert size["trials_per_min"] == pytest.approx(2 / size["harness_s"] * 60, rel=1e-9)
    assert 0 < size["leaderboard_s"] < size["harness_s"] < math.inf
    assert 0 < size["search_cpu_s_per_trial"] <= size["cpu_s_per_trial"] and size["peak_rss_mb"] > 0
    _check_latencies(size["latency"])
    assert run.line("2 trials: harness ") == (
        f"2 trials: harness {size['harness_s']:.1f} s (leaderboard {size['leaderboard_s']:.1f} s), bare Tune "
        f"{size['bare_s']:.1f} s, ratio {size['ratio']:.3f}; {size['trials_per_min']:.1f} trials/min"
    )
    assert (
        f"  driver CPU per trial: {size['cpu_s_per_trial']:.4f} s over the sweep, "
        f"{size['search_cpu_s_per_trial']:.4f} s over the search"
    ) in run.lines
    assert f"  {_searcher_line(size['latency'])}" in run.lines
    # SQLite at the storage size is the size's own run, not a sweep of its own.
    assert figures["storages_size"] == 2 and list(figures["storages"]) == ["sqlite"]
    sqlite = figures["storages"]["sqlite"]
    assert sqlite["harness_s"] == size["harness_s"] and sqlite["latency"] == size["latency"]
    assert run.line("storage sqlite at 2 trials: ") == (
        f"storage sqlite at 2 trials: harness {sqlite['harness_s']:.1f} s; {_searcher_line(sqlite['latency'])}"
    )
    # One size of 2 trials measures none of the targets, and says so.
    targets = figures["targets"]
    assert {name: (t["value"], t["verdict"]) for name, t in targets.items()} == {
        name: (None, "not measured") for name in ("ratio", "cpu_flat", "ask_p99")
    }
    assert sum(line.startswith("target: ") and "not measured (" in line for line in run.lines) == 3


def test_sweep_scale_study_only_drives_the_searcher_over_every_storage(run_bench: Callable[..., BenchRun]) -> None:
    # 12 trials: TPE samples its first 10 at random, so the last two asks are TPE's own.
    run = run_bench("sweep_scale.py", "--study-only", "--trials", "12", "--storages", "sqlite,journal,postgresql")
    study = run.figures["study_only"]
    assert study["concurrency"] == 2
    kinds = [kind for kind in study if kind != "concurrency"]
    skipped = [line for line in run.lines if line.startswith("storage postgresql: skipped")]
    assert kinds == ["sqlite", "journal"] + ([] if skipped else ["postgresql"])
    for kind in kinds:
        row = study[kind]["12"]
        assert row["trials"] == row["tells"] == 12  # each trial asked once and told once
        for call in ("ask", "start", "tell"):
            for end in ("first", "last"):  # a tenth of 12 calls is one call
                assert row[call][end]["p50_ms"] == row[call][end]["p99_ms"] > 0
        assert row["cpu_s_per_trial"]["first"] > 0 and row["cpu_s_per_trial"]["last"] > 0
        assert 0 < row["storage_mb"] and 0 < row["wall_s"] < math.inf
        ask, tell, cpu = row["ask"], row["tell"], row["cpu_s_per_trial"]
        assert run.line(f"{kind} 12 trials: ") == (
            f"{kind} 12 trials: ask p50/p99 first 10% {_ms(ask['first'])}, last 10% {_ms(ask['last'])}; "
            f"tell first {_ms(tell['first'])}, last {_ms(tell['last'])}; CPU per trial first "
            f"{cpu['first'] * 1e3:.1f} ms, last {cpu['last'] * 1e3:.1f} ms; storage {row['storage_mb']:.2f} MB; "
            f"{row['wall_s']:.1f} s"
        )
    # 12 trials are not the 5,000 of the target, which is not judged.
    assert "study_only_targets" not in run.figures
    assert not [line for line in run.lines if line.startswith("target: ")]


def _bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO / "bench"))  # where the bench finds its _figures
    spec = importlib.util.spec_from_file_location("sweep_scale", REPO / "bench" / "sweep_scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latency_percentiles_are_nearest_rank_over_the_first_and_last_tenth(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench(monkeypatch)
    seconds = [ms / 1000 for ms in range(100, 0, -1)]  # 100 calls, 100 ms down to 1 ms
    assert bench.percentiles(seconds) == {"p50_ms": pytest.approx(50.5), "p99_ms": pytest.approx(99)}
    assert bench.ends(seconds) == {
        "first": {"p50_ms": pytest.approx(95.5), "p99_ms": pytest.approx(100)},
        "last": {"p50_ms": pytest.approx(5.5), "p99_ms": pytest.approx(10)},
    }
    # Fewer than ten calls: each end is one call; none at all is not a number.
    assert bench.ends([0.002, 0.001])["last"] == {"p50_ms": pytest.approx(1), "p99_ms": pytest.approx(1)}
    assert all(math.isnan(v) for v in bench.percentiles([]).values())
