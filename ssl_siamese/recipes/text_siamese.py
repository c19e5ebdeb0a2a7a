"""Train a text Siamese (bi-encoder) on pairs, then evaluate retrieval on held-out pairs beside BM25.

    python -m ssl_siamese.recipes.text_siamese --config recipes/text_siamese_debian.yaml
    python -m ssl_siamese.recipes.text_siamese --data.source pairs.jsonl --model.encoder ./my-bert-folder

Data (``--data.*``): Debian's package descriptions (``debian``: short description -> long description,
grouped by source package) or a JSONL/CSV/TSV pair file; split so that no group and no duplicate text
crosses it (the report is printed). Model (``--model.*``): the built-in encoder trained from scratch
(tokenizer trained on the training texts), any Hugging Face encoder, or a sentence-transformers folder.
The evaluation searches the held-out documents (positives and negatives of the test pairs) with each
held-out query: BM25 (``bm25s``), the dense encoder before training, after training, and the hybrid of
BM25 and the trained encoder by reciprocal-rank fusion; Recall@1/10, MRR@10 and nDCG@10 are printed as
one table, logged (``eval/<method>/<metric>``; W&B also gets the table) and written to ``results.json``.
Labelled pairs (a ``score``, same when above 0.5, or hard negatives) also get a verification ROC of the
encoder's cosine similarity before and after training: AUC and EER (``eval/verification/...``, ``results.json``
and ``<out>/eval_roc.png``, on W&B also an interactive curve).
The encoder is exported to ``<out>/exported_models/text_encoder`` (a sentence-transformers folder for
Hugging Face encoders, ``builtin_encoder.pt`` for the built-in one).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import WandbLogger

from ssl_siamese.callbacks.nan_guard import NonFiniteLossGuard
from ssl_siamese.export.checkpoints import check_resume_checkpoint, read_checkpoint
from ssl_siamese.cli.lightning import SSLCLI
from ssl_siamese.cli.recipe import user_errors, write_results
from ssl_siamese.evaluation.ranking import ranking_metrics
from ssl_siamese.evaluation.verification import log_roc
from ssl_siamese.cli.loggers import WandbRunId, finish_loggers
from ssl_siamese.text.datamodule import TextPairDataModule
from ssl_siamese.text.export import export_text_encoder
from ssl_siamese.text.module import TextSiamese
from ssl_siamese.text.pairs import TextPair
from ssl_siamese.text.retrieval import bm25_search, dense_search, reciprocal_rank_fusion
from ssl_siamese.text.verification import labelled_pairs, verify

DEPTH = 100  # documents ranked per query before fusion and metrics
METRICS = ("recall@1", "recall@10", "mrr@10", "ndcg@10")

DESCRIPTION = __doc__.split("\n\n")[0]  # the module's first paragraph: --help's description


class TextSiameseCLI(SSLCLI):
    """LightningCLI for :class:`TextSiamese` and :class:`TextPairDataModule`, with the recipes' output options:
    :class:`SSLCLI` (its parser, logger, checkpoint folder and config in W&B) with the text recipe's defaults.

    A recipe on other pair data (``recipes.cross_modal``) subclasses it and sets the class attributes below.
    """

    method_name = "text_siamese"
    model_class: type = TextSiamese
    datamodule_class: type = TextPairDataModule
    max_epochs = 3
    summary = DESCRIPTION  # --help's description

    def __init__(self, args: list[str] | None = None) -> None:
        super().__init__(self.model_class, self.method_name, args)

    def description(self, model_class: type) -> str:
        return self.summary

    def trainer_callbacks(self) -> list[Any]:
        return [LearningRateMonitor("step"), NonFiniteLossGuard(), WandbRunId()]

    def add_arguments_to_parser(self, parser) -> None:
        self.add_output_arguments(parser)


def evaluation_set(pairs: list[TextPair]) -> tuple[list[str], list[str], list[set[int]]]:
    """Queries, the corpus (unique positives and negatives of ``pairs``) and each query's relevant documents."""
    documents = list(dict.fromkeys([p.positive for p in pairs] + [p.negative for p in pairs if p.negative]))
    index = {text: i for i, text in enumerate(documents)}
    relevant: dict[str, set[int]] = {}
    for pair in pairs:  # a query text that occurs twice is relevant to both its positives
        relevant.setdefault(pair.query, set()).add(index[pair.positive])
    queries = list(relevant)
    return queries, documents, [relevant[q] for q in queries]


def format_table(rows: dict[str, dict[str, float]], title: str) -> str:
    """One row per method, one column per metric."""
    lines = [title, f"{'method':<16}" + "".join(f"{name:>11}" for name in METRICS)]
    lines += [f"{method:<16}" + "".join(f"{values[name]:>11.4f}" for name in METRICS) for method, values in rows.items()]
    return "\n".join(lines)


