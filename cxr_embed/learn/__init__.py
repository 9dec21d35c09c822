"""Arrays -> estimators: uncertainty labels, classifiers, patient-grouped validation, stacking, bundles.

Never imports :mod:`cxr_embed.embed`: everything here works on ``X`` of shape ``(n_samples, dim)``.
"""
