"""Real-data measurements of docs/clinical.md (issue 19): clinical columns beside Lite0 embeddings on
nih_cxr14_pneumonia (internal grouped CV, DeLong, importance) and ComBat NIH -> kermany_pediatric.

Needs Lite0 embeddings of both sets (224 px, pad), e.g.::

    cxr-embed extract --manifest ../shared/data/nih_cxr14_pneumonia/labels.csv --backbone efficientnet_lite0 --store nih.h5
    cxr-embed extract --manifest ../shared/data/kermany_pediatric/labels.csv --backbone efficientnet_lite0 --store ker.h5
    PYTHONPATH=. python bench/issue19_clinical_combat.py --nih nih.h5 --kermany ker.h5 --out results/

About 28 minutes on two busy cores. Prints the tables; writes measure.json, importance_nih.csv/.png to --out.
"""
import argparse
import json
import os
import time

import numpy as np
import pandas as pd
import cxr_embed as cx
from cxr_embed.learn.clinical import clinical_frame, clinical_importance, with_clinical
from cxr_embed.learn.harmonization import ComBat
from cxr_embed.evaluate.metrics import delong_test

ap = argparse.ArgumentParser()
ap.add_argument("--nih", default="/tmp/wt19_nih.h5")
ap.add_argument("--kermany", default="/tmp/wt19_kermany.h5")
ap.add_argument("--data", default="../shared/data")
ap.add_argument("--out", default="/tmp/wt19")
args = ap.parse_args()
os.makedirs(args.out, exist_ok=True)
t0 = time.time()
FP = "4eb25c43a02b595705de703e82d76b92ce1fb104f568e49ef1ab0052fd44e0e7"
nih = cx.load_manifest(f"{args.data}/nih_cxr14_pneumonia/labels.csv", check_files=False)
ker = cx.load_manifest(f"{args.data}/kermany_pediatric/labels.csv", check_files=False)
_, Xn = cx.EmbeddingStore(args.nih, mode="r").load(FP, nih["image_id"].astype(str).tolist())
_, Xk = cx.EmbeddingStore(args.kermany, mode="r").load(FP, ker["image_id"].astype(str).tolist())
yn = nih["pneumonia"].astype(int).to_numpy(); gn = nih["patient_id"].astype(str).to_numpy()
yk = ker["pneumonia"].astype(int).to_numpy(); gk = ker["patient_id"].astype(str).to_numpy()
print("NIH", Xn.shape, yn.mean(), len(set(gn)), "| Kermany", Xk.shape, yk.mean(), len(set(gk)))
print(nih[["age", "sex", "view"]].describe(include="all").T[["count", "unique", "top", "mean"]])
res = {}

def paired_boot(y, a, b, g, n=2000, seed=0):
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(seed); ug, inv = np.unique(g, return_inverse=True)
    idx = [np.flatnonzero(inv == k) for k in range(len(ug))]
    d = []
    for _ in range(n):
        rows = np.concatenate([idx[k] for k in rng.integers(0, len(ug), len(ug))])
        if np.unique(y[rows]).size < 2: continue
        d.append(roc_auc_score(y[rows], b[rows]) - roc_auc_score(y[rows], a[rows]))
    return float(np.mean(d)), *np.quantile(d, [0.025, 0.975]).tolist()

# ---------------------------------------------------------------- A: clinical beside the embeddings (internal CV)
SEED, REPEATS = 0, 5
clin = nih[["age", "sex", "view"]]
models = {
    "embeddings": (cx.make_classifier("logreg"), Xn, None),
    "embeddings+age,sex,view": (cx.make_classifier("logreg", clinical=["age", "sex", "view"]), Xn, clin),
    "embeddings(PCA32)+age,sex,view": (cx.make_classifier("logreg", clinical=["age", "sex", "view"], pca=32), Xn, clin),
    "age,sex,view only": (cx.make_classifier("logreg", clinical=["age", "sex", "view"]), clin.reset_index(drop=True), None),
}
oof = {}
for name, (est, X, c) in models.items():
    r = cx.cross_validate_grouped(est, X, yn, gn, n_splits=5, n_repeats=REPEATS, random_state=SEED, clinical=c,
                                  n_bootstrap=1000)
    row = r.summary.iloc[0]
    oof[name] = r.oof_mean[:, 0]
    res[f"cv/{name}"] = {"auc": row.auc, "ci_low": row.ci_low, "ci_high": row.ci_high, "fold_sd": row.fold_auc_std}
    print(f"CV {name:34s} AUC {row.auc:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]  ({time.time()-t0:.0f}s)", flush=True)
for other in ["embeddings+age,sex,view", "embeddings(PCA32)+age,sex,view", "age,sex,view only"]:
    a, b, z, p = delong_test(yn, oof["embeddings"], oof[other])
    d, lo, hi = paired_boot(yn, oof["embeddings"], oof[other], gn)
    res[f"delong/embeddings vs {other}"] = {"auc_a": a, "auc_b": b, "z": z, "p": p, "diff_patient_boot": [d, lo, hi]}
    print(f"DeLong embeddings vs {other}: {a:.3f} vs {b:.3f}, z={z:.2f}, p={p:.3g}; paired patient bootstrap "
          f"diff {d:+.3f} [{lo:+.3f}, {hi:+.3f}]", flush=True)

