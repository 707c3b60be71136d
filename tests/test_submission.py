"""The submission writer and validator: round trip, order, and every rejection."""

import json

import numpy as np
import pytest

from segflow.submission import write_submission
from segflow.submission_format import (
    HEADER,
    SubmissionError,
    check_submission,
    decode_prediction,
    encode_mask,
    read_submission,
)

SIZE, N_CLASSES = 16, 11


@pytest.fixture()
def labels(tmp_path):
    rng = np.random.default_rng(0)
    ids = ["b1/0002.jpg", "b2/0000.jpg", "b1/0001.jpg"]
    maps = rng.integers(
        0, N_CLASSES, (3, 8, 8), dtype=np.uint8
    )  # prediction size 8 -> submission 16
    np.save(tmp_path / "labels.npy", maps)
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    test_order = ["b2/0000.jpg", "b1/0001.jpg", "b1/0002.jpg"]
    (tmp_path / "test.json").write_text(
        json.dumps(
            {
                "images": [
                    {"id": k, "file_name": f, "width": 8, "height": 8}
                    for k, f in enumerate(test_order)
                ],
                "categories": [],
            }
        )
    )
    return tmp_path, ids, maps, test_order


def write(tmp_path, **kwargs):
    return write_submission(
        labels_path=tmp_path / "labels.npy",
        ids_path=tmp_path / "ids.txt",
        test_json=tmp_path / "test.json",
        out=tmp_path / "submission.csv",
        size=SIZE,
        n_classes=N_CLASSES,
        **({"sample_submission": None, "debug_subset": False} | kwargs),
    )


@pytest.mark.parametrize("high", [2, 11, 256])
def test_encoding_equals_naive_joining_and_decodes_back(high):
    mask = np.random.default_rng(high).integers(0, high, (SIZE, SIZE)).astype(np.uint8)
    text = encode_mask(mask)
    assert text == " ".join(str(v) for v in mask.ravel()).encode()
    np.testing.assert_array_equal(
        decode_prediction(text, SIZE * SIZE, 256, "x"), mask.ravel()
    )


def test_round_trip_in_test_json_order_with_nearest_resize(labels):
    tmp_path, ids, maps, test_order = labels
    assert write(tmp_path) == 3
    rows = list(read_submission(tmp_path / "submission.csv", SIZE, N_CLASSES))
    assert [r[0] for r in rows] == test_order
    for image_id, mask in rows:
        expected = (
            maps[ids.index(image_id)].repeat(2, axis=0).repeat(2, axis=1)
        )  # nearest x2
        np.testing.assert_array_equal(mask, expected)
    assert (tmp_path / "submission.csv").read_bytes().startswith(HEADER + b"\n")


def test_sample_submission_order_is_followed_when_it_lists_ids(labels):
    tmp_path, _, _, test_order = labels
    (tmp_path / "sample.csv").write_text(
        "image_id,PredictionString\n"
        + "".join(f"{i},0\n" for i in reversed(test_order))
    )
    write(tmp_path, sample_submission=tmp_path / "sample.csv")
    assert [
        r[0] for r in read_submission(tmp_path / "submission.csv", SIZE, N_CLASSES)
    ] == list(reversed(test_order))
    (tmp_path / "header_only.csv").write_text(
        "image_id,PredictionString\n"
    )  # the competition's file
    write(tmp_path, sample_submission=tmp_path / "header_only.csv")
    assert [
        r[0] for r in read_submission(tmp_path / "submission.csv", SIZE, N_CLASSES)
    ] == test_order


def valid_csv(tmp_path, rows):
    path = tmp_path / "s.csv"
    path.write_text(
        "image_id,PredictionString\n" + "".join(f"{i},{p}\n" for i, p in rows)
    )
    return path


GOOD = " ".join(["0"] * (SIZE * SIZE))


@pytest.mark.parametrize(
    "rows,words",
    [
        (
            [("a.jpg", GOOD)],
            ["2 test images", "missing e.g. ['b.jpg']"],
        ),  # a row missing
        (
            [("a.jpg", GOOD), ("b.jpg", GOOD), ("c.jpg", GOOD)],
            ["row 4", "'c.jpg'", "not a test image"],
        ),
        ([("a.jpg", GOOD), ("a.jpg", GOOD)], ["row 3", "duplicate image_id"]),
        (
            [("a.jpg", GOOD), ("b.jpg", GOOD + " 0")],
            ["row 3", f"{SIZE * SIZE + 1} values, expected {SIZE * SIZE}"],
        ),
        (
            [("a.jpg", GOOD), ("b.jpg", " ".join(["0"] * (SIZE * SIZE - 1)))],
            ["row 3", "values, expected"],
        ),
        (
            [("a.jpg", GOOD), ("b.jpg", GOOD[:-1] + "11")],
            ["row 3", "class 11 out of range 0..10"],
        ),
        (
            [("a.jpg", GOOD), ("b.jpg", GOOD[:-1] + "x")],
            ["row 3", "integers separated by single spaces"],
        ),
        ([("a.jpg", GOOD), ("b.jpg", GOOD[:-2] + "  0")], ["row 3", "empty value"]),
        (
            [("a.jpg", GOOD), ("b.jpg", GOOD[:-1] + "-1")],
            ["row 3", "integers separated by single spaces"],
        ),
    ],
)
def test_validator_rejects_wrong_rows_lengths_ids_and_values(tmp_path, rows, words):
    path = valid_csv(tmp_path, rows)
    with pytest.raises(SubmissionError) as error:
        check_submission(path, SIZE, N_CLASSES, ["a.jpg", "b.jpg"])
    for word in words:
        assert word in str(error.value)


def test_validator_rejects_a_wrong_header_and_accepts_a_good_file(tmp_path):
    path = valid_csv(tmp_path, [("a.jpg", GOOD), ("b.jpg", GOOD)])
    assert check_submission(path, SIZE, N_CLASSES, ["a.jpg", "b.jpg"]) == 2
    path.write_text("id,mask\n" + path.read_text().split("\n", 1)[1])
    with pytest.raises(SubmissionError, match="header"):
        check_submission(path, SIZE, N_CLASSES)


def test_check_cli(tmp_path, capsys):
    from segflow.submission import main

    path = valid_csv(tmp_path, [("a.jpg", GOOD)])
    main(["check", str(path), "--size", str(SIZE), "--n-classes", "11"])
    assert "OK" in capsys.readouterr().out
    path.write_text(path.read_text().replace(",0 ", ",12 ", 1))
    with pytest.raises(SystemExit, match="class 12 out of range"):
        main(["check", str(path), "--size", str(SIZE), "--n-classes", "11"])


def test_writer_refuses_missing_predictions_and_leaves_no_file(labels):
    tmp_path, ids, maps, _ = labels
    np.save(tmp_path / "labels.npy", maps[:2])
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids[:2]))
    with pytest.raises(SubmissionError, match="no prediction for 1 test images"):
        write(tmp_path)
    assert not (tmp_path / "submission.csv").exists()


def test_debug_mode_writes_the_predicted_sample_only(labels):
    tmp_path, ids, maps, test_order = labels
    np.save(tmp_path / "labels.npy", maps[:2])
    (tmp_path / "ids.txt").write_text("".join(f"{i}\n" for i in ids[:2]))
    assert write(tmp_path, debug_subset=True) == 2
    assert [
        r[0] for r in read_submission(tmp_path / "submission.csv", SIZE, N_CLASSES)
    ] == [i for i in test_order if i in ids[:2]]
