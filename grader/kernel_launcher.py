"""The grading kernel: ipykernel, without its debugger.

Kernels are started as ``python -m grader.kernel_launcher -f CONNECTION_FILE`` in place of
``python -m ipykernel_launcher`` (see :func:`grader.execute.without_debugger`). The kernel
is the same, but ``import debugpy`` fails in it, so ipykernel starts no debugger: nobody
attaches one to a batch kernel, a notebook gets no debug server to talk to, and each
kernel boots with about 0.1 s less CPU (a third of its start-up).

``GRADER_KERNEL_PATH`` (folders, ``os.pathsep`` between them; ``grader check`` sets it):
where the notebook imports from, put on ``sys.path`` where Jupyter puts the notebook's
folder: after the standard library, once the kernel has booted. So a student's
``random.py`` beside the notebook shadows no module of Python or of the kernel, as in
Jupyter. The same folders may be on ``PYTHONPATH`` for this module to be found (the
hand-out's ``grader/`` is never installed): they are kept off ``sys.path`` until then.
"""
import os
import sys


def notebook_path_index(path: list[str]) -> int:
    """Where Jupyter's kernel has the notebook's folder (``''``, its working folder) on
    ``path``: IPython puts it after the standard library, before the first site-packages.

    >>> notebook_path_index(["/py/lib/python3.11", "", "/venv/lib/site-packages"])
    1
    >>> notebook_path_index(["/py/lib/python3.11", "/venv/lib/site-packages"])
    1
    """
    if "" in path:
        return path.index("")
    for i, p in enumerate(path):
        if os.path.basename(p) in ("site-packages", "dist-packages"):
            return i
    return len(path)


if __name__ == "__main__":
    # As ipykernel_launcher does: the kernel's folder is not where its own modules come from.
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    later = [p for p in os.environ.pop("GRADER_KERNEL_PATH", "").split(os.pathsep) if p]
    sys.path[:] = [p for p in sys.path if p not in later]
    sys.modules["debugpy"] = None  # ipykernel's `import debugpy` raises ImportError
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize()
    i = notebook_path_index(sys.path)
    sys.path[i:i] = [p for p in later if p not in sys.path]
    app.start()
