"""Train an SR network with LDT (or FT / LP-FT / DeFT / LDT-S).

    python Train_pip.py                                   # the embedded demo (synthetic cameras, CPU, < 10 min)
    python Train_pip.py --budget quick --force            # the demo's flags (any of them, anywhere) run the demo
    python Train_pip.py -opt train_MambaIR_LDT_x4.yml     # an options file (path or bare name in options/train/)
    python Train_pip.py -opt FILE --auto_resume --force_yml ldt:method=ft train:total_iter=1000
    torchrun --nproc_per_node=4 Train_pip.py -opt FILE --launcher pytorch
"""

from __future__ import annotations

import sys

from ldt.cli import fail, starting
from ldt.sr.flags import demo_parser, flag_names, training_parser
from ldt.sr.ranks import launcher_of_environment, reporting_rank

# The flags of the two commands, read from their parsers in ldt.sr.flags: light, where ldt.sr.demo and ldt.sr.train
# import torch and BasicSR, which the route must not wait for.
DEMO_FLAGS = flag_names(demo_parser())
TRAINING_FLAGS = flag_names(training_parser())


def owners(token: str) -> set[str]:
    """Which command(s) a flag ``token`` (``--seed=1``, an abbreviation such as ``--bud``) belongs to: an exact name
    first, else every flag the abbreviation starts (so that the command it abbreviates a flag of refuses it, naming
    that flag: no parser takes abbreviations); empty for a value, help or an unknown."""
    name = token.split("=", 1)[0]
    flags = {"demo": DEMO_FLAGS, "training": TRAINING_FLAGS}
    exact = {command for command, names in flags.items() if name in names}
    if exact or not name.startswith("--") or len(name) < 3:
        return exact
    return {command for command, names in flags.items() if any(flag.startswith(name) for flag in names)}


def route(argv: list[str]) -> tuple[str, list[str]]:
    """('demo' | 'training', the arguments for it): no arguments, a leading ``demo`` or any of the demo's flags
    anywhere run the demo; a mix of demo and training flags is one line, exit 2. An abbreviation is routed as the
    flag(s) it starts, then refused by that command with its full name as the hint (``--bud``: the demo's
    ``(did you mean '--budget'?)``); one of flags of both (``--f``) goes to whichever command the other flags name,
    and alone is one line here."""
    named = argv[:1] == ["demo"]
    words = argv[1:] if named else argv
    found: dict[str, list[str]] = {"demo": [], "training": [], "both": []}
    for token in words:
        if token == "--":
            break
        mine = owners(token) if token.startswith("-") else set()
        for command in ["both"] if len(mine) == 2 else mine:
            found[command].append(token.split("=", 1)[0])
    demo, training = found["demo"] or (["demo"] if named else []), found["training"]
    if demo and training:
        spelled = [flag for flag in TRAINING_FLAGS if flag.startswith(demo[0]) and flag != demo[0]]
        fail(f"{demo[0]} runs the demo, {training[0]} trains from an options file: give one or the other "
             "(python Train_pip.py [--budget B] [--force] [--seed N], or python Train_pip.py -opt FILE ...)"
             + (f"; for training spell out {spelled[0]}" if spelled else ""))
    if found["both"] and not (demo or training):
        name = found["both"][0]
        fail(f"{name}: an abbreviation of both the demo's and training's flags "
             f"({', '.join(flag for flag in DEMO_FLAGS + TRAINING_FLAGS if flag.startswith(name))}); spell it out")
    return ("demo", words) if not argv or demo else ("training", argv)

if __name__ == "__main__":
    with reporting_rank(launcher_of_environment()):  # every rank routes the same arguments: said once per machine
        command, arguments = route(sys.argv[1:])
    with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback
        if command == "demo":
            from ldt.sr.demo import main as demo_main
        else:
            from ldt.sr.train import main
    sys.exit(demo_main(arguments) if command == "demo" else main(leave_at_once=True))
