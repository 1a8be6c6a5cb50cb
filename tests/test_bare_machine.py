"""The core runs with only the GPU machine's packages: no datasets, math-verify, reasoning-gym,
champ, trl, deepspeed or vLLM (``scripts/gpu_rehearsal.sh`` proves it in a virtualenv of its own;
this test blocks the imports in a fresh interpreter)."""

import json
import subprocess
import sys
from pathlib import Path

OPTIONAL = ["datasets", "math_verify", "reasoning_gym", "champ_dataset", "trl", "deepspeed",
            "vllm"]

SCRIPT = """
import sys
for name in {optional}:
    sys.modules[name] = None  # import fails, find_spec answers None: as if not installed
from explorl.cli import main
code = main(["train", "max_steps=2", "prompts_per_step=4", "eval_size=8", "eval_pass_k=1,2",
             "plots=false", "progress=false", "output_dir={out}"])
code |= main(["train", "method=herl+e3", "dataset=rubric", "max_steps=2", "prompts_per_step=4",
              "eval_size=8", "plots=false", "progress=false", "output_dir={out}-herl"])
print("imported:", sorted(n for n in {optional} if sys.modules.get(n) is not None))
sys.exit(code)
"""


def test_train_and_evaluate_without_the_optional_packages(tmp_path):
    out = tmp_path / "run"
    script = SCRIPT.format(optional=OPTIONAL, out=out)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported: []" in done.stdout
    summary = json.loads(Path(out, "summary.json").read_text())
    assert summary["steps"] == 2 and "2" in summary["after"]["pass_at_k"]
    assert json.loads(Path(f"{out}-herl", "summary.json").read_text())["steps"] == 2
