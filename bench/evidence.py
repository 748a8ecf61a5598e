"""Evidence on real data (GloVe, MovieLens-100k, sizes): ``python bench/evidence.py [--quick]``.

A thin entry point to :mod:`qe4.evidence` (the same as ``qe4 evidence``); run from the
repository root so results land in bench/results/ and figures in figures/.
"""

import argparse
import sys

from qe4 import evidence

if __name__ == "__main__":
    parser = evidence.configure_parser(argparse.ArgumentParser(description=__doc__))
    sys.exit(evidence.run(parser.parse_args()))
