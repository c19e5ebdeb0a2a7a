"""The explorer page in a real headless Chromium: real CIFAR-10 images embedded by a tiny random backbone through
the ``explore`` recipe (``--backbone --data``, as ``python -m``) and the ``embed`` recipe, loaded offline, clicked,
searched; neighbours checked against brute force.

Chromium and chromedriver come from Debian's packages: a clean CI machine (root, a Debian mirror) installs them
here with apt-get (``conftest.install_debian_packages``); elsewhere these tests are skipped, saying why. Selenium
(the ``dev`` extra) drives them by path, never downloading a driver. The screenshot is kept in the test's folder and in
``tests/artifacts/explorer.png`` (git-ignored).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import find_data_file, install_debian_packages, needs_data_file

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

from ssl_siamese.explorer import read_page_data
from ssl_siamese.explorer.browser import chromium_driver, click_point, find_chromium, wait_for

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CIFAR_JPG = "cifar10-jpg/cifar10-jpg.tar.gz"
PER_CLASS, K = 30, 8

pytestmark = needs_data_file(CIFAR_JPG)


@pytest.fixture(scope="module")
def chromium() -> None:
    """Chromium and chromedriver on the PATH, installed with apt-get when missing."""
    if all(find_chromium()):
        return
    install_debian_packages("chromium", "chromium-driver")
    assert all(find_chromium()), f"apt-get installed chromium but not both executables: {find_chromium()}"


@pytest.fixture(scope="module")
def explored(tmp_path_factory) -> SimpleNamespace:
    """300 CIFAR-10 test images (30 a class) and an exact copy of one, embedded and explored through the recipes."""
    folder = tmp_path_factory.mktemp("explorer")
    with tarfile.open(find_data_file(CIFAR_JPG)) as tar:
        by_class = defaultdict(list)
        for member in tar.getmembers():
            if member.isfile() and member.name.startswith("test/"):
                by_class[Path(member.name).parent.name].append(member)
        tar.extractall(folder, members=[m for members in by_class.values() for m in members[:PER_CLASS]],
                       filter="data")
    root = folder / "test"
    original = sorted((root / "cat").iterdir())[0]
    shutil.copy(original, root / "cat" / "copy_of_first.jpg")
    from ssl_siamese import export_backbone
    from ssl_siamese.methods import SimCLR

    torch.manual_seed(0)
    backbone = export_backbone(SimCLR(backbone="tiny_cnn", view_size=32), folder / "backbone.pt", data="cifar10")
    npz, page = folder / "embeddings.npz", folder / "explore.html"
    done = subprocess.run([sys.executable, "-m", "ssl_siamese.recipes.explore", "--backbone", str(backbone), "--data",
                           str(root), "--save_embeddings", str(npz), "--out", str(page), "--k", str(K),
                           "--duplicates", "0.9999", "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(npz) as data:
        features, paths = data["embeddings"].astype(np.float64), data["paths"].tolist()
    return SimpleNamespace(root=root, npz=npz, page=page, backbone=backbone, stdout=done.stdout, features=features,
                           paths=paths, original=paths.index(f"cat/{original.name}"),
                           copy=paths.index("cat/copy_of_first.jpg"), folder=folder)


def brute_force(features: np.ndarray, i: int, k: int) -> tuple[list[int], np.ndarray]:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    cosine = unit @ unit[i]
    cosine[i] = -np.inf
    order = np.argsort(-cosine, kind="stable")[:k]
    return order.tolist(), cosine


def listed(driver, list_id: str) -> list:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' li')].map((li) => [Number(li.dataset.index), "
        "li.dataset.similarity === undefined ? null : Number(li.dataset.similarity), li.textContent, "
        "li.dataset.second === undefined ? null : Number(li.dataset.second)])", "#" + list_id)


def isolated_point(driver, count: int) -> int:
    """A point far (on screen) from every other one and clear of the toolbar, so a click can only mean it."""
    positions = np.asarray(driver.execute_script(
        "return Array.from({length: explorer.count}, (_, i) => explorer.screenPosition(i))"
        ".map((p) => [p.x, p.y])"))
    size = driver.execute_script("const c = document.getElementById('canvas'); return [c.clientWidth, c.clientHeight]")
    gaps = np.linalg.norm(positions[:, None] - positions[None], axis=2) + np.eye(count) * 1e9
    clear = (positions[:, 1] > 60) & (positions[:, 0] > 20) & (positions[:, 0] < size[0] - 20) & \
        (positions[:, 1] < size[1] - 20)
    nearest_other = np.where(clear, gaps.min(1), -1)
    best = int(nearest_other.argmax())
    assert nearest_other[best] > 6, "no point stands clear of the others on screen"
    return best


def test_page_in_chromium_shows_every_point_and_a_click_lists_the_brute_force_neighbours(chromium, explored,
                                                                                            tmp_path):
    count = len(explored.paths)
    assert count == 10 * PER_CLASS + 1 and "Explorer page for 301 images" in explored.stdout
    with chromium_driver() as driver:
        start = time.perf_counter()
        driver.get(explored.page.resolve().as_uri())
        wait_for(driver, "return window.explorer && explorer.ready && explorer.thumbnailsReady")
        load_seconds = time.perf_counter() - start
        assert driver.execute_script("return [explorer.count, explorer.drawn]") == [count, count]
        assert driver.find_element("id", "status").text.startswith("301 points")
        assert len(driver.find_elements("css selector", "#legend > span")) == 10
        assert driver.execute_script("return explorer.thumbnailMode")  # 301 points: thumbnails, not dots
        requests = driver.execute_script("return performance.getEntriesByType('resource').map((e) => e.name)")
        assert not [name for name in requests if not name.startswith("data:")], requests  # nothing fetched

        canvas = driver.find_element("id", "canvas")
        before = driver.execute_script("return explorer.screenPosition(0)")
        ActionChains(driver).move_to_element(canvas).click_and_hold().move_by_offset(60, 40).move_by_offset(60, 40) \
            .release().perform()  # drag: every point moves with the mouse
        after = driver.execute_script("return explorer.screenPosition(0)")
        assert (round(after["x"] - before["x"]), round(after["y"] - before["y"])) == (120, 80)
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, -400).perform()  # wheel: zoom in
        wait_for(driver, "return explorer.drawn < arguments[0]", 10, count)
        settled = None  # the wheel may come as several events: let them all land before resetting
        while settled != (settled := driver.execute_script("return explorer.screenPosition(0)")):
            time.sleep(0.3)
        driver.find_element("id", "reset").click()
        wait_for(driver, "return explorer.drawn === arguments[0]", 10, count)
        assert driver.execute_script("return explorer.screenPosition(0)") == before

        point = isolated_point(driver, count)
        click_point(driver, point)
        wait_for(driver, "return explorer.clicks > 0")
        assert driver.execute_script("return explorer.selected") == point
        assert driver.find_element("id", "selected-name").text == explored.paths[point]
        rows = listed(driver, "neighbours")
        expected, cosine = brute_force(explored.features, point, K)
        shown = [index for index, *_ in rows]
        similarities = np.asarray([similarity for _, similarity, *_ in rows])
        assert len(shown) == K and point not in shown and len(set(shown)) == K
        np.testing.assert_allclose(similarities, cosine[expected], atol=1e-5)  # the k best values, best first
        np.testing.assert_allclose(cosine[shown], similarities, atol=1e-5)  # each listed image has its value
        ties = np.abs(np.diff(cosine[expected])).min() < 1e-5 or cosine[expected[-1]] - np.sort(cosine)[-K - 1] < 1e-5
        assert shown == expected or ties, (shown, expected)
        for index, similarity, text, _ in rows:
            assert explored.paths[index] in text and f"distance {1 - similarity:.4f}" in text
        click_seconds = driver.execute_script("return explorer.lastClickMs") / 1000

        driver.find_elements("css selector", "#neighbours li")[0].click()  # the panel follows its neighbours
        assert driver.execute_script("return explorer.selected") == shown[0]

        search = driver.find_element("id", "search")
        search.send_keys("copy_of\n")
        wait_for(driver, "return explorer.searches > 0")
        assert driver.find_element("id", "match-count").text == "1 match"
        assert [row[0] for row in listed(driver, "matches")] == [explored.copy]
        assert driver.execute_script("return explorer.selected") == explored.copy

        duplicates = listed(driver, "duplicate-list")
        first, _, text, second = duplicates[0]
        assert (first, second) == (explored.original, explored.copy) and "1.0000" in text
        unit = explored.features / np.linalg.norm(explored.features, axis=1, keepdims=True)
        cosine = unit @ unit.T
        assert len(duplicates) == (np.triu(cosine, 1) >= 0.9999).sum()
        assert driver.find_element("id", "duplicate-threshold").get_attribute("value") == "0.999900"
        slider = driver.find_element("id", "duplicate-slider")  # a click near its left end lowers the threshold
        ActionChains(driver).move_to_element_with_offset(slider, -slider.size["width"] // 2 + 3, 0).click().perform()
        wait_for(driver, "return explorer.duplicateChanges > 0")
        lowered = driver.execute_script("return explorer.duplicateThreshold")
        rows = listed(driver, "duplicate-list")
        above = np.triu(cosine, 1)[np.triu_indices(len(cosine), 1)]
        assert lowered < 0.999 and len(rows) > len(duplicates)
        assert abs(len(rows) - (above >= lowered).sum()) <= (np.abs(above - lowered) < 1e-5).sum()
        assert all(cosine[first, second] >= lowered - 1e-5 for first, _, _, second in rows)
        assert f"{len(rows):,} pairs with cosine similarity" in driver.find_element("id", "duplicate-summary").text
        box = driver.find_element("id", "duplicate-threshold")  # typing a threshold lists the pairs above it again
        box.clear()
        box.send_keys("0.9999", Keys.ENTER, Keys.TAB)
        wait_for(driver, "return explorer.duplicateThreshold === 0.9999")
        assert listed(driver, "duplicate-list") == duplicates
        assert "chosen" not in driver.find_element("id", "duplicate-rule").text  # given by hand, and it says so

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for target in (tmp_path / "explorer.png", ARTIFACTS / "explorer.png"):
            assert driver.save_screenshot(str(target)) and target.stat().st_size > 10_000
    print(f"explorer page: {explored.page.stat().st_size / 1e3:.0f} kB, loaded with thumbnails in {load_seconds:.2f} s, "
          f"click handled in {click_seconds * 1000:.1f} ms")


def test_page_from_the_embed_recipe_file_matches_the_page_from_the_backbone(explored):
    from ssl_siamese.recipes import embed, explore

    npz, out = explored.folder / "embed_recipe.npz", explored.folder / "from_npz.html"
    embed.main(["--backbone", str(explored.backbone), "--data", str(explored.root), "--out", str(npz),
                "--device", "cpu"])
    summary = explore.main(["--embeddings", str(npz), "--images", str(explored.root), "--out", str(out), "--k", str(K),
                            "--duplicates", "0.9999"])
    assert summary["points"] == 301 and summary["thumbnail"] == 64 and summary["missing_images"] == 0
    ours, theirs = read_page_data(out), read_page_data(explored.page)
    assert ours["paths"] == theirs["paths"] == explored.paths and ours["classes"] == theirs["classes"]
    assert ours["duplicates"]["first"][0] == explored.original and ours["duplicates"]["second"][0] == explored.copy
    assert ours["thumbnails"]["sheets"] == theirs["thumbnails"]["sheets"]
    with np.load(npz) as data:
        np.testing.assert_allclose(data["embeddings"], explored.features, atol=1e-5)
