"""``examples/continual_learning.py`` end to end on a tiny budget: EP + EWC on split MNIST (task-incremental),
the accuracy matrix on every task after each task, and what the benchmark reads from it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import EXAMPLES


@pytest.fixture
def example(load_example):
    return load_example("continual_learning")


def test_summary_definitions(example):
    matrix = [[0.9, 0.1, 0.1], [0.7, 0.95, 0.1], [0.6, 0.85, 0.9]]
    summary = example.summarize(matrix)
    assert summary["average_accuracy"] == pytest.approx((0.6 + 0.85 + 0.9) / 3)
    assert summary["average_forgetting"] == pytest.approx(((0.9 - 0.6) + (0.95 - 0.85)) / 2)


def test_continual_example_runs_ep_with_ewc_and_replay(tmp_path, example, capsys):
    out = tmp_path / "run"
    results = example.main([
        "--tasks", "split_mnist", "--scenario", "task", "--ewc_lambda", "100", "--max_train_samples", "64",
        "--max_eval_samples", "32", "--fisher_samples", "8", "--hidden_sizes", "16", "--output_dir", str(out),
        "--replay_per_task", "4",
        "--per_device_train_batch_size", "32", "--logging_steps", "1", "--use_cpu", "--num_threads", "1",
    ])
    saved = json.loads((out / "continual_results.json").read_text())
    for split in ("validation", "test"):
        matrix = saved[split]["matrix"]
        assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
        assert all(0.0 <= a <= 1.0 for row in matrix for a in row)
        assert saved[split]["average_accuracy"] == pytest.approx(sum(matrix[-1]) / 5)
    assert results["test"]["average_accuracy"] > 0.6  # two-way tasks: chance is 0.5
    printed = capsys.readouterr().out
    assert "after task 4: test accuracy" in printed
    assert "'ep_energy'" in printed  # trained by EP: EPTrainer logs the settling diagnostics beside the loss


def test_benchmark_results_have_the_issue_shape_and_match_the_report():
    """``docs/continual_learning.json`` (written by ``benchmarks/continual_learning.py``): fractions per sequence and
    method, the numbers the report shows, and the issue's targets as measured."""
    docs = EXAMPLES.parent / "docs"
    summary = json.loads((docs / "continual_learning.json").read_text())
    report = (docs / "continual_learning.md").read_text()
    assert {"permuted_mnist", "split_mnist"} <= set(summary)
    for runs in summary.values():
        assert set(runs) == {"ep", "ep_ewc", "backprop", "backprop_ewc"}
        for name, result in runs.items():
            assert set(result) == {"average_accuracy", "average_forgetting"}
            assert 0 <= result["average_accuracy"] <= 1 and -1 <= result["average_forgetting"] <= 1
            assert f"| {result['average_accuracy']:.4f} | {result['average_forgetting']:.4f} |" in report
    permuted = summary["permuted_mnist"]
    assert permuted["ep_ewc"]["average_forgetting"] < 0.10
    for method in ("", "_ewc"):
        gap = permuted[f"ep{method}"]["average_accuracy"] - permuted[f"backprop{method}"]["average_accuracy"]
        assert abs(gap) <= 0.01


def test_continual_study_results_are_consistent_with_research_md():
    """``docs/research.json``'s ``continual`` (``benchmarks/continual_study.py``): every EP learner's gap to backprop is the
    mean of its per-seed gaps, "beats" means that gap exceeds the seed spread, and docs/research.md shows the means."""
    docs = EXAMPLES.parent / "docs"
    study = json.loads((docs / "research.json").read_text())["continual"]
    report = (docs / "research.md").read_text()
    assert set(study["summary"]) == {"permuted_mnist", "split_mnist", "split_fashion_mnist", "rotated_mnist"}
    for by_learner in study["summary"].values():
        assert {"backprop", "ep"} <= set(by_learner)
        for learner, by_method in by_learner.items():
            assert set(by_method) == {"plain", "ewc", "replay"}
            for result in by_method.values():
                accuracy = result["average_accuracy"]
                assert f"{accuracy['mean']:.4f} ± {accuracy['std']:.4f}" in report
                gap = result.get("gap_to_backprop")
                if learner.startswith("backprop"):  # the references
                    assert gap is None
                    continue
                assert gap["twin"] in by_learner and gap["twin"].startswith("backprop")
                assert gap["mean"] == pytest.approx(sum(gap["per_seed"]) / len(gap["per_seed"]))
                assert gap["beats_backprop"] == (gap["mean"] > gap["seed_spread"])
