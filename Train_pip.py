"""Train an SR network with LDT (or FT / LP-FT / DeFT / LDT-S).

    python Train_pip.py                                   # the embedded demo (synthetic cameras, CPU, < 10 min)
    python Train_pip.py -opt train_MambaIR_LDT_x4.yml     # an options file (path or bare name in options/train/)
    python Train_pip.py -opt FILE --auto_resume --force_yml ldt:method=ft train:total_iter=1000
    torchrun --nproc_per_node=4 Train_pip.py -opt FILE --launcher pytorch
"""

import sys

from ldt.cli import starting

if __name__ == "__main__":
    demo = len(sys.argv) == 1 or sys.argv[1].split("=")[0] in ("--budget", "--force", "--seed", "demo")  # --seed=1
    with starting():  # Ctrl-C or SIGTERM while importing: one line, not a traceback
        if demo:
            from ldt.sr.demo import main as demo_main
        else:
            from ldt.sr.train import main
    sys.exit(demo_main([a for a in sys.argv[1:] if a != "demo"]) if demo else main())
