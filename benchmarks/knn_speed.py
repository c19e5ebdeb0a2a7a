"""Cost of the weighted kNN evaluation: ours against lightly's ``knn_predict``, in ONE process.

Both score the same queries against the same bank (k=200, t=0.1, cosine): ours,
``ssl_siamese.evaluation.weighted_knn_scores``, chunks the queries and adds the weights into their
classes with ``scatter_add``; the reference is lightly's ``knn_predict`` (the InstDisc kNN of lightly's
benchmarks) over the same chunks. The table gives seconds for all queries (best of ``--repeats`` after a
warm-up), the ratio to lightly, and whether the two agree on every top-1 prediction. Features are random
(the cost does not depend on them); a bank of 50,000 x 2,048 with 10,000 queries is CIFAR-10's training
and test split with ResNet-50 features.

    python benchmarks/knn_speed.py --json $OUT/knn.json            # GPU: 50,000 x 2,048 bank, 10,000 queries
    python benchmarks/knn_speed.py --device cpu --dim 128          # CPU: tiny_cnn-sized features
    python benchmarks/knn_speed.py --quick                          # CPU smoke test (CI)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date

import torch
import torch.nn.functional as F
from lightly.utils.benchmarking import knn_predict

from ssl_siamese.evaluation import weighted_knn_scores


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, repeats: int, device: torch.device) -> tuple[float, torch.Tensor]:
    """Best wall time of ``fn()`` over ``repeats`` calls after one warm-up call, and its last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return min(times), result


def lightly_top1(query: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor, classes: int, k: int,
                 t: float, chunk: int) -> torch.Tensor:
    """lightly's knn_predict over the same query chunks (it takes normalised features and a D x N bank)."""
    bank_t = F.normalize(bank, dim=1).T.contiguous()
    return torch.cat([knn_predict(F.normalize(q, dim=1), bank_t, labels, classes, k, t)[:, 0]
                      for q in query.split(chunk)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bank", type=int, default=50000)
    parser.add_argument("--queries", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--k", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=1024, help="queries per chunk (both implementations)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="CPU smoke test: small bank")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.quick:
        args.device, args.bank, args.queries, args.dim, args.repeats = "cpu", 2000, 500, 32, 1
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(args.bank, args.dim, generator=g).to(device)
    query = torch.randn(args.queries, args.dim, generator=g).to(device)
    rows = []
    for classes in args.classes:
        labels = torch.randint(0, classes, (args.bank,), generator=g).to(device)
        ours_s, scores = best_time(lambda: weighted_knn_scores(query, bank, labels, classes, args.k, 0.1,
                                                               args.chunk), args.repeats, device)
        ref_s, ref_top1 = best_time(lambda: lightly_top1(query, bank, labels, classes, args.k, 0.1, args.chunk),
                                    args.repeats, device)
        agree = (scores.argmax(1) == ref_top1).float().mean().item()
        rows.append({"classes": classes, "ours_s": ours_s, "lightly_s": ref_s, "speedup": ref_s / ours_s,
                     "top1_agreement": agree})
    lines = [f"kNN: bank {args.bank:,} x {args.dim}, {args.queries:,} queries, k={args.k}, on {device}",
             "| classes | ours (s) | lightly knn_predict (s) | x lightly | same top-1 |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['classes']} | {r['ours_s']:.3f} | {r['lightly_s']:.3f} | {r['speedup']:.2f} | "
              f"{r['top1_agreement']:.4f} |" for r in rows]
    print("\n".join(lines))
    if args.json:
        report = {"date": str(date.today()), "args": vars(args), "torch": torch.__version__,
                  "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                  "rows": rows, "table": lines}
        with open(args.json, "w") as file:
            json.dump(report, file, indent=2)


if __name__ == "__main__":
    main()
