"""The embedding explorer page at scale: build time, file size, load and click times in headless Chromium.

    python benchmarks/explorer_page.py [--points 50000] [--workdir /tmp/explorer_bench] [--json out.json]

The points are synthetic embeddings (128-d, one Gaussian cluster per CIFAR-10 class, plus some exact
copies so duplicate pairs exist) of real images: the first CIFAR-10 JPEGs of ``../shared/data/cifar10-jpg`` in the archive's order (for
50,000: the 10,000 test images and the training images of eight classes), so the thumbnails and the file
size are those of real photos. The page is opened in headless Chromium (``ssl_siamese.explorer.browser``) at 1400 x 900 and
measured: load (``driver.get`` until the load event, and the page's own parse / first-draw / thumbnail
times from navigation start), a redraw of every point, clicks on points (in-page: hit test, neighbour
panel and redraw; and seen from WebDriver), a file-name search, and a zoomed-in redraw with thumbnails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssl_siamese.explorer import load_embeddings, write_explorer  # noqa: E402
from ssl_siamese.explorer.browser import chromium_driver, click_point, wait_for  # noqa: E402

CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpg" / "cifar10-jpg.tar.gz"


def extract_images(folder: Path, count: int) -> list[Path]:
    """The first ``count`` CIFAR-10 JPEGs of the archive, as ``folder/<split>/<class>/NNNN.jpg``, extracted once."""
    done = folder / f".extracted-{count}"
    if not done.exists():
        with tarfile.open(CIFAR) as archive:
            images = [member for member in archive.getmembers() if member.name.endswith(".jpg")][:count]
            archive.extractall(folder, members=images, filter="data")
        done.write_text("ok")
    return sorted(path for path in folder.rglob("*.jpg"))[:count]


def synthetic_embeddings(files: list[Path], root: Path, dim: int = 128, copies: int = 50) -> Path:
    """An embed-recipe ``.npz`` for ``files``: clustered by class folder, ``copies`` exact duplicate pairs."""
    generator = np.random.default_rng(0)
    classes = sorted({path.parent.name for path in files})
    labels = np.asarray([classes.index(path.parent.name) for path in files])
    centres = generator.normal(size=(len(classes), dim))
    features = (centres[labels] + 0.9 * generator.normal(size=(len(files), dim))).astype(np.float32)
    pairs = generator.choice(len(files), size=(copies, 2), replace=False)
    features[pairs[:, 1]] = features[pairs[:, 0]]
    out = root / "embeddings.npz"
    np.savez(out, embeddings=features, paths=np.asarray([p.relative_to(root).as_posix() for p in files]),
             labels=labels, classes=np.asarray(classes))
    return out


def measure_page(page: Path, count: int, clicks: int = 5) -> dict:
    """Load, redraw, click, search and zoom times of the page in headless Chromium."""
    figures: dict = {}
    with chromium_driver() as driver:
        start = time.perf_counter()
        driver.get(page.resolve().as_uri())
        figures["driver_get_s"] = time.perf_counter() - start
        wait_for(driver, "return window.explorer && explorer.ready")
        wait_for(driver, "return explorer.thumbnailsReady", timeout=120)
        figures["ready_wall_s"] = time.perf_counter() - start
        figures["page_timings_ms"] = driver.execute_script("return explorer.timings")
        figures["points_drawn"] = driver.execute_script("return explorer.drawn")
        assert figures["points_drawn"] == count, figures
        draws = [driver.execute_script("explorer.fit(); return explorer.lastDrawMs") for _ in range(5)]
        figures["redraw_all_ms_median"] = statistics.median(draws)
        generator = np.random.default_rng(1)
        in_page, wall = [], []
        for index in generator.choice(count, size=clicks, replace=False).tolist():
            before = driver.execute_script("return explorer.clicks")
            start = time.perf_counter()
            click_point(driver, index)
            wait_for(driver, f"return explorer.clicks > {before} && document.querySelectorAll('#neighbours li').length")
            wall.append((time.perf_counter() - start) * 1000)
            in_page.append(driver.execute_script("return explorer.lastClickMs"))
        figures["click_in_page_ms_median"] = statistics.median(in_page)
        figures["click_in_page_ms_max"] = max(in_page)
        figures["click_webdriver_ms_median"] = statistics.median(wall)
        box = driver.find_element("id", "search")
        start = time.perf_counter()
        box.send_keys("0042\n")
        wait_for(driver, "return explorer.searches > 0")
        figures["search_in_page_ms"] = driver.execute_script("return explorer.lastSearchMs")
        figures["search_matches"] = driver.execute_script("return document.getElementById('match-count').textContent")
        driver.execute_script("explorer.select(0); explorer.zoom(40)")
        figures["zoomed_thumbnail_mode"] = driver.execute_script("return explorer.thumbnailMode")
        figures["zoomed_points_in_view"] = driver.execute_script("return explorer.drawn")
        figures["zoomed_redraw_ms"] = driver.execute_script("return explorer.lastDrawMs")
        driver.save_screenshot(str(page.with_suffix(".png")))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=50_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/explorer_bench"))
    parser.add_argument("--thumbnail", type=int, default=None, help="Thumbnail side (default: the page's rule).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    images = args.workdir / "images"
    start = time.perf_counter()
    files = extract_images(images, args.points)
    npz = synthetic_embeddings(files, images)
    figures: dict = {"points": len(files), "prepare_images_s": time.perf_counter() - start}
    start = time.perf_counter()
    summary = write_explorer(load_embeddings(npz), args.workdir / "explore.html", image_root=images,
                             thumbnail=args.thumbnail, title=f"{len(files)} synthetic points")
    figures["build_s"] = time.perf_counter() - start
    figures.update({"file_mb": summary["bytes"] / 1e6, "thumbnail_px": summary["thumbnail"],
                    "duplicate_pairs": summary["duplicate_pairs"]})
    figures.update(measure_page(Path(summary["out"]), len(files)))
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
