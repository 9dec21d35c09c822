"""A file whose decoding kills its worker process (a native decoder's segfault, an OOM kill) is
reported as failed and the run goes on (``embed/_workers.py``).

The crash is real: in a user-like script run in a subprocess, a ``sitecustomize`` module makes every
spawned decoding worker end itself with ``os._exit`` (what a segmentation fault does to a process:
no exception, no cleanup) when it opens a file named ``crash_*``; the main process is untouched.
The whole script runs under a timeout, so a pool that hangs after the crash fails the test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from test_extraction import tiny_model_file

SITECUSTOMIZE = '''
import multiprocessing, os
import PIL.Image as _image

_open = _image.open


def _open_or_crash(fp, *args, **kwargs):
    name = os.fspath(fp) if isinstance(fp, (str, os.PathLike)) else ""
    if "crash_" in os.path.basename(name) and multiprocessing.current_process().name != "MainProcess":
        os._exit(139)  # like a segfault: the worker process is gone, nothing is raised
    return _open(fp, *args, **kwargs)


_image.open = _open_or_crash
'''


def _pngs(folder, n, crash_at):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / (f"crash_{i:02d}.png" if i in crash_at else f"img_{i:02d}.png")
        Image.fromarray((rng.random((40, 36)) * 255).astype(np.uint8), mode="L").save(p)
        paths.append(str(p))
    return paths


def _run(tmp_path, paths, **extract_kwargs):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    model = tiny_model_file(tmp_path)
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(f"""
        import json

        if __name__ == "__main__":  # spawned workers re-import this file: keep Keras out of them
            from cxr_embed import Backbone, EmbeddingStore, WorkerCrashError, extract

            bb = Backbone.from_keras({str(model)!r}, preprocess="none")
            try:
                r = extract({paths!r}, bb, {str(tmp_path / "s.h5")!r}, progress=False, batch_size=4,
                            executor="process", **{extract_kwargs!r})
            except WorkerCrashError as e:
                print("RESULT", json.dumps({{"error": str(e)}}))
            else:
                ids = EmbeddingStore({str(tmp_path / "s.h5")!r}).ids(bb).tolist()
                print("RESULT", json.dumps({{"done": r.n_done, "ids": ids,
                                            "failed": [[f[1], f[2]] for f in r.failures]}}))
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_a_file_that_kills_its_worker_is_reported_and_the_run_goes_on(tmp_path):
    paths = _pngs(tmp_path, 20, crash_at={3, 11})
    res = _run(tmp_path, paths, workers=2)
    crashed = sorted(p for p, _ in res["failed"])
    assert crashed == [paths[3], paths[11]]
    assert all(reason.startswith("WorkerCrashError: decoding this file killed its worker process")
               for _, reason in res["failed"])
    good = [p for i, p in enumerate(paths) if i not in (3, 11)]
    assert res["done"] == 18 and sorted(res["ids"]) == sorted(good)  # every other file, none twice


@pytest.mark.slow  # 9 s: eight pool restarts
def test_crashes_on_file_after_file_stop_the_run_with_a_named_error(tmp_path):
    paths = _pngs(tmp_path, 12, crash_at=set(range(12)))
    res = _run(tmp_path, paths, workers=2)
    assert "crashed on 8 files in a row" in res["error"] and "workers=0" in res["error"]
