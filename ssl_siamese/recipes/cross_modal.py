"""Train an image tower and a text tower into one space (CLIP's loss) on Debian icon themes; evaluate retrieval.

    python -m ssl_siamese.recipes.cross_modal --config recipes/cross_modal_icons.yaml
    python -m ssl_siamese.recipes.cross_modal --model.image_backbone resnet18 --trainer.max_epochs 30

Data (``--data.*``): icons of Debian icon themes, each image paired with the words of its name and context
folder ("audio volume high status"), fetched with ``apt-get download`` when not installed and cached
(:mod:`ssl_siamese.crossmodal.icons`); whole icon names are held out across all themes. Model
(``--model.*``): an image backbone of ours and a text encoder (the built-in one trained from scratch by
default), each with a linear projection, trained with the symmetric image-text InfoNCE and a learned
temperature. The evaluation searches the held-out icons with their distinct texts (text-to-image) and
the held-out texts with each held-out icon (image-to-text): Recall@1/5/10 of the same towers at random
init and after training, beside chance; printed as one table, logged (``eval/<model>/<metric>``) and
written to ``<out>/results.json``; the trained towers' weights go to ``<out>/exported_models/cross_modal.pt``.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ssl_siamese.export.checkpoints import check_resume_checkpoint, read_checkpoint
from ssl_siamese.cli.loggers import finish_loggers
from ssl_siamese.cli.recipe import user_errors, write_results
from ssl_siamese.crossmodal.datamodule import IconTextDataModule
from ssl_siamese.crossmodal.module import CrossModalCLIP
from ssl_siamese.crossmodal.retrieval import KS, chance_recall, cross_modal_recall
from ssl_siamese.recipes.text_siamese import TextSiameseCLI

METRICS = [f"{d}_recall@{k}" for d in ("t2i", "i2t") for k in KS]

DESCRIPTION = __doc__.split("\n\n")[0]  # the module's first paragraph: --help's description


class CrossModalCLI(TextSiameseCLI):
    """LightningCLI for :class:`CrossModalCLIP` and :class:`IconTextDataModule`, with the recipes' output options
    (``--out``, ``--log_to``, ``--wandb_mode``, ``--ckpt_path``: the text recipe's)."""

    method_name = "cross_modal"
    model_class = CrossModalCLIP
    datamodule_class = IconTextDataModule
    max_epochs = 20
    summary = DESCRIPTION


def format_table(rows: dict[str, dict[str, float]], title: str) -> str:
    """One row per model (chance first), one column per metric."""
    lines = [title, f"{'model':<14}" + "".join(f"{name:>15}" for name in METRICS)]
    lines += [f"{model:<14}" + "".join(f"{values[name]:>15.4f}" for name in METRICS) for model, values in rows.items()]
    return "\n".join(lines)


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Parse, load and split the icons, evaluate at init, train, evaluate; returns the results (also in results.json)."""
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    with user_errors("ssl_siamese.recipes.cross_modal"):  # IconThemesMissing among them
        cli = CrossModalCLI(args)
        trainer, model, dm = cli.trainer, cli.model, cli.datamodule
        dm.setup("fit")
        if cli.config_init["ckpt_path"]:
            check_resume_checkpoint(model, cli.config_init["ckpt_path"])
            state = read_checkpoint(cli.config_init["ckpt_path"])["state_dict"]
            if not model.text_encoder.has_tokenizer:  # the tokenizer it trained with
                model.text_encoder.load_tokenizer(state, prefix="text_encoder.")
    print(dm.report)
    model.fit_tokenizer(dm.training_texts())
    dm.tokenizer = model.text_encoder.tokenizer
    images, texts, text_of_image = dm.evaluation_set()
    print(f"evaluation: {len(texts)} held-out texts against {len(images)} held-out icons, and back")

    def evaluate() -> dict[str, float]:
        return cross_modal_recall(model.encode_images(images), model.encode_texts(texts), text_of_image)

    rows = {"chance": chance_recall(text_of_image, len(texts)), "random_init": evaluate()}
    started, started_cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=dm, ckpt_path=cli.config_init["ckpt_path"])
    fit_seconds, fit_cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    rows["trained"] = evaluate()
    out = Path(cli.config_init["out"])
    results: dict[str, Any] = {"metrics": rows, "fit_seconds": fit_seconds, "fit_cpu_seconds": fit_cpu_seconds,
                               "steps": trainer.global_step,
                               "epochs": trainer.current_epoch, "temperature": 1.0 / model.loss_fn.scale.item(),
                               "held_out_icons": len(images), "held_out_texts": len(texts),
                               "train_icons": len(dm.train_icons), "split": dm.report}
    if trainer.is_global_zero:
        print(format_table(rows, f"held-out icon names: {len(texts)} texts <-> {len(images)} icons "
                                 f"({trainer.global_step} steps, {fit_seconds:.0f} s, {fit_cpu_seconds:.0f} CPU s)"))
        metrics = {f"eval/{name}/{metric}": value for name, values in rows.items() for metric, value in values.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()
        exported = out / "exported_models" / "cross_modal.pt"
        exported.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"hparams": dict(model.hparams), "state_dict": model.state_dict()}, exported)
        results["weights_path"] = str(exported)
        write_results(out, results)
        finish_loggers(trainer.loggers)
    return results


if __name__ == "__main__":
    main()
