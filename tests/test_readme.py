"""The README, followed in order as a new user would: every command of its fenced ``bash`` blocks and every
``python`` block runs, top to bottom, in a scratch folder laid out like the repository (jobs/, datasets/, the
Makefile; ``data/synth`` is the tiny shards), with the package's venv first on PATH.

Commands sized for real use run in a tiny form (``LOCAL``: the README's command, then the overrides or stand-ins
that make it fit a test; placeholders such as ``<run_id>`` and ``s3://bucket`` become this run's run id and the moto
bucket). Commands that need a GPU, a container registry, Kubernetes or the suite itself are listed in ``SKIPPED``
with the reason and the test that covers them instead; pytest reports each as skipped by name. Both tables are
checked against the README, so a renamed command cannot leave a stale entry behind, and a new README command runs
as written unless it is listed. Ray commands join the suite's session cluster (``RAY_ADDRESS``), as a job on a
cluster joins its head.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from tests.data.fixtures import build_lip

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[1]
# A training job small enough for a test: one short epoch of the tiny model (the benchmark's smoke size).
TINY = ("train.epochs=1 data.epoch_size=8 data.crop_size=64 data.batch_size=4 train.num_workers=1 "
        "train.cpus_per_worker=0.5 model.decoder_channels=16 model.low_level_channels=8 model.feature_dim=16 "
        "sst.embed_dim=8")

COVERED_BY_CLUSTER = "needs a Ray cluster: tests/cluster/test_local_cluster.py runs these scripts and the submit"
SKIPPED = {  # README command prefix -> why it does not run here
    "make test": "this suite",
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train.py --config "
    "jobs/configs/universal.yaml train.epochs=20": "GPU cluster; the same submit on two local nodes: "
                                                   "tests/cluster/test_local_cluster.py",
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/tune.py": "GPU cluster; "
    "tests/cluster/test_local_cluster.py submits to the cluster/local head",
    "python jobs/train.py --config jobs/configs/dedicated.yaml --smoke-test": "tests/train/test_fit.py::"
    "test_dedicated_mode_exports_the_target_head_only runs it (in the suite's process, on its own store)",
    "python jobs/tune.py --config jobs/configs/sweep.yaml --smoke-test": "tests/tune/test_sweep.py::"
    "test_sweep_restores_after_interruption_and_registers_the_challenger runs it with trials of 2 epochs",
    "python jobs/benchmark.py --seeds": "hours of training; --smoke-test covers every arm",
    "python jobs/benchmark.py --protocol steps": "an hour of training; --smoke-test covers every arm",
    "python jobs/benchmark.py --size gpu": "needs a GPU",
    "python jobs/benchmark.py --smoke-test": "tests/train/test_benchmark_smoke.py runs it on the tiny shards",
    "export AWS_ACCESS_KEY_ID=...": "placeholder credentials; the suite's moto server sets its own",
    "source .venv/bin/activate": "the test puts the venv first on PATH",
    "cluster/local/": COVERED_BY_CLUSTER,
    "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000": COVERED_BY_CLUSTER,
    "export RAY_AUTH_MODE=token": COVERED_BY_CLUSTER,
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train.py --config "
    "jobs/configs/universal.yaml data.root=s3://": COVERED_BY_CLUSTER + " (on local data; S3 training: "
                                                    "tests/cluster/test_s3_e2e.py)",
    "ray job list": COVERED_BY_CLUSTER,
    "ray job submit --address http://127.0.0.1:8265 -- python /app/": "needs the container image on Kubernetes",
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/predict.py":
        "needs a cluster; tests/cluster/test_local_cluster.py submits jobs/predict.py to the cluster/local head",
    "sstparse predict --ray ": "tests/test_batch_predict.py runs it (2 actors; local and S3 folders, bad images, "
    "resume) and tests/cluster/test_local_cluster.py submits it with a models:/...@champion URI",
    "docker ": "needs docker and a registry; tests/cluster/test_security.py checks the Dockerfile",
    "kubectl ": "needs Kubernetes; tests/cluster/test_manifests.py validates the manifests",
}
LOCAL = {  # README command -> the command run here ({...}: this run's values)
    "make demo": f'make demo VENV={Path(sys.executable).parents[1]} DEMO_ARGS="{TINY}"',
    "sstparse predict --model runs:/<run_id>/model --domain syn_ppp s3://bucket/photos/ --out preds/ --flip-tta "
    "--keep-going --batch-size 16 --tracking-uri sqlite:///mlruns.db":
        "sstparse predict --model runs:/{run_id}/model --domain syn_ppp s3://{bucket}/readme/photos/ "
        "--out preds_s3/ --flip-tta --keep-going --batch-size 16 --tracking-uri sqlite:///mlruns.db",
    "sstparse export --model ray_results/universal/checkpoint_2026-11-25_15-36-08.812156 --format torchscript "
    "--out exported/lip.pt --heads syn_lip":
        "sstparse export --model {checkpoint} --format torchscript --out exported/lip.pt --heads syn_lip",
    "python jobs/benchmark_export.py": "python jobs/benchmark_export.py --backbones tiny --size 128 --runs 1 "
                                       "--warmup 1",
    "sstparse synth --out s3://my-bucket/shards": "sstparse synth --out s3://{bucket}/readme/shards "
                                                  "--domain syn_ppp --scale 0.01",
    "sstparse synth --out data/synth --preview demo_out/preview.png":
        "sstparse synth --out synth_full --domain syn_ppp --scale 0.01 --preview demo_out/preview.png",
    "sstparse convert --dataset lip --src /data/LIP --out s3://bucket/shards [--on-bad-record skip]":
        "sstparse convert --dataset lip --src LIP --out s3://{bucket}/readme/lip --on-bad-record skip",
    "python jobs/benchmark_predict.py": "python jobs/benchmark_predict.py --images 4 --actors 1 --out bench_predict",
    "python jobs/benchmark_train.py --rounds 2": "python jobs/benchmark_train.py --smoke-test",
    "python jobs/benchmark_data.py --root data/synth --rounds 3 --breakdown 200":
        "python jobs/benchmark_data.py --root bench_data --smoke-test --breakdown 8",
    "make gpu-check": f"make gpu-check VENV={Path(sys.executable).parents[1]}",
    # deployed onto the session cluster instead of blocking, a half-CPU replica (the session cluster has 4 CPUs)
    "serve run sstparse.serve:app model_uri=models:/sst-universal@champion":
        "serve run --non-blocking sstparse.serve:app model_uri=models:/sst-universal@champion num_cpus=0.5",
    "python jobs/benchmark_serve.py": "python jobs/benchmark_serve.py --clients 2 --requests 2 --images 2 "
                                      "--out bench_serve",
}
EXPECT = {  # README command -> what must exist in the scratch folder after it
    "make demo": ["demo_out/report.md", "mlruns.db"],
    "sstparse synth --out data/synth --preview demo_out/preview.png": ["synth_full/syn_ppp/manifest.json"],
    "sstparse export --model models:/sst-universal@champion --format onnx --out exported/universal.onnx":
        ["exported/universal.onnx"],
    "sstparse predict --model models:/sst-universal@champion --domain syn_lip photos/ --out preds/":
        ["preds/p0.png", "preds/p1.png"],
    'curl -sf -X POST --data-binary @photos/p0.jpg "http://127.0.0.1:8000/?domain=syn_lip&flip_tta=true" -o '
    'p0_label.png': ["p0_label.png"],
}
# The README's Python example names an image array and a file it leaves to the reader.
PYTHON_BEFORE = ("import numpy as np\nfrom PIL import Image\n"
                 "rgb_uint8_hwc = np.random.default_rng(0).integers(0, 256, (72, 48, 3), dtype=np.uint8)\n"
                 "Image.fromarray(rgb_uint8_hwc).save('photo.jpg')\n")
PYTHON_AFTER = "\nassert [a.shape for a in labels] == [(72, 48), (72, 48)], [a.shape for a in labels]\n"


def shell_commands(block: str) -> list[str]:
    """One entry per command line: continuation lines joined, comments dropped, blanks squeezed."""
    lines = re.sub(r"\\\n\s*", " ", block).splitlines()
    return [" ".join(s.split()) for s in (re.sub(r"(^|\s)#.*$", "", line) for line in lines) if s.strip()]


def readme_steps() -> list[tuple[str, str]]:
    """(language, text) of every command of the README's bash blocks and every python block, in order."""
    steps = []
    for token in MarkdownIt().parse((ROOT / "README.md").read_text()):
        lang = token.info.split()[0] if token.type == "fence" and token.info.strip() else ""
        if lang == "bash":
            steps += [("bash", c) for c in shell_commands(token.content)]
        elif lang == "python":
            steps.append(("python", token.content))
    return steps


