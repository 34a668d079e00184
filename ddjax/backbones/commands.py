"""``ddjax backbone import NAME PATH [--out DIR]`` and ``backbone info [NAME]``: one JSON line."""

from __future__ import annotations

import argparse
import json

from ddjax.backbones.vit_configs import ALIASES, VARIANTS
from ddjax.backbones.vit_store import backbone_info, import_weights


def run(args: argparse.Namespace) -> None:
    if args.backbone_command == "import":
        print(json.dumps(import_weights(args.name, args.path, out=args.out)))
    elif args.name is None:
        print(
            json.dumps(
                {
                    "backbones": {name: v.feature for name, v in VARIANTS.items()},
                    "aliases": ALIASES,
                    "also": "ddjax:<teacher dir> (a ddjax teacher artifact)",
                }
            )
        )
    else:
        print(json.dumps(backbone_info(args.name)))
