"""Model + image -> saliency maps (:mod:`.maps`), and whether they point at the lesion (:mod:`.faithfulness`)."""
