"""Finding and loading hardware and model presets (by name, by path, or inline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from .errors import SpecError, did_you_mean
from .hardware import Hardware
from .model import Model, ModelFile, resolve
from .validation import validate
from .yamlio import read_yaml

Kind = Literal["topologies", "models"]
_PACKAGE_DATA = Path(__file__).resolve().parent.parent / "_presets"   # inside a wheel
_REPO_ROOT = Path(__file__).resolve().parents[2]                      # editable checkout


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into `base` key by key (mappings recursively; other values replace)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def preset_dirs(kind: Kind) -> list[Path]:
    return [d for d in (_PACKAGE_DATA / kind, _REPO_ROOT / kind) if d.is_dir()]


def list_presets(kind: Kind) -> list[str]:
    names = {p.stem for d in preset_dirs(kind) for p in d.glob("*.yaml")}
    return sorted(names)


def _preset_path(kind: Kind, name: str, file: str | None, key: str) -> Path:
    for d in preset_dirs(kind):
        p = d / f"{name}.yaml"
        if p.is_file():
            return p
    names = list_presets(kind)
    hint = did_you_mean(name, names)
    raise SpecError(f"unknown preset {name!r}", file=file, key=key,
                    fix=(hint + " " if hint else "") + "Known presets: " + ", ".join(names)
                    + "; or give a path to a YAML file, or an inline mapping")


def _shown(path: Path) -> str:
    """A file as messages name it: a preset relative to the repository (or the package),
    e.g. topologies/hgx-h100.yaml; a user's path as given."""
    for root in (_PACKAGE_DATA, _REPO_ROOT):
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return str(path)


def _source(ref: Any, kind: Kind, file: str | None, key: str,
            base_dir: Path) -> tuple[dict, str | None]:
    """Raw mapping and the file it came from, for a name, a path or an inline mapping."""
    if isinstance(ref, str):
        looks_like_path = ref.endswith((".yaml", ".yml")) or "/" in ref
        path = (base_dir / ref) if looks_like_path else _preset_path(kind, ref, file, key)
        if looks_like_path and not path.is_file():
            raise SpecError(f"file {str(path)!r} not found", file=file, key=key,
                            fix="give an existing path (relative to the scenario file) or a "
                                "preset name: " + ", ".join(list_presets(kind)))
        shown = _shown(path)
        try:
            data = read_yaml(path)
        except SpecError as exc:
            raise exc.moved(file=shown, key=exc.key) from None
        if not isinstance(data, dict):
            raise SpecError("expected a mapping at the top of the file", file=shown)
        return data, shown
    if isinstance(ref, dict):
        if "preset" in ref:  # {preset: NAME, key: override, ...}
            overrides = dict(ref)
            name = overrides.pop("preset")
            if not isinstance(name, str):
                raise SpecError("preset must be a name", file=file, key=f"{key}.preset")
            data, src = _source(name, kind, file, key, base_dir)
            return deep_merge(data, overrides), src
        return ref, None
    raise SpecError(f"expected a preset name, a path or a mapping, got {type(ref).__name__}",
                    file=file, key=key, fix="e.g. " + ", ".join(list_presets(kind)[:3]))


def _overridden(ref: Any, dotted: str | None) -> bool:
    """Does `{preset: NAME, ...}` set the key path an error names (`gpu.hbm_bytes`)?"""
    if not isinstance(ref, dict) or not dotted:
        return False
    node = ref
    for k in dotted.split("."):
        k = k.split("[")[0]
        if not isinstance(node, dict) or k not in node:
            return False
        node = node[k]
    return True


def _validated(cls, data: dict, ref: Any, src: str | None, file: str | None, key: str):
    """Errors inside a preset file point at that file; errors in what the scenario sets on
    top of a preset (`{preset: NAME, gpu: {...}}`) point at the scenario and its key."""
    if src is None:
        return validate(cls, data, file, prefix=key)
    try:
        return validate(cls, data, src)
    except SpecError as exc:
        if _overridden(ref, exc.key):
            raise exc.moved(file=file, key=f"{key}.{exc.key}") from None
        raise


KERNELS_DIR = "kernels"   # topologies/kernels/<generation>.yaml: fitted kernel timing


def kernel_timing_names() -> list[str]:
    return sorted({p.stem for d in preset_dirs("topologies")
                   for p in (d / KERNELS_DIR).glob("*.yaml")})


def _kernel_timing(name: str, file: str | None, key: str) -> dict:
    """A GPU generation's fitted kernel timing, named in a hardware file's
    `efficiency.kernels` (e.g. `kernels: hopper`)."""
    for d in preset_dirs("topologies"):
        p = d / KERNELS_DIR / f"{name}.yaml"
        if p.is_file():
            return read_yaml(p)
    names = kernel_timing_names()
    hint = did_you_mean(name, names)
    raise SpecError(f"unknown kernel timing {name!r}", file=file, key=f"{key}.efficiency.kernels",
                    fix=(hint + " " if hint else "") + "Known: " + ", ".join(names)
                    + "; or give the classes inline (docs/kernel-model.md)")


def load_hardware(ref: Any, *, file: str | None = None, key: str = "hardware",
                  base_dir: Path = Path(".")) -> Hardware:
    data, src = _source(ref, "topologies", file, key, base_dir)
    eff = data.get("efficiency") if isinstance(data, dict) else None
    if isinstance(eff, dict) and isinstance(eff.get("kernels"), str):
        data = {**data, "efficiency": {**eff, "kernels": _kernel_timing(
            eff["kernels"], src or file, key)}}
    return _validated(Hardware, data, ref, src, file, key)


def load_model(ref: Any, *, file: str | None = None, key: str = "model",
               base_dir: Path = Path(".")) -> Model:
    data, src = _source(ref, "models", file, key, base_dir)
    spec = _validated(ModelFile, data, ref, src, file, key)
    try:
        return resolve(spec)
    except ValueError as exc:
        raise SpecError(str(exc), file=src or file, key=key) from None
