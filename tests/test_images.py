"""read_image / read_images against float64 references: real RGBA, LA and palette icons from Debian's
adwaita-icon-theme (/usr/share/icons/Adwaita), and 16-bit, float, palette, WebP and CMYK files written here."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import adwaita_theme
from ssl_siamese.data.images import DEFAULT_BACKGROUND, ImageReadError, list_image_files, read_image, read_images

def adwaita_icons(mode: str, transparency_info: bool = False, limit: int = 4, under: str = "") -> list[Path]:
    """Up to ``limit`` Adwaita PNGs of ``mode`` with fully and partly transparent pixels; skip when absent."""
    theme = adwaita_theme()
    found = []
    for path in sorted((theme / under).rglob("*.png")):
        with Image.open(path) as image:
            if image.mode == mode and ("transparency" in image.info) == transparency_info:
                alpha = np.asarray(image.convert("RGBA"))[..., 3]
                if (alpha == 0).any() and ((alpha > 0) & (alpha < 255)).any():
                    found.append(path)
        if len(found) == limit:
            break
    if not found:
        pytest.skip(f"no {mode} icon with transparency under {theme} (Debian package adwaita-icon-theme)")
    return found


def composite_reference(path: Path, background=DEFAULT_BACKGROUND) -> np.ndarray:
    """float64 ``(3, H, W)``: Pillow's RGBA pixels composited onto ``background`` by the alpha formula."""
    rgba = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float64)
    alpha = rgba[..., 3:] / 255
    return (rgba[..., :3] * alpha + np.asarray(background, np.float64) * (1 - alpha)).transpose(2, 0, 1)


@pytest.mark.parametrize("mode,transparency_info", [("RGBA", False), ("LA", False), ("P", True)])
def test_real_transparent_icons_are_composited_onto_the_background(mode, transparency_info):
    for path in adwaita_icons(mode, transparency_info):
        for background in (DEFAULT_BACKGROUND, (128, 128, 128), 0):
            back = (background,) * 3 if isinstance(background, int) else background
            expected = composite_reference(path, back)
            image = read_image(path, background=background)
            assert image.dtype == torch.uint8 and image.shape == expected.shape
            assert np.abs(image.numpy() - expected).max() <= 0.5 + 1e-6, path  # rounding only
            transparent = np.asarray(Image.open(path).convert("RGBA"))[..., 3] == 0
            assert (image.numpy()[:, transparent] == np.asarray(back).reshape(3, 1)).all()


def test_resized_icon_composites_before_resampling():
    """Resizing RGBA directly would bleed the (often black) colour hidden under transparent pixels."""
    for path in adwaita_icons("RGBA", limit=1, under="256x256"):
        side = Image.open(path).size[0]
        expected = composite_reference(path)  # the 4x-reduced image as 4x4 block means of the composite
        expected = expected.reshape(3, side // 4, 4, side // 4, 4).mean(axis=(2, 4))
        image = read_image(path, size=side // 4).numpy().astype(np.float64)
        assert image.shape == expected.shape
        assert np.abs(image - expected).mean() < 3.0, path


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 48 * 40).round().astype(np.uint16).reshape(48, 40)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    image = read_image(tmp_path / "deep.png")
    expected = np.round(values.astype(np.float64) * 255 / 65535)
    assert image.shape == (3, 48, 40)
    assert np.abs(image.numpy() - expected[None]).max() <= 0.5 + 1e-6
    assert image.max() == 255 and image.min() == 0 and len(image.unique()) == 256


def test_float_images_in_unit_range_are_scaled(tmp_path):
    values = np.linspace(0, 1, 30 * 20, dtype=np.float32).reshape(30, 20)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tiff")
    image = read_image(tmp_path / "float.tiff")
    assert np.abs(image[0].numpy() - np.round(values.astype(np.float64) * 255)).max() <= 0.5 + 1e-6


def test_palette_transparency_hides_the_colour_under_it(tmp_path):
    indices = np.zeros((16, 16), np.uint8)
    indices[4:12, 4:12] = 1
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([0, 0, 0, 200, 30, 40] + [0] * 762)  # index 0: black, transparent
    palette.save(tmp_path / "icon.png", transparency=0)
    image = read_image(tmp_path / "icon.png", background=(10, 20, 30))
    assert (image[:, 0, 0] == torch.tensor([10, 20, 30], dtype=torch.uint8)).all()
    assert (image[:, 8, 8] == torch.tensor([200, 30, 40], dtype=torch.uint8)).all()
    assert (read_image(tmp_path / "icon.png")[:, 0, 0] == 255).all(), "white by default"


def test_webp_cmyk_grayscale_and_bilevel_become_rgb(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.webp", lossless=True)
    cmyk = Image.fromarray(rgba, mode="RGBA").convert("RGB").convert("CMYK")
    cmyk.save(tmp_path / "b.jpg", quality=95)
    Image.fromarray(rgba[..., 0]).save(tmp_path / "c.bmp")
    Image.fromarray(rgba[..., 0] > 128).save(tmp_path / "d.png")
    for name in ("a.webp", "b.jpg", "c.bmp", "d.png"):
        image = read_image(tmp_path / name)
        assert image.shape == (3, 20, 30) and image.dtype == torch.uint8, name
    webp = read_image(tmp_path / "a.webp").numpy()
    assert np.abs(webp - composite_reference(tmp_path / "a.webp")).max() <= 0.5 + 1e-6
    cmyk_reference = np.asarray(Image.open(tmp_path / "b.jpg").convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(read_image(tmp_path / "b.jpg").numpy(), cmyk_reference)
    gray = read_image(tmp_path / "c.bmp")
    assert torch.equal(gray[0], torch.from_numpy(rgba[..., 0])) and torch.equal(gray[0], gray[2])
    assert set(read_image(tmp_path / "d.png").unique().tolist()) == {0, 255}


def test_size_gives_centre_cropped_squares_and_exif_rotation_is_applied(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (40, 100, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    assert read_image(tmp_path / "wide.png", size=16).shape == (3, 16, 16)
    photo = Image.fromarray(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    photo.save(tmp_path / "phone.jpg", exif=exif)
    assert read_image(tmp_path / "phone.jpg").shape == (3, 50, 20)
    with pytest.raises(ValueError, match="size"):
        read_image(tmp_path / "wide.png", size=0)
    with pytest.raises(ValueError, match="background"):
        read_image(tmp_path / "wide.png", background=(1, 2))


def test_unreadable_files_are_clear_errors_or_none(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(tmp_path / "broken.png")
    with pytest.raises(ImageReadError, match="SVG.*convert it to PNG"):
        read_image(tmp_path / "drawing.svg")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    paths = [tmp_path / "good.png", tmp_path / "broken.png", tmp_path / "missing.png"]
    images = read_images(paths, size=4, errors="none")
    assert images[0].shape == (3, 4, 4) and images[1] is None and images[2] is None
    with pytest.raises(ImageReadError, match="broken.png"):
        read_images(paths)


def test_list_image_files_skips_non_images_and_hidden_files(tmp_path):
    for name in ("b/2.PNG", "a/1.jpg", "a/notes.txt", "a/vector.svg", ".hidden/3.png", "a/.4.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    files, skipped = list_image_files(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["a/1.jpg", "b/2.PNG"]
    assert [p.relative_to(tmp_path).as_posix() for p in skipped] == ["a/notes.txt", "a/vector.svg"]
