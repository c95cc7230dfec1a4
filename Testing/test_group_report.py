"""Group reports: ratings (MR-ART's layout), agreement statistics, and the HTML page in a real
headless Chromium (DevTools protocol over a local websocket, standard library only)."""

import base64
import csv
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_archive import head, varied_model, write_nifti

from MotionSSIMLib.archives.ratings import (
    cohen_kappa,
    confusion,
    match_ratings,
    read_ratings,
    roc_auc,
)
from MotionSSIMLib.base.errors import InputError
from MotionSSIMLib.cli import main

# MR-ART (OpenNeuro ds004173) derivatives/scores.tsv as published: tab-separated, a header
# `bids_name<TAB>score`, the scan's file name without folder or extension, a rating 1-3.
MRART_HEAD = "bids_name\tscore\n"


def test_read_ratings_layouts(tmp_path):
    p = tmp_path / "scores.tsv"
    p.write_text(MRART_HEAD + "sub-000103_acq-standard_T1w\t1\n"
                 "sub-000103_acq-headmotion1_T1w\t2\nsub-000103_acq-headmotion2_T1w\t3\n")
    assert read_ratings(p) == [("sub-000103_acq-standard_T1w", 1),
                               ("sub-000103_acq-headmotion1_T1w", 2),
                               ("sub-000103_acq-headmotion2_T1w", 3)]
    # MR-ART's per-subject sub-*_scans.tsv: filename, score
    p.write_text("filename\tscore\nanat/sub-1_T1w.nii.gz\t2\nanat/sub-1_T2w.nii.gz\tn/a\n")
    assert read_ratings(p) == [("anat/sub-1_T1w.nii.gz", 2)]
    # a site's CSV (BOM, other names, a float-written integer, Windows line ends)
    p.write_bytes("\ufeffScan,Rating\r\nsub-1/anat/a.nii.gz,3.0\r\nb,1\r\n".encode())
    assert read_ratings(p) == [("sub-1/anat/a.nii.gz", 3), ("b", 1)]
    p.write_text("x;y\na;2\n")  # two columns of any name
    assert read_ratings(p) == [("a", 2)]


@pytest.mark.parametrize("text, words", [
    (MRART_HEAD + "a\t4\n", "line 2: rating '4'"),
    (MRART_HEAD + "a\tbad\n", "is not 1 (clean)"),
    (MRART_HEAD + "a\t1\na\t3\n", "rated 3 here and 1 on line 2"),
    ("subject\tage\tsex\n1\t2\t3\n", "expected a scan column"),
    (MRART_HEAD, "no ratings"),
    (MRART_HEAD + "a\tn/a\n", "no rating 1, 2 or 3"),
])
def test_read_ratings_refuses(tmp_path, text, words):
    p = tmp_path / "r.tsv"
    p.write_text(text)
    with pytest.raises(InputError, match="r.tsv") as e:
        read_ratings(p)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_match_ratings():
    rows = [{"path": "sub-01/anat/sub-01_T1w.nii.gz"}, {"path": "sub-02/anat/sub-02_T1w.nii"},
            {"path": "siteA/T2.nii.gz"}, {"path": "siteB/T2.nii.gz"}]
    matched, unmatched, ambiguous = match_ratings(rows, [
        ("sub-01_T1w", 1),                                   # MR-ART's bids_name
        ("anat/sub-02_T1w.nii.gz", 3),                       # a scans.tsv filename
        ("/data/siteA/T2.nii.gz", 2),                        # a full path
        ("T2", 2),                                           # two scans: left out
        ("sub-09_T1w", 1)])                                  # no such scan
    assert matched == {0: 1, 1: 3, 2: 2}
    assert unmatched == ["sub-09_T1w"] and ambiguous == ["T2"]


def test_agreement_statistics_match_scikit_learn():
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

    rng = np.random.default_rng(3)
    rating = rng.integers(1, 4, 80)
    pred = np.clip(rating + rng.integers(-1, 2, 80), 1, 3)
    ssim = np.round(1.0 - 0.2 * rating + rng.normal(0, 0.1, 80), 2)  # ties on purpose
    assert confusion(rating.tolist(), pred.tolist()) == \
        confusion_matrix(rating, pred, labels=[1, 2, 3]).tolist()
    assert cohen_kappa(rating.tolist(), pred.tolist()) == \
        pytest.approx(cohen_kappa_score(rating, pred))
    assert cohen_kappa(rating.tolist(), pred.tolist(), weights="quadratic") == \
        pytest.approx(cohen_kappa_score(rating, pred, weights="quadratic"))
    assert roc_auc((rating == 3).tolist(), (-ssim).tolist()) == \
        pytest.approx(roc_auc_score(rating == 3, -ssim))
    assert roc_auc([True, True], [0.1, 0.2]) is None  # one class only: undefined
    assert cohen_kappa([1, 1], [1, 1]) is None
    from MotionSSIMLib.archives.ratings import spearman
    assert spearman(ssim.tolist(), rating.tolist())[0] == \
        pytest.approx(spearmanr(ssim, rating).statistic)


