"""The EDA report and the Snakemake report (`snakemake --report`) of the tiny run, opened in
a real headless browser (Debian's chromium; .ci/run installs it where it is missing):
every figure decodes, the page renders, no script error occurs. Screenshots stay under
results/screenshots in the test's temporary folder.

Each page is a copy with a checker script first in its <head>: it records script errors,
failed resources and console.error calls, then, once the page has loaded, decodes every
figure (the page's <img> elements and, in the Snakemake report, every image result it
embeds) and writes what it found into the page, which chromium's --dump-dom prints.
"""

import json
import re
import shutil
import subprocess

import cv2
import pytest

from conftest import snakemake

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.workflow,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium is not installed (.ci/run installs it with apt-get as root)",
    ),
]

CHECKER = """<script>
window.__segflowErrors = [];
window.addEventListener("error", function (e) {
  var target = e.target && e.target !== window ? (e.target.src || e.target.href || "") : "";
  window.__segflowErrors.push(String(e.message || "resource failed: " + target));
}, true);
window.addEventListener("unhandledrejection", function (e) {
  window.__segflowErrors.push("unhandled rejection: " + e.reason);
});
var __consoleError = console.error;
console.error = function () {
  window.__segflowErrors.push("console.error: " + Array.prototype.join.call(arguments, " "));
  __consoleError.apply(console, arguments);
};
window.addEventListener("load", function () {
  var figures = Array.prototype.map.call(document.images, function (img) {
    return {name: img.alt || img.src.slice(0, 80), src: img.src};
  });
  if (typeof results !== "undefined") {  // the Snakemake report's embedded results
    Object.keys(results).forEach(function (key) {
      var r = results[key];
      if (r.mime_type && r.mime_type.indexOf("image/") === 0) {
        figures.push({name: key, src: r.data_uri});
      }
    });
  }
  Promise.all(figures.map(function (f) {
    return new Promise(function (resolve) {
      var img = new Image();
      img.onload = function () { resolve({name: f.name, width: img.naturalWidth}); };
      img.onerror = function () { resolve({name: f.name, width: 0}); };
      img.src = f.src;
    });
  })).then(function (loaded) {
    var out = document.createElement("pre");
    out.id = "segflow-check";
    out.textContent = JSON.stringify({
      figures: loaded, errors: window.__segflowErrors, text: document.body.innerText
    });
    document.body.appendChild(out);
  });
});
</script>"""

# Opens the Snakemake report's "Results" category, as a user would.
OPEN_RESULTS = """<script>
window.addEventListener("load", function () {
  function leaf(text) {
    return Array.prototype.filter.call(document.querySelectorAll("body *"), function (e) {
      // Not the workflow description's words (its <div class="document">).
      return e.children.length === 0 && e.textContent.trim() === text &&
        !e.closest(".document");
    });
  }
  setTimeout(function () {
    var category = leaf("Results");
    if (category.length) category[category.length - 1].click();  // not the heading
  }, 300);
});
</script>"""


def with_scripts(page, out, *scripts):
    html = page.read_text(encoding="utf-8")
    head = re.search(r"<head[^>]*>", html, re.IGNORECASE)
    assert head, f"{page} has no <head>"
    out.write_text(html[: head.end()] + "".join(scripts) + html[head.end() :])
    return out


def chromium(*args):
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=20000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def check_page(page, tmp_path):
    """What the checker found on ``page``: its figures, script errors, rendered text."""
    checked = with_scripts(page, tmp_path / f"checked_{page.name}", CHECKER)
    dom = chromium("--dump-dom", checked.as_uri()).stdout
    found = re.search(r'<pre id="segflow-check">(.*?)</pre>', dom, re.DOTALL)
    assert found, f"the checker never finished on {page}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def screenshot(page, path, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    chromium(f"--window-size=1280,{height}", f"--screenshot={path}", page.as_uri())
    picture = cv2.imread(str(path))
    assert picture is not None and picture.shape[:2] == (height, 1280), path
    # Rendered, not a blank page: the page's colours vary.
    assert picture.std() > 20, f"{path} looks blank"


def test_the_eda_report_renders_every_figure_without_errors(tiny_run, tmp_path):
    workdir, _ = tiny_run
    page = workdir / "results" / "eda" / "report.html"
    found = check_page(page, tmp_path)
    figures = sorted((workdir / "results" / "eda" / "figures").glob("*.png"))
    assert len(found["figures"]) == len(figures) == 8
    assert all(f["width"] > 100 for f in found["figures"]), found["figures"]
    assert found["errors"] == [] and "Classes" in found["text"]
    screenshot(page, tmp_path / "results" / "screenshots" / "eda.png", 2400)


def test_the_snakemake_report_renders_every_result_without_errors(tiny_run, tmp_path):
    workdir, config = tiny_run
    report = tmp_path / "results" / "report.html"
    report.parent.mkdir(parents=True)
    snakemake(workdir, "--report", str(report))
    found = check_page(report, tmp_path)
    names = {f["name"]: f["width"] for f in found["figures"]}
    expected = (
        [
            f"results/eda/figures/{p.name}"
            for p in (workdir / "results/eda/figures").glob("*.png")
        ]
        + [
            f"results/report/{n}.png"
            for n in (
                "leaderboard",
                "ensembles",
                "rounds_oof",
                "confusion",
                "worst_oof",
            )
        ]
        + [f"results/report/curves/r0_{m}.png" for m in sorted(config["models"])]
        + ["results/demo/rounds.png"]
    )
    assert sorted(names) == sorted(expected)
    assert all(width > 100 for width in names.values()), names
    assert found["errors"] == []
    # The front page shows the workflow's description (workflow/report/workflow.rst).
    assert "Where to look first" in found["text"]
    shots = tmp_path / "results" / "screenshots"
    screenshot(report, shots / "report.png", 1000)
    results_page = with_scripts(report, tmp_path / "report_results.html", OPEN_RESULTS)
    screenshot(results_page, shots / "report_results.png", 1000)
