"""Editing pairs with exact ground truth (issue #17): pure functions that build (source, target,
instruction) triples from real photos. ``render``: text rendered onto a photo, then replaced,
removed or added. ``synth``: an object of a COCO instance mask recoloured, removed
(inpainted), moved or resized."""