# ---------------------------------------------------------------------------------------------
# A small rated data set in MR-ART's layout, assessed with --ratings


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    """Three subjects, a still and a moved T1w each (noise standing in for motion), rated in
    derivatives/scores.tsv as MR-ART publishes it; assessed with --ratings."""
    base = tmp_path_factory.mktemp("rated")
    root = base / "mrart"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "mini MR-ART"}')
    rng = np.random.default_rng(5)
    lines = [MRART_HEAD]
    for n, sub in enumerate(("000103", "000148", "000149")):
        for acq, noise, score in (("standard", 1.0, 1), ("headmotion2", 30.0 + 30 * n, 3 - n % 2)):
            name = f"sub-{sub}_acq-{acq}_T1w"
            write_nifti(root / f"sub-{sub}" / "anat" / f"{name}.nii.gz",
                        head(rng, (40, 44, 4), noise))
            lines.append(f"{name}\t{score}\n")
    lines.append("sub-999999_acq-standard_T1w\t1\n")  # rated, not in this copy
    (root / "derivatives").mkdir()
    scores = root / "derivatives" / "scores.tsv"
    scores.write_text("".join(lines))
    ckpt = varied_model(base / "varied.safetensors")
    out = base / "qc"
    rc = main(["assess", str(root), "--ratings", str(scores), "--model", str(ckpt),
               "--device", "cpu", "--out", str(out), "--no-progress"])
    return out, rc, scores


def test_ratings_give_the_agreement_section(rated):
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    out, rc, scores = rated
    assert rc == 0
    with open(out / "group_report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(r["status"] == "assessed" for r in rows)
    assert {r["rating"] for r in rows} == {"1", "2", "3"}
    agr = json.loads((out / "group_agreement.json").read_text())
    assert agr["n_rated_assessed"] == 6 and agr["n_ratings"] == 7
    assert agr["n_ratings_unmatched"] == 1 and agr["unmatched"] == ["sub-999999_acq-standard_T1w"]
    # the figures are those of the CSV's own columns
    verdict = {"good": 1, "sufficient": 2, "insufficient: re-scan": 3}
    rating = [int(r["rating"]) for r in rows]
    pred = [verdict[r["verdict"]] for r in rows]
    mean = np.array([float(r["mean_ssim"]) for r in rows])
    low = np.array([float(r["min_ssim"]) for r in rows])
    m = agr["confusion"]["counts"]
    assert sum(map(sum, m)) == 6
    assert agr["accuracy"] == pytest.approx(np.mean(np.array(rating) == np.array(pred)))
    kappa = cohen_kappa_score(rating, pred) if len(set(rating + pred)) > 1 else None
    if agr["cohen_kappa"] is not None:
        assert agr["cohen_kappa"] == pytest.approx(kappa)
    assert agr["roc_auc_rescan_mean_ssim"] == pytest.approx(
        roc_auc_score(np.array(rating) == 3, -mean), abs=1e-3)  # CSV rounds to 4 digits
    assert agr["roc_auc_rescan_min_ssim"] == pytest.approx(
        roc_auc_score(np.array(rating) == 3, -low), abs=1e-3)
    assert agr["spearman_mean_ssim"]["rho"] is not None
    assert (out / "group_agreement.png").stat().st_size > 5000
    page = (out / "group_report.html").read_text()
    assert "Agreement with the ratings" in page and "Cohen" in page
    assert "group_agreement.png" in page and "sub-999999_acq-standard_T1w" in page
    # `group` alone recomputes the same from the run's outputs
    assert main(["group", str(out), "--ratings", str(scores)]) == 0
    again = json.loads((out / "group_agreement.json").read_text())
    assert again["confusion"] == agr["confusion"] and again["accuracy"] == agr["accuracy"]


# ---------------------------------------------------------------------------------------------
# The page in a real browser


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class DevTools:
    """The Chrome DevTools protocol over one websocket (RFC 6455 client, text frames)."""

    def __init__(self, url: str):
        host_port, path = url[len("ws://"):].split("/", 1)
        host, port = host_port.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket"
                           f"\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = self.sock.recv(4096)
            assert chunk, "the browser closed the websocket"
            reply += chunk
        assert reply.split(b"\r\n")[0].split()[1] == b"101", reply[:200]
        self.buffer = reply.split(b"\r\n\r\n", 1)[1]
        self.next_id = 0
        self.events: list[dict] = []

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "the browser closed the websocket"
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _frame(self) -> tuple[int, bytes]:
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._read(8))[0]
        mask = self._read(4) if b1 & 0x80 else None
        data = self._read(n)
        if mask:
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
        return b0, data

    def _message(self) -> dict:
        parts = []
        while True:
            b0, data = self._frame()
            if b0 & 0x0F in (0x1, 0x0):
                parts.append(data)
                if b0 & 0x80:
                    return json.loads(b"".join(parts))

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        head = bytes([0x81])
        n = len(payload)
        head += bytes([0x80 | n]) if n < 126 else (bytes([0x80 | 126]) + struct.pack(">H", n))
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload)))
        while True:
            msg = self._message()
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        end = time.time() + timeout
        while time.time() < end:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(self._message())
        raise AssertionError(f"no {method} within {timeout} s")

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        assert "exceptionDetails" not in res, res
        return res["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (press and release) at the centre of the element."""
        box = self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                            " e.scrollIntoView({block: 'center'});"
                            " const r = e.getBoundingClientRect();"
                            " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1],
                      button="left", clickCount=1)


