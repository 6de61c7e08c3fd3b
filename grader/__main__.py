"""``python -m grader``: the same as the ``grader`` command.

In the students' hand-out, where ``grader/`` is a folder beside the notebook and never
installed, ``python -m grader`` works from the hand-out's folder, and
``python path/to/handout/grader check NOTEBOOK`` from any folder.
"""
import sys

if not __package__:
    # Run as a folder: import the package from the folder that holds it, not from
    # inside it (where its module names would shadow others).
    from pathlib import Path

    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0]).resolve() == _here:
        del sys.path[0]
    sys.path.insert(0, str(_here.parent))
    from grader.cli import main
else:
    from .cli import main

main()
