"""The training-shard schema: the contract between ``curate export`` (writer) and the loader (reader).

One home for it so that the export job and ``training.loader`` import the same definition; pure
Arrow, no torch, so the export job does not need the training stack to write plain shards.
"""

from __future__ import annotations

import pyarrow as pa

from curation.schema import CAPTION_TYPE

__all__ = ["SHARD_SCHEMA", "MANIFEST_KEY", "shard_schema"]

SHARD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the sample id in the source dataset
        pa.field("image", pa.large_binary()),  # encoded bytes as ingested
        pa.field("captions", pa.list_(CAPTION_TYPE)),  # caption variants (kinds: short, long, tags, ...)
        pa.field("caption_tokens", pa.list_(pa.int32())),  # token estimate per caption variant
        pa.field("width", pa.int32()),  # original size
        pa.field("height", pa.int32()),
        pa.field("resolution", pa.int32()),  # training resolution level the bucket belongs to
        pa.field("bucket_w", pa.int32()),  # crop size, multiples of 16
        pa.field("bucket_h", pa.int32()),
        pa.field("image_tokens", pa.int32()),  # bucket_h/16 * bucket_w/16
        pa.field("weight", pa.float32()),  # sampling weight (1 = as often as any other row)
        pa.field("curriculum_stage", pa.int32()),  # 0 = first stage; null when the source has no curriculum
    ]
)
"""One row per training sample, written by ``curate export`` and read by the loader."""


def shard_schema(latents: bool = False, text: bool = False, feature_dtype: str = "float32") -> pa.Schema:
    """``SHARD_SCHEMA`` plus the pre-encoded columns ``curate export`` writes when encoders are configured.

    * ``latents``: the normalised VAE latent of the row's centre crop to its bucket, flattened
      (C x bucket_h/8 x bucket_w/8, C = 16 for the Flux VAE); the loader reshapes it.
    * ``cap_feats``: per caption variant, the text encoder's features flattened (tokens x dim);
      ``cap_feat_tokens`` holds the token count per variant (so dim = len / tokens).

    Flat lists keep the Arrow -> NumPy path zero-copy (nested lists of floats would go through
    Python objects, which is slow at 262k floats per 1024² latent). ``feature_dtype`` float16
    halves the storage; the loader hands over float32 either way."""
    vt = {"float32": pa.float32(), "float16": pa.float16()}[feature_dtype]
    fields = list(SHARD_SCHEMA)
    if latents:
        fields.append(pa.field("latents", pa.large_list(vt)))
    if text:
        fields += [pa.field("cap_feats", pa.list_(pa.large_list(vt))), pa.field("cap_feat_tokens", pa.list_(pa.int32()))]
    return pa.schema(fields)


MANIFEST_KEY = "curation.manifest"
"""Schema-metadata key of the shard's provenance manifest (JSON: source URI, version, selection)."""
