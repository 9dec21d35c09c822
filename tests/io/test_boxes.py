"""load_boxes on the NIH layout (1024 -> 512), the shared bboxes.csv layout and a generic CSV; boxes_to_mask."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_embed import BoxFormatError, load_boxes
from cxr_embed.io.boxes import boxes_to_mask

NIH = ("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
       "00000001_000.png,Pneumonia,100,200,300,400,,,\n"
       "00000001_000.png,Effusion,600,700,100.5,50,,,\n"
       "00000002_001.png,Atelectasis,0,0,1024,1024,,,\n")


@pytest.fixture
def nih_csv(tmp_path):
    p = tmp_path / "BBox_List_2017.csv"
    p.write_text(NIH)
    return p


def test_nih_layout_scaled_1024_to_512(nih_csv):
    b = load_boxes(nih_csv, image_size=512)
    assert b.attrs["format"] == "nih"
    assert b["image_id"].tolist() == ["00000001_000", "00000001_000", "00000002_001"]  # suffix dropped, as load_manifest
    assert b["finding"].tolist() == ["pneumonia", "effusion", "atelectasis"]
    assert b[["x", "y", "w", "h"]].to_numpy().tolist() == [[50, 100, 150, 200], [300, 350, 50.25, 25], [0, 0, 512, 512]]
    assert b.attrs["scale"]["00000001_000"] == (0.5, 0.5)


def test_nih_layout_unscaled_and_per_image_sizes(nih_csv):
    raw = load_boxes(nih_csv)
    assert raw.loc[0, ["x", "y", "w", "h"]].tolist() == [100, 200, 300, 400]  # NIH frame kept without image_size
    sizes = {"00000001_000": (256, 512), "00000002_001": (1024, 1024)}  # (height, width)
    b = load_boxes(nih_csv, image_size=sizes)
    assert b.loc[0, ["x", "y", "w", "h"]].tolist() == [50, 50, 150, 100]
    assert b.loc[2, ["w", "h"]].tolist() == [1024, 1024]


def test_image_size_from_a_manifest_with_width_and_height(nih_csv):
    man = pd.DataFrame({"image_id": ["00000001_000", "00000002_001"], "height": [512, 512], "width": [512, 512]})
    assert load_boxes(nih_csv, image_size=man)["w"].iloc[0] == 150


def test_missing_size_and_outside_boxes_are_errors(nih_csv, tmp_path):
    with pytest.raises(BoxFormatError, match="no image size"):
        load_boxes(nih_csv, image_size={"00000001_000": 512})
    with pytest.raises(BoxFormatError, match="outside"):
        load_boxes(nih_csv, image_size=512, source_size=512)  # wrong frame: 600 + 100 > 512


def test_finding_filter(nih_csv):
    assert load_boxes(nih_csv, finding="Pneumonia")["image_id"].tolist() == ["00000001_000"]


def test_cxr_embed_layout_and_its_1024_columns(tmp_path):
    p = tmp_path / "bboxes.csv"
    p.write_text("image_id,finding,x,y,w,h,x_1024,y_1024,w_1024,h_1024\n"
                 "a,pneumonia,10,20,30,40,20,40,60,80\n")
    b = load_boxes(p)
    assert b.attrs["format"] == "cxr_embed" and b.loc[0, ["x", "y", "w", "h"]].tolist() == [10, 20, 30, 40]
    # scaled to another size from the 1024 columns
    assert load_boxes(p, image_size=256).loc[0, ["x", "y", "w", "h"]].tolist() == [5, 10, 15, 20]


def test_generic_csv_with_corners(tmp_path):
    p = tmp_path / "g.csv"
    p.write_text("filename,label,x_min,y_min,x_max,y_max\nimg/b.jpg,Opacity,1,2,11,22\n")
    b = load_boxes(p)
    assert b.attrs["format"] == "csv"
    assert b.iloc[0][["image_id", "finding", "x", "y", "w", "h"]].tolist() == ["b", "opacity", 1, 2, 10, 20]


@pytest.mark.parametrize("text, match", [
    ("foo,bar\n1,2\n", "unknown box table layout"),
    ("image_id,x,y,w,h\na,1,2,-3,4\n", "width/height <= 0"),
    ("image_id,x,y,w,h\na,1,2,nan,4\n", "non-numeric|non-finite"),
    ("image_id,x,y\na,1,2\n", "no box columns"),
    ("image_id,x,y,w,h\n", "no boxes"),
])
def test_bad_tables(tmp_path, text, match):
    p = tmp_path / "b.csv"
    p.write_text(text)
    with pytest.raises(BoxFormatError, match=match):
        load_boxes(p)


def test_not_a_file(tmp_path):
    with pytest.raises(BoxFormatError, match="no such file"):
        load_boxes(tmp_path)


def test_boxes_to_mask_centres_union_and_tiny_boxes():
    m = boxes_to_mask(np.array([[0, 0, 2, 1], [3, 2, 1, 1]]), (4, 5))
    assert m.sum() == 3 and m[0, 0] and m[0, 1] and m[2, 3]
    tiny = boxes_to_mask(np.array([[2.2, 1.1, 0.3, 0.3]]), (4, 5))
    assert tiny.sum() == 1 and tiny[1, 2]
    table = pd.DataFrame({"image_id": ["a", "b"], "x": [0, 2], "y": [0, 2], "w": [1, 1], "h": [1, 1]})
    assert boxes_to_mask(table, (4, 4), image_id="b").nonzero() == (np.array([2]), np.array([2]))


def test_shared_bboxes_csv(shared_data):
    folder = shared_data("nih_cxr14_pneumonia")
    b = load_boxes(folder / "bboxes.csv")
    assert b.attrs["format"] == "cxr_embed" and len(b) == 32
    assert (b["finding"] == "pneumonia").sum() == 29
    # the published 1024 px boxes scaled to the stored 512 px images equal the stored 512 px columns
    scaled = load_boxes(folder / "bboxes.csv", image_size=512)
    assert np.allclose(scaled[["x", "y", "w", "h"]], b[["x", "y", "w", "h"]], atol=0.01)
    assert ((b["x"] + b["w"]) <= 512.5).all() and ((b["y"] + b["h"]) <= 512.5).all()


def test_boxes_of_images_outside_the_manifest_are_dropped(nih_csv):
    man = pd.DataFrame({"image_id": ["00000001_000"], "height": [512], "width": [512]})
    with pytest.warns(UserWarning, match="1 boxed image"):
        b = load_boxes(nih_csv, image_size=man)
    assert set(b["image_id"]) == {"00000001_000"}
    with pytest.raises(BoxFormatError, match="no manifest image has a box"):
        load_boxes(nih_csv, image_size=man.assign(image_id="zzz"))
