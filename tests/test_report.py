"""The HTML report: self-contained, and it renders in a real headless Chromium."""

import shutil
import subprocess

import numpy as np
import pytest

from conftest import BASE, small_run
from sim.api import simulate
from sim.results.report import build_report
from sim.spec import scenario_from_dict
from sim.spec.errors import SpecError
from sim.sweep import run_sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    d = small_run()
    out = tmp_path_factory.mktemp("run")
    simulate(scenario_from_dict(d)).write(out)
    return out


def test_run_report_embeds_every_picture(run_folder):
    page = build_report(run_folder).read_text()
    assert page.count("data:image/png;base64,") == 4  # CDFs, timeline, links, GPU time
    assert "src=\"http" not in page and "<script" not in page, "self-contained"
    for words in ("tokens/s per GPU", "Latency", "GPU time breakdown", "Links by tier"):
        assert words in page
    import json

    sm = json.loads((run_folder / "summary.json").read_text())
    assert "<h2>Load</h2>" in page and sm["load"]["text"] in page   # the overload verdict
    assert sm["latency_coverage"]["text"] in page


def test_sweep_report_has_plots_and_table(write_yaml, tmp_path):
    path = write_yaml(BASE)
    folder = tmp_path / "sw"
    run_sweep(path, ["layout.expert_parallel=2,4,8", "batching.max_batch=64,512"], folder,
              workers=1)
    page = build_report(folder).read_text()
    assert page.count("data:image/png;base64,") == 2  # one figure per swept parameter
    assert "All points" in page and page.count("<tr") >= 7  # header + 6 points


def test_report_of_a_wrong_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="neither a run folder"):
        build_report(tmp_path)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                    "(.ci/run installs it)")
def test_report_renders_in_headless_chromium(run_folder, tmp_path):
    import matplotlib.image as mpimg

    page = build_report(run_folder)
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3000",
                    f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 3000 and img.shape[1] >= 1200
    # plots, not a blank page: many non-white pixels and many distinct colours
    non_white = (img.min(axis=2) < 0.9).mean()
    colours = len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert non_white > 0.05
    assert colours > 200
