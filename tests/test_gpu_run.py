"""The prepared GPU run (scripts/gpu_run.sh) at toy size on a CPU, so that it cannot rot before a GPU is at hand:
every part runs and the one JSON holds its figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_run_at_toy_size_on_a_cpu_writes_every_figure(tmp_path):
    env = {**os.environ, "IMAGEN_BENCH_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    proc = subprocess.run([str(ROOT / "scripts" / "gpu_run.sh"), "--toy", "--device", "cpu", "--out",
                           str(tmp_path / "g"), "--pytest-args", "tests/test_gpu.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "g" / "gpu_run.json").read_text())
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:], report["parts"])
    assert all(p["ok"] for p in report["parts"].values()), report["parts"]
    assert report["env"]["device"] == "cpu" and report["env"]["torch"]
    assert report["pytest"]["returncode"] == 0 and report["pytest"]["skipped"] >= 1  # no CUDA: every gpu test skips
    rows = report["throughput"]["rows"]
    assert {r["mode"] for r in rows} == {"sample (CFG step)", "train step"} and all(r["mfu"] > 0 for r in rows)
    train = report["train"]
    assert train["steps"] == 3 and train["batch"] == 4 and train["flops_per_step"] > 0 and train["mfu"] > 0
    assert report["calibrate"]["steps_per_s"] > 0
    assert [m["measured_bytes"] for m in report["memory"]] == [None, None]  # measured on CUDA only
    assert all(m["planned_bytes"] > 0 for m in report["memory"])
    levels = report["probe"]["levels"]
    assert [r["log_snr"] for r in levels] == [-20.0, -3.0, -1.0, 0.0, 1.0, 3.0]
    assert all(0 <= v <= 1 for r in levels for v in r["accuracy"].values())
    samples = report["samples"]
    assert samples["resolution"] == 64 and set(samples["by_guidance"]) == {"1", "3", "5"}
    assert all(r["count"]["overall"] == 4 for r in samples["by_guidance"].values())
    assert (tmp_path / "g" / "model" / "base.safetensors").is_file()