STEPS = readme_steps()


def skip_reason(command: str) -> str | None:
    return next((why for prefix, why in SKIPPED.items() if command.startswith(prefix)), None)


def test_tests_the_readme_names_exist():
    """The README's "What survives what" table names the test behind each row: each must exist."""
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", (ROOT / "README.md").read_text())
    assert len(named) >= 7
    assert [f"{path}::{name}" for path, name in named if f"def {name}(" not in (ROOT / path).read_text()] == []


def test_tables_name_only_readme_commands():
    commands = [text for lang, text in STEPS if lang == "bash"]
    assert len(STEPS) > 20 and any(lang == "python" for lang, _ in STEPS)
    assert [p for p in SKIPPED if not any(c.startswith(p) for c in commands)] == []
    assert [c for c in [*LOCAL, *EXPECT] if c not in commands or skip_reason(c)] == []


@pytest.fixture(scope="module")
def walk(ray_session, s3_server, tiny_shards, tmp_path_factory):
    """The scratch repository layout, its environment, and what earlier steps produced."""
    import boto3
    import ray

    work = tmp_path_factory.mktemp("readme")
    for name in ("Makefile", "jobs", "datasets"):
        (work / name).symlink_to(ROOT / name)
    for name in ("pyproject.toml", "requirements.lock"):  # copied with their times: make compares the venv's
        shutil.copy2(ROOT / name, work / name)            # install stamp with them (a link has its own time)
    (work / "data").mkdir()
    (work / "data" / "synth").symlink_to(tiny_shards)
    build_lip(work / "LIP", {"train": ["ok", "ok", "missing_label"], "val": ["ok"]})
    from PIL import Image
    import numpy as np

    (work / "photos").mkdir()
    s3 = boto3.client("s3", endpoint_url=s3_server.url, region_name="us-east-1")
    for i in range(2):
        path = work / "photos" / f"p{i}.jpg"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (80, 56, 3), dtype=np.uint8)).save(path)
        s3.upload_file(str(path), s3_server.bucket, f"readme/photos/p{i}.jpg")
    # A new user's shell: no registry URI left over from this process (mlflow.set_registry_uri, called by earlier
    # tests, also writes it to os.environ, and a registry URI outranks the tracking URI for models:/ lookups).
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_URI")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI="sqlite:///mlruns.db", RAY_ADDRESS=ray.get_runtime_context().gcs_address,
               RAY_DASHBOARD_ADDRESS=f"http://{ray._private.worker.get_dashboard_url()}")  # `serve shutdown`
    return {"work": work, "env": env, "bucket": s3_server.bucket}


