"""Reduced-resolution decoding of plain JPEG 2000 files (raw codestream .j2k, JP2 .jp2) by read_prepared.

``decode="reduced"`` skips the resolution levels of the wavelet pyramid the CNN input does not need
(Pillow's ``reduce``), never going below twice the scaled size; anything it cannot do falls back to
the full decoder, whose errors are the only ones a caller sees. The files are written here with
Pillow (lossless, 5 decomposition levels); the real codestream of pydicom-data's RG1_J2KR is
extracted to a ``.j2k`` file when pydicom-data is installed.
"""
from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest
from PIL import Image, Jpeg2KImagePlugin, features

from cxr_embed.exceptions import ImageDecodeError, ImageReadError, ImageTooLargeError
from cxr_embed.io import _codecs
from cxr_embed.io.images import read_image
from cxr_embed.io.prepared import read_prepared
from cxr_embed.io.preprocessing import _geometry, prepare_image

pytestmark = pytest.mark.skipif(not features.check("jpg_2000"), reason="this Pillow has no OpenJPEG")

SHAPE = (1800, 1500)  # rows, cols: level 2 (450 x 375) is the smallest covering 2 x (224 x 187)


def _radiograph(shape=SHAPE, top=65535, seed=0) -> np.ndarray:
    """A smooth, structured image with mild noise, as uint16 in [0, top]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    base = 0.5 + 0.2 * np.sin(xx / 70.0) * np.cos(yy / 110.0) + 0.2 * (yy / shape[0] - 0.5)
    return np.clip((base + rng.normal(0, 0.01, shape)) * top, 0, top).astype(np.uint16)


def _write(path, arr: np.ndarray, bits: int, **kw):
    img = Image.fromarray((arr >> 8).astype(np.uint8) if bits == 8 else arr)
    assert img.mode == ("L" if bits == 8 else "I;16")
    img.save(path, "JPEG2000", irreversible=False, num_resolutions=kw.pop("num_resolutions", 6), **kw)
    return path


@pytest.fixture(scope="module")
def j2k_files(tmp_path_factory):
    """``(bits, suffix) -> path`` of the 1800 x 1500 test files, written once per module, on demand."""
    root = tmp_path_factory.mktemp("j2k")
    cache: dict = {}

    def get(bits: int, suffix: str):
        if (bits, suffix) not in cache:
            cache[bits, suffix] = _write(root / f"cxr{bits}{suffix}", _radiograph(), bits)
        return cache[bits, suffix]

    return get


@pytest.fixture
def decoded(monkeypatch):
    """Spy on Pillow's JPEG 2000 decoder: ``(reduce, (width, height))`` of every image it decodes."""
    calls: list = []
    load = Jpeg2KImagePlugin.Jpeg2KImageFile.load

    def spy(self):
        pending = bool(self.tile)
        out = load(self)
        if pending:
            calls.append((self._reduce, self.size))
        return out

    monkeypatch.setattr(Jpeg2KImagePlugin.Jpeg2KImageFile, "load", spy)
    return calls


def _similar(full: np.ndarray, reduced: np.ndarray):
    assert full.shape == reduced.shape
    assert np.abs(full - reduced).mean() < 1.0  # grey levels of 255
    assert np.corrcoef(full.ravel(), reduced.ravel())[0, 1] > 0.99


# ----------------------------------------------------------------------------- the reduced path
@pytest.mark.parametrize("suffix", [".jp2", ".j2k"])
@pytest.mark.parametrize("bits", [8, 16])
def test_reduced_is_taken_and_close_to_full(j2k_files, decoded, bits, suffix):
    path = j2k_files(bits, suffix)
    assert _codecs.jpeg2000_file_header(path) == {"rows": 1800, "columns": 1500, "components": 1,
                                                  "precision": bits, "signed": False, "levels": 5}
    full, meta_full = read_prepared(path, 224)
    assert decoded == [(0, (1500, 1800))] and meta_full["reduction"] == 1.0
    decoded.clear()
    reduced, meta = read_prepared(path, 224, decode="reduced")
    assert decoded == [(2, (375, 450))]  # 1/4: the smallest level still >= 2 x (224 x 187)
    assert meta["reduction"] == 4.0 and (meta["rows"], meta["columns"]) == SHAPE
    assert meta["bit_depth"] == bits and meta["source"] == "jpeg2000"
    assert reduced.dtype == np.float32 and reduced.shape == (224, 224, 3)
    _similar(full, reduced)
    # decode="full" is the two-step path, unchanged
    two_step = prepare_image(read_image(path)[0], (224, 224))
    assert np.abs(full - two_step).max() < 1e-3


@pytest.mark.parametrize("size, mode", [(64, "pad"), (224, "crop"), (224, "resize"), (448, "pad"), (600, "pad"),
                                        (900, "pad")])
