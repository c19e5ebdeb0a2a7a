"""The text Siamese recipe end to end on Debian's real package descriptions, and the Debian loader on them.

The descriptions come from apt (``apt-get update -o Acquire::Languages=en``): a clean CI machine (root, a
Debian mirror) runs that here first; a machine without apt-get skips these tests and says why.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_siamese.text.debian import APT_UPDATE, DebianDescriptionsMissing, debian_description_pairs, translation_files

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def debian_descriptions() -> list[Path]:
    try:
        return translation_files()
    except DebianDescriptionsMissing:
        if shutil.which("apt-get") is None:
            pytest.skip("Debian's package descriptions are not downloaded and this machine has no apt-get to run "
                        f"`{' '.join(APT_UPDATE)}`")
    done = subprocess.run(APT_UPDATE, capture_output=True, text=True)
    assert done.returncode == 0, f"`{' '.join(APT_UPDATE)}` failed (root and a Debian mirror are needed):\n{done.stderr}"
    return translation_files()


def test_debian_pairs_are_short_to_long_descriptions_grouped_by_source(debian_descriptions):
    pairs = debian_description_pairs()
    assert len(pairs) > 30_000
    by_group: dict[str, int] = {}
    for pair in pairs:
        assert pair.query and pair.positive and "\n " not in pair.positive
        by_group[pair.group] = by_group.get(pair.group, 0) + 1
    assert len(by_group) < len(pairs)  # binary packages share their source package
    assert max(by_group.values()) > 5


def test_recipe_trains_and_beats_its_own_initialisation_on_held_out_descriptions(debian_descriptions, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "ssl_siamese.recipes.text_siamese", "--data.source", "debian",
               "--data.max_pairs", "2000", "--data.test_fraction", "0.2", "--data.batch_size", "64",
               "--model.dim", "128", "--model.vocab_size", "4000", "--model.bigram_buckets", "16384",
               "--model.lr", "0.005", "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
               "--trainer.enable_progress_bar", "false", "--out", str(out), "--log_to", "wandb"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "0 on both sides" in done.stdout and "hybrid_rrf" in done.stdout
    results = json.loads((out / "results.json").read_text())
    metrics = results["metrics"]
    print(done.stdout[done.stdout.index("retrieval of"):])
    init, trained, bm25 = metrics["dense_at_init"], metrics["dense"], metrics["bm25"]
    assert trained["recall@10"] > init["recall@10"] + 0.05
    assert trained["mrr@10"] > init["mrr@10"] + 0.05
    assert bm25["recall@10"] > 0.5  # the lexical baseline is strong on this task
    assert results["queries"] > 300 and results["documents"] > 300
    assert list((out / "wandb").glob("offline-run-*"))
    from ssl_siamese.text.export import load_text_encoder

    encoder = load_text_encoder(results["encoder_path"])
    assert encoder.encode(["image viewer"]).shape == (1, 128)


def test_recipe_names_a_missing_pair_file(tmp_path):
    from ssl_siamese.recipes.text_siamese import main

    with pytest.raises(SystemExit, match="no pair file"):
        main(["--data.source", str(tmp_path / "absent.jsonl"), "--log_to", "none", "--out", str(tmp_path)])


def test_recipe_resumes_the_builtin_encoder_with_the_tokenizer_its_checkpoint_holds(tmp_path, monkeypatch):
    from ssl_siamese.recipes.text_siamese import main
    from ssl_siamese.text.builtin_encoder import BuiltinTextEncoder
    from ssl_siamese.text.export import load_text_encoder

    rng = random.Random(0)
    words = [f"word{i}" for i in range(100)]
    queries = [rng.sample(words, 5) for _ in range(160)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"query": " ".join(q), "positive": " ".join(rng.sample(q, 3) + rng.sample(
        words, 2)), "group": f"g{i}"}) for i, q in enumerate(queries)))
    out = tmp_path / "run"
    args = ["--data.source", str(data), "--data.test_fraction", "0.25", "--data.batch_size", "40", "--model.dim", "16",
            "--model.vocab_size", "120", "--model.bigram_buckets", "64", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--log_to", "none", "--out", str(out)]
    first = main([*args, "--trainer.max_epochs", "1"])
    vocabulary = load_text_encoder(first["encoder_path"]).tokenizer.tokenizer.get_vocab()

    def retrain(self, texts):
        raise AssertionError("the resumed run trained a new tokenizer instead of taking its checkpoint's")

    monkeypatch.setattr(BuiltinTextEncoder, "fit_tokenizer", retrain)
    resumed = main([*args, "--trainer.max_epochs", "2", "--ckpt_path", str(out / "checkpoints" / "last.ckpt")])
    assert resumed["epochs"] == 2 and resumed["steps"] == 2 * first["steps"]
    assert load_text_encoder(resumed["encoder_path"]).tokenizer.tokenizer.get_vocab() == vocabulary
