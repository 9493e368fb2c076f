"""C2PA manifests with PyPI ``c2pa-python``: sign a PNG offline, read and judge a manifest.

The manifest (C2PA 2.x, claim v2) holds

* ``c2pa.actions``: for a picture made from text, ``c2pa.created`` with ``digitalSourceType``
  ``http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia``; for a picture made
  from an input picture, the input as an ingredient and
  - SDEdit, inpainting, upscaling, unCLIP inpainting (the input is the ``parentOf`` ingredient):
    ``c2pa.opened`` of the input, then ``c2pa.edited`` (``compositeWithTrainedAlgorithmicMedia`` when
    the result keeps the input's pixels outside a mask, else ``trainedAlgorithmicMedia``);
  - ControlNet and unCLIP variations (the input guides a new picture; ``componentOf``):
    ``c2pa.created`` (``trainedAlgorithmicMedia``), then ``c2pa.placed`` of the input;
  every action names condiff as ``softwareAgent``;
* ``org.condiff.generation``: the model name and A1111 hash, LoRA hashes, the watermark record and
  condiff's complete parameters;
* the hard binding ``c2pa.hash.data`` (added by the library): a sha256 over every byte of the
  file except the manifest's own chunk, so pixel data, the ``parameters``/``condiff`` text chunks
  and the watermark are all covered.

No thumbnail is embedded (it would be several times larger than a 128² picture) and no time-stamp
authority, OCSP or remote manifest is contacted: signing and verifying work offline.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError
from .keys import Credentials

__all__ = ["SOURCE_TYPES", "ASSERTION", "manifest_definition", "sign_png", "read_manifest", "pipeline_kind"]

_IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
SOURCE_TYPES = {"generated": _IPTC + "trainedAlgorithmicMedia",
                "composite": _IPTC + "compositeWithTrainedAlgorithmicMedia"}
ASSERTION = "org.condiff.generation"
_AGENT = {"name": "condiff", "version": __version__}
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def pipeline_kind(params: dict[str, Any]) -> str:
    """``created``, ``edited`` (input is the parent) or ``guided`` (input guides a new picture)."""
    pipeline = str(params.get("pipeline", ""))
    if pipeline in ("sdedit", "cascade-upscale") or "inpaint" in pipeline:
        return "edited"
    if pipeline in ("control", "unclip-variations"):
        return "guided"
    return "created"


def _actions(params: dict[str, Any], kind: str, ingredient_ids: list[str]) -> list[dict]:
    description = f"condiff {params.get('pipeline', 'generation')}"
    refs = {"ingredientIds": ingredient_ids}
    if kind == "edited" and ingredient_ids:
        keeps = "inpaint" in str(params.get("pipeline")) and params.get("composite", True)
        source = SOURCE_TYPES["composite" if keeps else "generated"]
        return [{"action": "c2pa.opened", "parameters": refs},
                {"action": "c2pa.edited", "digitalSourceType": source, "softwareAgent": _AGENT,
                 "description": description}]
    created = {"action": "c2pa.created", "digitalSourceType": SOURCE_TYPES["generated"], "softwareAgent": _AGENT,
               "description": description}
    if kind == "guided" and ingredient_ids:
        return [created, {"action": "c2pa.placed", "parameters": refs, "softwareAgent": _AGENT}]
    return [created]


def manifest_definition(params: dict[str, Any], record: dict[str, Any], title: str,
                        ingredient_ids: list[str]) -> dict:
    """The manifest JSON that :func:`sign_png` gives to ``c2pa.Builder``."""
    kind = pipeline_kind(params)
    return {
        "claim_generator_info": [_AGENT],
        "title": title,
        "format": "image/png",
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": _actions(params, kind, ingredient_ids)}},
            {"label": ASSERTION, "data": {"model": params.get("model"), **record, "parameters": params}},
        ],
    }


def _context(settings: dict):
    import c2pa

    base = {"verify": {"ocsp_fetch": False, "remote_manifest_fetch": False}}
    for k, v in settings.items():
        base.setdefault(k, {}).update(v)
    return c2pa.Context(c2pa.Settings.from_dict(base))


def _ingredient_sources(ingredients) -> list[tuple[str, str, bytes]]:
    """(title, MIME type, bytes) of each usable ingredient: a file path, raw image bytes or (title, bytes)."""
    from PIL import Image

    out = []
    for i, item in enumerate(ingredients or []):
        if isinstance(item, tuple):
            title, data = str(item[0]), bytes(item[1])
        elif isinstance(item, (bytes, bytearray)):
            title, data = f"input-{i}", bytes(item)
        else:
            path = Path(item)
            if not path.is_file():
                continue
            title, data = path.name, path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as im:
                mime = _MIME.get("." + (im.format or "").lower().replace("jpeg", "jpg"))
        except OSError:
            mime = None
        if mime:
            out.append((title, mime, data))
    return out


def sign_png(data: bytes, params: dict[str, Any], record: dict[str, Any], credentials: Credentials, *,
             ingredients: list | None = None, title: str = "condiff.png") -> bytes:
    """``data`` (a PNG) with a signed C2PA manifest embedded.

    ``ingredients``: the input pictures of an edit, each a file path, image bytes or (title, bytes);
    unreadable ones are left out.
    """
    import c2pa

    sources = _ingredient_sources(ingredients)
    ids = [f"input-{i}" for i in range(len(sources))]
    manifest = manifest_definition(params, record, title, ids)
    relationship = "parentOf" if pipeline_kind(params) == "edited" else "componentOf"
    try:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(credentials.alg, credentials.chain, credentials.key, None))
        builder = c2pa.Builder(manifest, _context({"builder": {"thumbnail": {"enabled": False}}}))
        for i, ((name, mime, blob), iid) in enumerate(zip(sources, ids)):
            rel = relationship if i == 0 else "componentOf"  # one parent at most
            builder.add_ingredient({"title": name, "relationship": rel, "label": iid, "instance_id": iid},
                                   mime, io.BytesIO(blob))
        out = io.BytesIO()
        builder.sign(signer, "image/png", io.BytesIO(data), out)
    except c2pa.C2paError as err:
        raise InputError(f"C2PA signing failed with the key from {credentials.source}: {err}; "
                         "check the certificate chain (run `condiff provenance keygen` for a local one)") from None
    return out.getvalue()


def _codes(results: dict, kind: str) -> list[dict]:
    return [{"code": r.get("code"), "explanation": r.get("explanation")} for r in results.get(kind, [])]


def read_manifest(data: bytes, mime: str, anchors: str) -> dict[str, Any]:
    """Judge the active manifest of ``data`` with ``anchors`` (PEM) as trusted roots.

    Returns ``{"present", "valid", "signature_valid", "hash_match", "trusted", "state", "signer",
    "assertions", "actions", "ingredients", "generation", "failures"}``.
    """
    import c2pa

    settings = {"verify": {"verify_trust": bool(anchors)}}
    if anchors:
        settings["trust"] = {"user_anchors": anchors}
    try:
        reader = c2pa.Reader(mime, io.BytesIO(data), context=_context(settings))
    except c2pa.C2paError as err:
        name = type(err).__name__
        if "ManifestNotFound" in name or "JUMBF" in str(err):
            return {"present": False, "valid": False}
        return {"present": True, "valid": False, "failures": [{"code": name, "explanation": str(err)}]}
    active = reader.get_active_manifest() or {}
    results = (reader.get_validation_results() or {}).get("activeManifest", {})
    success = {r["code"] for r in _codes(results, "success")}
    failures = _codes(results, "failure")
    failed = {f["code"] for f in failures}
    assertions = {a.get("label"): a.get("data") for a in active.get("assertions", [])}
    actions = next((d.get("actions", []) for k, d in assertions.items() if k.startswith("c2pa.actions")), [])
    trusted = bool(anchors) and "signingCredential.untrusted" not in failed and "signingCredential.trusted" in success
    return {
        "present": True,
        "state": reader.get_validation_state(),
        "signature_valid": "claimSignature.validated" in success,
        "hash_match": "assertion.dataHash.match" in success and "assertion.dataHash.mismatch" not in failed,
        "trusted": trusted,
        "valid": not failures and "claimSignature.validated" in success,
        "signer": active.get("signature_info", {}),
        "assertions": sorted(list(assertions) + ["c2pa.hash.data"] * ("assertion.dataHash.match" in success)),
        "actions": [{k: a[k] for k in ("action", "digitalSourceType", "description") if k in a} for a in actions],
        "ingredients": [{k: i.get(k) for k in ("title", "relationship")} for i in active.get("ingredients", [])],
        "generation": json.loads(json.dumps(assertions.get(ASSERTION))) if ASSERTION in assertions else None,
        "failures": failures,
    }