def log_results(trainer: Any, rows: dict[str, dict[str, float]]) -> None:
    """``eval/<method>/<metric>`` to every logger of ``trainer``; on W&B also the table ``eval/retrieval``."""
    metrics = {f"eval/{method}/{name}": value for method, values in rows.items()
               for name, value in values.items()}
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        if isinstance(logger, WandbLogger):
            logger.log_table("eval/retrieval", columns=["method", *METRICS],
                             data=[[method, *(values[m] for m in METRICS)] for method, values in rows.items()],
                             step=trainer.global_step)
        logger.save()


def log_verification(trainer: Any, at_init: Any, trained: Any, out: Path) -> dict[str, dict[str, float]]:
    """Print and log the verification AUC/EER before and after training, and the trained ROC curve."""
    verification = {name: {"auc": roc.auc, "eer": roc.eer, "eer_threshold": roc.eer_threshold}
                    for name, roc in (("dense_at_init", at_init), ("dense", trained))}
    print("verification of the labelled held-out pairs (cosine): " + ", ".join(
        f"{name} AUC {v['auc']:.4f} EER {v['eer']:.4f}" for name, v in verification.items()))
    for logger in trainer.loggers:
        logger.log_metrics({f"eval/verification/{name}/{key}": value for name, values in verification.items()
                            for key, value in values.items()}, step=trainer.global_step)
    log_roc(trainer.loggers, trained, out, "text pairs, held out", trainer.global_step)
    return verification


def main(args: list[str] | None = None) -> dict[str, Any]:
    """Parse, split, evaluate at init, train, evaluate, export; returns the results (also in results.json)."""
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    with user_errors("ssl_siamese.recipes.text_siamese"):  # DebianDescriptionsMissing among them
        cli = TextSiameseCLI(args)
        trainer, model, dm = cli.trainer, cli.model, cli.datamodule
        dm.setup("fit")
        if cli.config_init["ckpt_path"]:
            check_resume_checkpoint(model, cli.config_init["ckpt_path"])
    print(dm.split.report)
    encoder = model.encoder
    if not encoder.has_tokenizer and cli.config_init["ckpt_path"]:  # the tokenizer it trained with
        encoder.load_tokenizer(read_checkpoint(cli.config_init["ckpt_path"])["state_dict"], prefix="encoder.")
    if not encoder.has_tokenizer:
        started = time.perf_counter()
        encoder.fit_tokenizer(dm.training_texts())
        print(f"{type(encoder).__name__}: tokenizer trained on the training texts in "
              f"{time.perf_counter() - started:.1f} s")
    dm.tokenizer = encoder.tokenizer
    queries, documents, relevant = evaluation_set(dm.test_pairs)
    print(f"evaluation: {len(queries)} held-out queries against {len(documents)} held-out documents")

    def dense() -> Any:
        return dense_search(encoder.encode(queries), encoder.encode(documents), k=DEPTH)

    bm25 = bm25_search(queries, documents, k=DEPTH)
    rows = {"bm25": ranking_metrics(bm25, relevant), "dense_at_init": ranking_metrics(dense(), relevant)}
    labelled = labelled_pairs(dm.test_pairs)
    roc_at_init = verify(encoder, labelled) if labelled else None
    started, started_cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=dm, ckpt_path=cli.config_init["ckpt_path"])
    fit_seconds, fit_cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    trained = dense()
    rows["dense"] = ranking_metrics(trained, relevant)
    rows["hybrid_rrf"] = ranking_metrics(reciprocal_rank_fusion([trained, bm25], k=DEPTH), relevant)
    out = Path(cli.config_init["out"])
    results: dict[str, Any] = {"metrics": rows, "fit_seconds": fit_seconds, "fit_cpu_seconds": fit_cpu_seconds,
                               "steps": trainer.global_step,
                               "epochs": trainer.current_epoch, "train_pairs": len(dm.train_pairs),
                               "test_pairs": len(dm.test_pairs), "queries": len(queries),
                               "documents": len(documents), "split": dm.split.report}
    if trainer.is_global_zero:
        print(format_table(rows, f"retrieval of {len(documents)} held-out documents by {len(queries)} held-out "
                                 f"queries ({trainer.global_step} steps, {fit_seconds:.0f} s)"))
        log_results(trainer, rows)
        if labelled:
            results["verification"] = log_verification(trainer, roc_at_init, verify(encoder, labelled), out)
        results["encoder_path"] = str(export_text_encoder(encoder, out / "exported_models" / "text_encoder"))
        print(f"Exported encoder: {results['encoder_path']}")
        write_results(out, results)
        finish_loggers(trainer.loggers)
    return results


if __name__ == "__main__":
    main()
