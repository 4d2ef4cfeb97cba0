"""`make bench` rewrites BENCHMARKS.md but keeps the container-image section at its end
(measured by tests/e2e, not by bench)."""

from __future__ import annotations

from pathlib import Path

from bench.run import IMAGE_SECTION, kept_image_section


def test_image_section_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    section = f"{IMAGE_SECTION}\n## 7. Container image\n\n| image size | 435 MB |\n"
    out.write_text("# Benchmarks\n\nold generated text\n\n" + section)
    assert kept_image_section(out) == "\n" + section


def test_no_section_no_file(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    assert kept_image_section(out) == ""
    out.write_text("# Benchmarks\n")
    assert kept_image_section(out) == ""


def test_the_report_carries_the_section() -> None:
    text = (Path(__file__).resolve().parents[2] / "BENCHMARKS.md").read_text()
    assert IMAGE_SECTION in text