@pytest.fixture
def chromium():
    exe = _browser()
    if exe is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium "
                    "chromium-driver; .ci/run installs it)")
    profile = tempfile.mkdtemp(prefix="motionssim-chromium-")
    proc = subprocess.Popen([exe, "--headless", "--no-sandbox", "--disable-gpu",
                             "--no-first-run", "--no-default-browser-check",
                             "--remote-debugging-port=0", f"--user-data-dir={profile}",
                             "about:blank"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        end = time.time() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert proc.poll() is None, f"{exe} exited with {proc.returncode}"
            assert time.time() < end, "Chromium did not open its DevTools port in 60 s"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        tools = DevTools(pages[0]["webSocketDebuggerUrl"])
        yield tools
        tools.sock.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def _column(tools: DevTools, key: str) -> list[str]:
    return tools.evaluate(
        "(() => { const heads = Array.from(document.querySelectorAll('#scans thead th'));"
        f" const i = heads.findIndex(h => h.dataset.key === {json.dumps(key)});"
        " return Array.from(document.querySelectorAll('#scans tbody tr'))"
        ".map(r => r.cells[i].textContent.trim()); })()")


def test_html_report_in_headless_chromium(rated, chromium):
    out, _, _ = rated
    tools = chromium
    tools.call("Runtime.enable")
    tools.call("Log.enable")
    tools.call("Page.enable")
    tools.call("Page.navigate", url=(out / "group_report.html").resolve().as_uri())
    tools.wait_event("Page.loadEventFired")
    # every chart and the agreement plot load from the folder (relative links, offline)
    n_images = tools.evaluate(
        "Promise.all(Array.from(document.images).map(i => { i.loading = 'eager';"
        " return i.decode().then(() => i.naturalWidth); }))")
    assert len(n_images) == 7 and min(n_images) > 100  # 6 charts and the agreement plot
    mean = _column(tools, "mean_ssim")
    assert len(mean) == 6
    tools.click("#scans th[data-key=mean_ssim]")
    after = [float(v) for v in _column(tools, "mean_ssim")]
    assert after == sorted(after)
    assert tools.evaluate("document.querySelector('#scans th[data-key=mean_ssim]')"
                          ".getAttribute('aria-sort')") == "ascending"
    tools.click("#scans th[data-key=mean_ssim]")
    assert [float(v) for v in _column(tools, "mean_ssim")] == sorted(after, reverse=True)
    tools.click("#scans th[data-key=path]")
    paths = _column(tools, "path")
    assert paths == sorted(paths) and len(set(paths)) == 6
    tools.click("#scans th[data-key=rating]")
    ratings = [int(v) for v in _column(tools, "rating")]
    assert ratings == sorted(ratings)
    # no console error, no uncaught exception, no failed request, in all of it
    errors = [e for e in tools.events
              if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled"
                  and e["params"].get("type") in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded"
                  and e["params"]["entry"].get("level") == "error")]
    assert errors == []
