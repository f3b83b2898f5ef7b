"""`actrec demo`: the main job on the embedded default data, with no network.

    DIR/data/actions   synthetic action clips (UCF101 layout)      <- actrec data actions
    DIR/data/commands  spoken commands (Speech Commands layout)    <- actrec data commands
    DIR/runs/actions_av, DIR/runs/commands                         <- actrec preprocess + actrec train

Every stage is the same function the CLI calls, and each skips work that is already done,
so running the demo twice reuses the finished stages. The run dirs are ordinary: every
`actrec` command accepts them with --run-dir.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# --quick: small data and few epochs, for the end-to-end test (minutes, not quality).
QUICK = {
    "clips_per_class": 4,
    "per_word": 12,
    "actions": ["train.epochs=3"],
    "commands": ["train.epochs=3"],
}
FULL = {"clips_per_class": 16, "per_word": 60, "actions": [], "commands": []}


def demo(out: str | Path = "demo", quick: bool = False, seed: int = 0) -> dict:
    """Generate the embedded data, preprocess it and train both models; print a summary table."""
    from data_prep.actions import make_actions
    from data_prep.commands import make_commands
    from pipeline.preprocess import preprocess
    from pipeline.train import train

    out = Path(out)
    plan = QUICK if quick else FULL
    started = time.time()
    results = {}

    _stage("1/4 generate action clips")
    actions_root = out / "data" / "actions"
    if not (actions_root / "testlist01.txt").is_file():
        make_actions(actions_root, clips_per_class=plan["clips_per_class"], seed=seed)
    else:
        print(f"  reusing {actions_root}")
    _stage("2/4 generate spoken commands")
    commands_root = out / "data" / "commands"
    make_commands(commands_root, per_word=plan["per_word"], seed=seed)

    for step, name, root in (("3/4", "actions_av", actions_root), ("4/4", "commands", commands_root)):
        _stage(f"{step} preprocess + train: {name}")
        overrides = [f"data.root={root}", f"seed={seed}", *plan[name.split('_')[0]]]
        cfg = load_config(CONFIGS / f"{name}.yaml", overrides)
        run_dir = out / "runs" / name
        index = preprocess(cfg, run_dir)
        result = train(cfg, run_dir)
        results[name] = {"clips": index["counts"], "val_accuracy": result["val_accuracy"], "run_dir": str(run_dir)}

    minutes = (time.time() - started) / 60
    print(f"\nactrec demo finished in {minutes:.1f} min")
    print(f"{'run':<12} {'train/val/test clips':<22} {'val accuracy':>12}  run dir")
    for name, r in results.items():
        c = r["clips"]
        print(f"{name:<12} {c['train']:>5}/{c['val']:>3}/{c['test']:>4}{'':<10} {r['val_accuracy']:>12.3f}  {r['run_dir']}")
    return results


def _stage(title: str) -> None:
    print(f"\n== {title} ==", flush=True)
