"""scripts/check_pairs.py: controlled synthetic pairs (one forced feature, same subject draw)."""

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from MotionSSIMLib.assessment.checkpoint import default_model_path, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_pairs", ROOT / "scripts" / "check_pairs.py")
pairs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pairs)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    return pairs.make_variants(tmp_path_factory.mktemp("pairs"), 0, seed=777)


def test_variants_share_the_draw_and_differ_in_the_forced_feature(subject):
    imgs = {v: nib.load(p) for v, p in subject["paths"].items()}
    assert set(imgs) == set(pairs.VARIANTS)
    ref = imgs["head"]
    for v, img in imgs.items():  # same subject: same grid and geometry in every variant
        assert img.shape == ref.shape, v
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4, err_msg=v)
    stripped = np.asarray(imgs["stripped"].dataobj)
    head = np.asarray(imgs["head"].dataobj)
    # skull-stripped: zero outside the intracranial volume, where the head has scalp and skull
    assert (stripped > 0).sum() < 0.9 * (head > 0).sum()
    assert (head[stripped > 0] > 0).mean() > 0.95  # the brain itself is kept
    snr = subject["snr"]
    assert snr["snr100"] == 100.0 and snr["snr8"] == 8.0
    assert snr["stripped"] == snr["head"]  # only the forced feature differs


def test_subject_bias_is_seeded_and_model_independent_in_its_slices(subject):
    bundled = load_checkpoint(default_model_path()).model.eval()
    first = pairs.subject_bias({"a": bundled, "b": bundled}, subject["paths"]["head"], slices=8)
    again = pairs.subject_bias({"a": bundled}, subject["paths"]["head"], slices=8)
    assert first["a"] == first["b"] == again["a"]  # the same corrupted slices every time
    assert -1.0 < first["a"] < 1.0


def test_summarize_pairs_by_subject():
    bias = {"stripped": [0.05, 0.03, 0.04], "head": [0.01, 0.02, 0.0],
            "snr100": [0.0, 0.0, 0.0], "snr8": [0.0, 0.0, 0.0]}
    s = pairs.summarize(bias)
    d = np.array([0.04, 0.01, 0.04])
    assert s["variants"]["stripped"] == pytest.approx(0.04)
    assert s["pairs"]["stripped-head"]["mean"] == pytest.approx(d.mean())
    assert s["pairs"]["stripped-head"]["se"] == pytest.approx(d.std() / np.sqrt(3))
    assert s["pairs"]["snr100-snr8"] == {"mean": 0.0, "sd": 0.0, "se": 0.0, "n": 3}
    text = pairs.markdown({"subjects": 3, "seed": 777, "slices": 8, "models": {"m": s}})
    assert "| stripped - head | +0.0300 (se " in text


def test_cli_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    for args in (["--subjects", "1"], ["--slices", "0"]):
        with pytest.raises(SystemExit) as exc:
            pairs.main(args)
        assert exc.value.code == 2, args
    bad = tmp_path / "not_a_model.safetensors"
    bad.write_text("hello")
    assert pairs.main(["--model", str(bad), "--subjects", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "not_a_model.safetensors" in err[-1]