def local_values(walk) -> dict[str, str]:
    """Values the README leaves to the reader, from what `make demo` made."""
    work = walk["work"]
    checkpoints = sorted(p for p in (work / "ray_results" / "universal").glob("checkpoint_*") if p.is_dir())
    run_id = ""
    if (work / "mlruns.db").exists():
        import mlflow

        store = f"sqlite:///{work / 'mlruns.db'}"
        client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
        versions = client.search_model_versions("name = 'sst-universal'")
        run_id = versions[0].run_id if versions else ""
    return {"checkpoint": str(checkpoints[-1]) if checkpoints else "<no checkpoint>", "run_id": run_id,
            "bucket": walk["bucket"]}


def run_step(walk, lang: str, text: str) -> subprocess.CompletedProcess:
    if lang == "python":
        args = [sys.executable, "-c", PYTHON_BEFORE + text + PYTHON_AFTER]
    else:
        command = LOCAL.get(text, text)
        args = ["bash", "-c", command.format(**local_values(walk)) if command in LOCAL.values() else command]
    return subprocess.run(args, cwd=walk["work"], env=walk["env"], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("lang,text", STEPS, ids=[t.splitlines()[0][:70] for _, t in STEPS])
def test_readme_step(walk, lang, text):
    reason = skip_reason(text) if lang == "bash" else None
    if reason:
        pytest.skip(reason)
    proc = run_step(walk, lang, text)
    assert proc.returncode == 0, (f"README step failed: {shlex.quote(text)}\n--- stdout (tail)\n"
                                  f"{proc.stdout[-3000:]}\n--- stderr (tail)\n{proc.stderr[-3000:]}")
    missing = [p for p in EXPECT.get(text, []) if not (walk["work"] / p).exists()]
    assert missing == [], f"{text}: exit 0 but missing {missing}"
