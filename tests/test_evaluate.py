"""Evaluation in the package: face sets (musica_ref.data), musica_ref.evaluate and `musica-ref evaluate`."""
import csv
import hashlib

import h5py
import numpy as np
import pytest

import musica_ref as m
from musica_ref import cli, metrics
from musica_ref.data import FaceSet
from musica_ref.evaluate import evaluate

from conftest import synthetic_folder


@pytest.fixture(scope="module")
def folder_and_weights(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ev")
    (tmp / "faces").mkdir()
    folder = synthetic_folder(tmp / "faces", n=9)
    w = tmp / "w5.h5"
    m.save_weights(w, m.random_weights(m.custom_variant(5, [0, 2, 4]), seed=3))
    return folder, w


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_evaluate_matches_the_metrics_face_by_face(folder_and_weights):
    folder, w = folder_and_weights
    model, faces = m.MuSiCa.load(w), FaceSet(folder)
    ev = evaluate(model, faces, batch=4)
    for i in range(len(faces)):                                  # the same as predict and metrics, face by face
        r = model.predict(faces.image(i), faces.boxes[i])
        np.testing.assert_array_equal(ev.predictions[i], r.landmarks)
        assert ev.nme["box"][i] == metrics.face_nme(r.landmarks, faces.landmarks[i])["box"]
        assert ev.iterations[i] == 3 and ev.multiply_adds[i] == r.multiply_adds
    s = ev.summary()
    assert s["faces"] == 9 and s["nme_box"] == pytest.approx(np.mean(ev.nme["box"]))
    assert np.isnan(s["nme_io"]) and "nme_box_by_yaw" not in s          # 5 points: no eye corners, no poses


def test_cli_evaluate_writes_its_tables_and_changes_no_input(folder_and_weights, tmp_path, capsys):
    folder, w = folder_and_weights
    before = {p.name: digest(p) for p in list(folder.iterdir()) + [w]}
    rc = cli.main(["evaluate", str(w), str(folder), "--csv", str(tmp_path / "faces.csv"),
                   "--ced", str(tmp_path / "ced.csv"), "--batch", "4", "--tf", "5%"])
    out = capsys.readouterr().out
    assert rc == 0 and "NME_box" in out and "9 faces" in out and "mean iterations 3.000" in out
    rows = list(csv.DictReader(open(tmp_path / "faces.csv")))
    assert len(rows) == 9 and rows[0]["name"] == "f000.png" and all(np.isfinite(float(r["nme_box"])) for r in rows)
    ced = list(csv.DictReader(open(tmp_path / "ced.csv")))
    assert float(ced[0]["threshold"]) == 0 and float(ced[-1]["threshold"]) == pytest.approx(0.10)
    assert {p.name: digest(p) for p in list(folder.iterdir()) + [w]} == before


@pytest.mark.parametrize("case, words", [
    ("missing", "does not exist"), ("empty folder", "no images with a .pts"), ("not a face set", "no dataset"),
    ("csv onto weights", "refusing to overwrite"), ("landmark count", "landmarks a face"),
    ("csv into a missing folder", "does not exist"), ("batch 0", "--batch"),
])
def test_cli_evaluate_errors_are_one_line(folder_and_weights, tmp_path, capsys, case, words):
    folder, w = folder_and_weights
    args = {"missing": [str(w), str(tmp_path / "none.h5")],
            "empty folder": [str(w), str(tmp_path)],
            "not a face set": [str(w), str(w)],
            "csv onto weights": [str(w), str(folder), "--csv", str(w)],
            "landmark count": ["musica19", str(folder)],
            "csv into a missing folder": [str(w), str(folder), "--csv", str(tmp_path / "no" / "f.csv")],
            "batch 0": [str(w), str(folder), "--batch", "0"]}[case]
    before = digest(w)
    assert cli.main(["evaluate", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("musica-ref: error:") and words in err[0], err
    assert digest(w) == before


def test_an_hdf5_face_set_with_inconsistent_datasets_is_refused(tmp_path):
    p = tmp_path / "bad.h5"
    with h5py.File(p, "w") as f:
        f["jpeg"] = np.zeros((2, 4), np.uint8)
        f["landmarks"] = np.zeros((2, 5, 2))
        f["visible"] = np.ones((3, 5), bool)
        f["box"] = np.zeros((2, 4))
    with pytest.raises(m.InputError, match="same faces"):
        FaceSet(p)


def test_evaluate_on_real_faces(shared_data, capsys):
    assert cli.main(["evaluate", "musica19", str(shared_data / "test_aflw2000.h5"), "--limit", "40"]) == 0
    out = capsys.readouterr().out
    nme = float(out.split("NME_box ")[1].split("%")[0])
    assert 1.0 < nme < 8.0 and "by |yaw|" in out