def test_never_below_twice_the_target(j2k_files, decoded, size, mode):
    path = j2k_files(16, ".j2k")
    got, meta = read_prepared(path, size, mode=mode, decode="reduced")
    (level, (w, h)), = decoded
    nh, nw = _geometry(SHAPE, (size, size), mode)[:2]
    assert h >= 2 * nh and w >= 2 * nw  # so never below the target size either
    assert meta["reduction"] == SHAPE[1] / w
    if level:  # and one level less would not have covered it
        assert -(-SHAPE[0] // 2 ** (level + 1)) < 2 * nh or -(-SHAPE[1] // 2 ** (level + 1)) < 2 * nw
    if size == 900:  # 2 x 900 rows: only the full image covers it
        assert level == 0 and np.array_equal(got, read_prepared(path, size, mode=mode)[0])


def test_small_file_is_decoded_in_full(tmp_path, decoded):
    path = _write(tmp_path / "small.jp2", _radiograph((300, 300)), 16)
    got, meta = read_prepared(path, 224, decode="reduced")
    assert decoded == [(0, (300, 300))] and meta["reduction"] == 1.0
    np.testing.assert_array_equal(got, read_prepared(path, 224)[0])


def test_too_few_levels_decodes_what_there_is(tmp_path, decoded):
    arr = _radiograph((1000, 900))
    none = _write(tmp_path / "none.j2k", arr, 16, num_resolutions=1)  # no decomposition at all
    assert _codecs.jpeg2000_file_header(none)["levels"] == 0
    got, meta = read_prepared(none, 64, decode="reduced")
    assert decoded == [(0, (900, 1000))] and meta["reduction"] == 1.0
    np.testing.assert_array_equal(got, read_prepared(none, 64)[0])
    decoded.clear()
    one = _write(tmp_path / "one.jp2", arr, 16, num_resolutions=2)  # one level: 1/2 at most
    got, meta = read_prepared(one, 64, decode="reduced")
    assert decoded == [(1, (450, 500))] and meta["reduction"] == 2.0
    _similar(read_prepared(one, 64)[0], got)


def test_levels_pillow_would_refuse_are_skipped(tmp_path, decoded):
    # 1001 columns: Pillow sizes level 2 as (1001 + 2) // 4 = 250, OpenJPEG as ceil(1001 / 4) = 251
    path = _write(tmp_path / "odd.j2k", _radiograph((1000, 1001)), 8)
    _, meta = read_prepared(path, 64, decode="reduced")
    assert decoded == [(1, (501, 500))] and meta["reduction"] == 1001 / 501


def test_a_failing_reduced_decode_falls_back_to_full(j2k_files, decoded, monkeypatch):
    path = j2k_files(8, ".jp2")
    full, _ = read_prepared(path, 224)
    decoded.clear()
    monkeypatch.setattr(_codecs, "pillow_j2k_level", lambda *a, **k: 7)  # more levels than the file has
    got, meta = read_prepared(path, 224, decode="reduced")
    assert [level for level, _ in decoded] == [0] and meta["reduction"] == 1.0  # the try at 7 raised in OpenJPEG
    np.testing.assert_array_equal(got, full)



@pytest.mark.parametrize("wrapped", [False, True])
def test_dicom_with_a_jp2_file_as_pixel_data_is_decoded_reduced(tmp_path, decoded, wrapped):
    """Some encoders put a whole JP2 file (signature and boxes) where DICOM expects the raw
    codestream; its codestream is found in the boxes and decoded reduced like a conformant one."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid

    arr = _radiograph((1200, 1000))
    blob = tmp_path / ("x.jp2" if wrapped else "x.j2k")
    Image.fromarray(arr).save(blob, "JPEG2000", irreversible=False, num_resolutions=6)
    data = blob.read_bytes()
    assert data.startswith(_codecs.JP2_SIGNATURE if wrapped else _codecs.J2K_START)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CR", 1200, 1000, 1
    ds.PhotometricInterpretation, ds.PixelRepresentation = "MONOCHROME2", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.WindowCenter, ds.WindowWidth = 32768, 60000  # a fixed window: min/max of the noise would differ
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full, _ = read_prepared(path, 224)
        decoded.clear()
        got, meta = read_prepared(path, 224, decode="reduced")
    assert meta["reduction"] == 2.0 and decoded == [(1, (500, 600))]  # 600 x 500 still >= 2 x 224 rows
    _similar(full, got)

# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("keep", [30, 100, 0.05, 0.5, 0.9])
@pytest.mark.parametrize("suffix", [".jp2", ".j2k"])
def test_truncated_file_same_named_error(j2k_files, tmp_path, suffix, keep):
    data = j2k_files(8, suffix).read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    errors = []
    for decode in ("full", "reduced"):
        with pytest.raises(ImageReadError) as info:
            read_prepared(cut, 224, decode=decode)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1]) and str(errors[0]) == str(errors[1])
    assert str(errors[0]).startswith(str(cut))
    if keep in (0.5, 0.9):
        assert isinstance(errors[0], ImageDecodeError)


def test_pixel_budget_checked_from_the_header(j2k_files, decoded):
    path = j2k_files(16, ".jp2")
    for decode in ("full", "reduced"):
        with pytest.raises(ImageTooLargeError, match="declares 1500 x 1800"):
            read_prepared(path, 224, decode=decode, max_pixels=1_000_000)
    assert decoded == []  # refused before anything was decoded


def test_colour_jpeg2000_is_decoded_in_full(tmp_path, decoded):
    rgb = np.repeat(_radiograph((600, 500), top=255).astype(np.uint8)[..., None], 3, axis=2)
    path = tmp_path / "rgb.jp2"
    Image.fromarray(rgb).save(path, "JPEG2000", irreversible=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, meta = read_prepared(path, 64, decode="reduced")
    assert decoded == [(0, (500, 600))] and meta["reduction"] == 1.0


# ----------------------------------------------------------------------------- header parsing
def _boxes(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        length = length or len(data) - pos
        out.append((kind, data[pos + 8 : pos + length]))
        pos += length
    return out


def test_jp2_box_walk(tmp_path):
    path = _write(tmp_path / "x.jp2", _radiograph((200, 180)), 8)
    data = path.read_bytes()
    boxes = _boxes(data)
    assert boxes[0][0] == b"jP  " and boxes[-1][0] == b"jp2c"
    want = _codecs.j2k_header(boxes[-1][1])
    assert want["rows"] == 200 and want["columns"] == 180 and _codecs.jpeg2000_file_header(path) == want
    # a 64-bit box length (XLBox), a box up to the end of the file (length 0), an unknown box between
    body = b"".join(struct.pack(">I4s", 8 + len(p), k) + p for k, p in boxes[:-1])
    free = struct.pack(">I4sQ", 1, b"free", 16 + 40) + b"\0" * 40
    other = tmp_path / "other.jpx"
    other.write_bytes(body + free + struct.pack(">I4s", 0, b"jp2c") + boxes[-1][1])
    assert _codecs.jpeg2000_file_header(other) == want
    # no codestream box, a box running past the end, not JPEG 2000 at all, an empty file
    for name, content in [("nocs.jp2", body), ("past.jp2", body + struct.pack(">I4s", 10**6, b"free")),
                          ("png.jp2", b"\x89PNG\r\n\x1a\n" + b"\0" * 64), ("empty.jp2", b"")]:
        (tmp_path / name).write_bytes(content)
        assert _codecs.jpeg2000_file_header(tmp_path / name) is None


def test_coc_segment_with_fewer_levels_wins():
    # SOC, SIZ (one 8-bit component), COD (5 levels), COC for component 0 (2 levels), SOT
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, 180, 200, 0, 0, 180, 200, 0, 0, 1) + bytes([7, 1, 1])
    cod = struct.pack(">HH", 0xFF52, 12) + bytes([0, 0, 0, 1, 0, 5, 4, 4, 0, 1])
    coc = struct.pack(">HH", 0xFF53, 9) + bytes([0, 0, 2, 4, 4, 0, 1])
    stream = b"\xff\x4f\xff\x51" + siz + cod + coc + b"\xff\x90" + b"\0" * 10
    assert _codecs.j2k_header(stream)["levels"] == 2
    assert _codecs.j2k_header(b"\xff\x4f\xff\x51" + siz + coc + b"\xff\x90" + b"\0" * 10) is None  # no COD


# ----------------------------------------------------------------------------- real codestream
def test_real_rg1_codestream_as_j2k(tmp_path, decoded):
    from pydicom.data import get_testdata_file

    source = get_testdata_file("RG1_J2KR.dcm", download=False)
    if source is None:
        pytest.skip("pydicom-data is not installed")
    import pydicom
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(source)
    path = tmp_path / "rg1.j2k"
    path.write_bytes(next(generate_frames(ds.PixelData, number_of_frames=1)))
    full, _ = read_prepared(path, 224)
    decoded.clear()
    reduced, meta = read_prepared(path, 224, decode="reduced")
    assert decoded == [(1, (921, 978))]  # levels 2+ skipped: Pillow's size disagrees (1841 columns)
    assert meta["reduction"] == 1841 / 921 and (meta["rows"], meta["columns"]) == (1955, 1841)
    assert np.corrcoef(full.ravel(), reduced.ravel())[0, 1] > 0.999
    assert np.abs(full - reduced).mean() < 1.0


# ----------------------------------------------------------------------------- manifests
def test_manifest_folders_and_box_ids_accept_jpeg2000(tmp_path):
    from cxr_embed.io.boxes import _image_id
    from cxr_embed.io.manifest import load_manifest

    for name in ("normal/a.jp2", "normal/b.j2k", "normal/c.png", "pneumonia/d.jpx", "pneumonia/e.j2c"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"content does not matter to a manifest")
    df = load_manifest(tmp_path)
    assert df.attrs["format"] == "folders"
    assert df["image_id"].tolist() == ["normal/a", "normal/b", "normal/c", "pneumonia/d", "pneumonia/e"]
    df = load_manifest(tmp_path / "normal", format="images")
    assert df["image_id"].tolist() == ["a", "b", "c"]
    assert _image_id("/data/x/00000001_000.jp2") == "00000001_000"
