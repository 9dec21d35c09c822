"""Real-data measurement of docs/compare.md (issue 19): `compare_transfer(clinical=["age", "sex", "view"])`
against the same comparison without clinical columns, on nih_cxr14_pneumonia (embeddings family only).

Needs Lite0 embeddings of the set (224 px, pad, bilinear: the fingerprint docs/clinical.md used), e.g.::

    python -c "import cxr_embed as cx; cx.extract(cx.load_manifest('../shared/data/nih_cxr14_pneumonia/labels.csv'),
               cx.Backbone('efficientnet_lite0', interpolation='bilinear'), 'nih.h5')"
    PYTHONPATH=. python bench/issue19_compare_clinical.py --nih nih.h5 --out results/

The two runs share their folds (same random_state), so their out-of-fold scores are paired image by
image (DeLong). Prints the tables; writes compare.json and the report of the clinical run (with the
importance section) to --out. About 3 minutes on two busy cores once the embeddings exist.
"""
import argparse
import json
import os
import time

import numpy as np

import cxr_embed as cx
from cxr_embed.evaluate.metrics import delong_test
from cxr_embed.learn.clinical import clinical_importance

ap = argparse.ArgumentParser()
ap.add_argument("--nih", default="/tmp/wt19b_nih.h5")
ap.add_argument("--data", default="../shared/data")
ap.add_argument("--out", default="/tmp/wt19b_compare")
ap.add_argument("--classifiers", default="logreg,random_forest")
args = ap.parse_args()
os.makedirs(args.out, exist_ok=True)
t0 = time.time()
COLS = ["age", "sex", "view"]
nih = cx.load_manifest(f"{args.data}/nih_cxr14_pneumonia/labels.csv")
bb = cx.Backbone("efficientnet_lite0", interpolation="bilinear")
store = cx.EmbeddingStore(args.nih)
assert bb.fingerprint in store.info()["backbones"], "no embeddings of this backbone in --nih: extract them first"
common = dict(backbones=[bb], store=store, classifiers=tuple(args.classifiers.split(",")), approaches=("embeddings",),
              n_splits=5, n_bootstrap=1000, random_state=0)
runs = {}
for key, clinical in (("images", None), ("images+clinical", COLS)):
    t = time.time()
    runs[key] = cx.compare_transfer(nih, ["pneumonia"], clinical=clinical, **common)
    print(f"--- {key}: {time.time() - t:.0f} s")
    print(runs[key].summary().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
a, b = runs["images"], runs["images+clinical"]
assert all(np.array_equal(x[1], y[1]) for x, y in zip(a.splits, b.splits)), "the runs must share their folds"
y = a.y_true[:, 0]
known = ~np.isnan(y)
out = {"n_images": int(len(nih)), "n_patients": int(nih["patient_id"].nunique()), "clinical": COLS, "pairs": {}}
for name in a.oof:
    other = f"{name} + clinical" if not name.startswith("embeddings:") else name
    if other not in b.oof:
        continue
    auc_a, auc_b, z, p = delong_test(y[known], b.oof[other][known, 0], a.oof[name][known, 0])
    row = {"images": float(a.table.set_index("approach").loc[name, "auc"]),
           "images+clinical": float(b.table.set_index("approach").loc[other, "auc"]),
           "delong_z": float(z), "delong_p": float(p)}
    out["pairs"][name] = row
    print(f"{name}: images {row['images']:.3f} -> with {', '.join(COLS)} {row['images+clinical']:.3f} "
          f"(DeLong z = {z:.2f}, p = {p:.3g})")
# importance of the clinical columns and of the image block for the logreg of the clinical run
X = store.load(bb, nih["image_id"].astype(str).tolist())[1]
t = time.time()
imp = clinical_importance(cx.make_classifier("logreg", clinical=COLS, random_state=0), X, nih["pneumonia"].astype(int),
                          nih["patient_id"].astype(str), clinical=nih[COLS], n_splits=5, n_permutations=5,
                          random_state=0)
print(f"--- importance ({time.time() - t:.0f} s)")
print(imp.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
out["importance"] = imp.drop(columns=["std"]).to_dict("records")
index = b.write_report(os.path.join(args.out, "report"), importance=imp, n_bootstrap=200)
out["timings"] = {k: {kk: round(vv, 1) for kk, vv in r.timings.items()} for k, r in runs.items()}
out["wall_s"] = round(time.time() - t0, 1)
with open(os.path.join(args.out, "compare.json"), "w") as f:
    json.dump(out, f, indent=1)
print(f"report {index}; total {out['wall_s']:.0f} s")