imp = clinical_importance(cx.make_classifier("logreg", clinical=["age", "sex", "view"]), Xn, yn, gn, clinical=clin,
                          n_splits=5, n_repeats=2, n_permutations=10, random_state=SEED)
print(imp.drop(columns=[]).to_string(float_format=lambda v: f"{v:.3f}"), flush=True)
imp.to_csv(f"{args.out}/importance_nih.csv", index=False)
res["importance"] = imp.to_dict(orient="records")
imp32 = clinical_importance(cx.make_classifier("logreg", clinical=["age", "sex", "view"], pca=32), Xn, yn, gn,
                            clinical=clin, n_splits=5, n_repeats=2, n_permutations=10, random_state=SEED)
print("PCA32:\n" + imp32.to_string(float_format=lambda v: f"{v:.3f}"), flush=True)
res["importance_pca32"] = imp32.to_dict(orient="records")
from cxr_embed.learn.clinical import plot_importance
plot_importance(imp, f"{args.out}/importance_nih.png")

# ---------------------------------------------------------------- B: ComBat NIH -> paediatric (external)
fn = clinical_frame(Xn, pd.DataFrame({"site": ["nih"] * len(Xn)}))
fk = clinical_frame(Xk, pd.DataFrame({"site": ["kermany"] * len(Xk)}))
variants = {
    "no harmonisation": (cx.make_classifier("logreg"), Xn, Xk),
    "ComBat (default: EB, parametric)": (with_clinical("logreg", [], harmonizer=ComBat(site="site"), C=0.01), fn, fk),
    "ComBat mean_only": (with_clinical("logreg", [], harmonizer=ComBat(site="site", mean_only=True), C=0.01), fn, fk),
    "ComBat eb=False": (with_clinical("logreg", [], harmonizer=ComBat(site="site", eb=False), C=0.01), fn, fk),
}
ext = {}
for name, (est, Xtr, Xex) in variants.items():
    r = cx.external_validation(est, Xtr, yn, Xex, yk, groups_train=gn, groups_ext=gk, internal_splits=5,
                               n_bootstrap=1000, random_state=SEED)
    ext[name] = r.y_score[:, 0]
    s = r.summary.set_index("setting")
    res[f"external/{name}"] = s[["auc", "ci_low", "ci_high"]].to_dict(orient="index")
    print(f"{name:34s} internal {s.loc['internal','auc']:.3f} [{s.loc['internal','ci_low']:.3f}, {s.loc['internal','ci_high']:.3f}]"
          f"  external {s.loc['external','auc']:.3f} [{s.loc['external','ci_low']:.3f}, {s.loc['external','ci_high']:.3f}]"
          f"  ({time.time()-t0:.0f}s)", flush=True)
for other in list(variants)[1:]:
    a, b, z, p = delong_test(yk, ext["no harmonisation"], ext[other])
    d, lo, hi = paired_boot(yk, ext["no harmonisation"], ext[other], gk)
    res[f"delong_ext/none vs {other}"] = {"auc_a": a, "auc_b": b, "z": z, "p": p, "diff_patient_boot": [d, lo, hi]}
    print(f"DeLong external none vs {other}: {a:.3f} vs {b:.3f}, z={z:.2f}, p={p:.3g}; paired patient bootstrap "
          f"diff {d:+.3f} [{lo:+.3f}, {hi:+.3f}]", flush=True)
# site predictability before / after (embeddings -> site), pooled NIH + Kermany, patient-grouped CV
both = pd.concat([fn, fk], ignore_index=True); site_y = np.r_[np.zeros(len(fn)), np.ones(len(fk))].astype(int)
g_both = np.r_[gn, gk]
r0 = cx.cross_validate_grouped(cx.make_classifier("logreg"), both[[c for c in both if c.startswith("emb_")]], site_y, g_both,
                               n_splits=5, random_state=SEED, n_bootstrap=200)
r1 = cx.cross_validate_grouped(with_clinical("logreg", [], harmonizer=ComBat(site="site"), C=0.01), both, site_y, g_both,
                               n_splits=5, random_state=SEED, n_bootstrap=200)
res["site_auc"] = {"before": r0.summary.iloc[0].auc, "after_combat_in_cv": r1.summary.iloc[0].auc}
print(f"site (NIH vs Kermany) predictability from embeddings, grouped CV: before {r0.summary.iloc[0].auc:.3f}, "
      f"after ComBat fitted in the training folds {r1.summary.iloc[0].auc:.3f}", flush=True)
json.dump(res, open(f"{args.out}/measure.json", "w"), indent=1, default=float)
print(f"done in {time.time()-t0:.0f}s")
