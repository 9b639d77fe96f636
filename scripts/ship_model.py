"""Copy a trained cascade folder into imagen/weights/<name>/ as package data, weights stored in float16.

    python scripts/ship_model.py runs/shapes shapes [SAMPLER.toml]

float16 halves the size; the model loads them into float32 parameters, so sampling runs in float32 as before.
SAMPLER.toml (for the reference model: configs/shapes_sampler.toml) is shipped as the model's sampler.toml: the
settings it is sampled at when a command gives none. Without it, the run folder's own sampler.toml is shipped if
it has one.
"""

import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

from imagen.checkpoint import CONFIG_FILE, SAMPLER_FILE, parse_sampler_defaults, read_config, sampler_defaults
from imagen.errors import UserError
from imagen.worlds import WORLD_FILE


def main(src: str, name: str, sampler: str | None = None) -> None:
    src_dir = Path(src)
    cfg = read_config(src_dir)
    sampler_file = Path(sampler) if sampler else src_dir / SAMPLER_FILE
    if sampler_file.is_file():
        parse_sampler_defaults(sampler_file.read_text(encoding="utf-8"), str(sampler_file))  # refuse a bad one
    elif sampler:
        sys.exit(f"{sampler} not found")
    else:
        print(f"note: no sampler settings shipped (no {SAMPLER_FILE} in {src_dir}); the model will sample at the "
              f"global defaults. The reference recipe passes configs/shapes_sampler.toml.")
    dest = Path(__file__).resolve().parents[1] / "imagen" / "weights" / name
    tmp = dest.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shutil.copy(src_dir / CONFIG_FILE, tmp / CONFIG_FILE)
        if sampler_file.is_file():
            shutil.copy(sampler_file, tmp / SAMPLER_FILE)
            sampler_defaults(tmp)  # its per-stage lists must fit this model's stages, or nothing is shipped
        if (src_dir / WORLD_FILE).is_file():  # which world the model is scored on
            shutil.copy(src_dir / WORLD_FILE, tmp / WORLD_FILE)
        for st in cfg.stages:
            sd = load_file(str(src_dir / f"{st.name}.safetensors"))
            save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
                      str(tmp / f"{st.name}.safetensors"), metadata={"format": "pt", "dtype": "float16"})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    size = sum(p.stat().st_size for p in dest.iterdir())
    print(f"shipped {src_dir} as {name!r}: {dest} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    try:
        main(*sys.argv[1:])
    except UserError as exc:
        sys.exit(f"ship_model.py: {exc}")
