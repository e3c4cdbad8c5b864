"""How a participant graph runs: Nipype plugin, execution settings and ITK threads.

Nothing here changes Nipype's global config: settings are set on the workflow's nodes.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ketabids.errors import BadDataError, UsageError

#: Seconds between two polls of Nipype's scheduler (its default, 2 s, idles short nodes).
POLL_SLEEP_S = 0.02


def plugin_settings(*, nprocs=1, mem_gb=None, plugin_file=None) -> tuple[str, dict]:
    """Nipype plugin name and arguments.

    A ``--nipype-plugin-file`` YAML (``plugin: <Name>`` and ``plugin_args: {...}``, the fMRIPrep
    format) wins; otherwise MultiProc with ``nprocs`` processes (and ``mem_gb``), or Linear for
    one process.

    >>> plugin_settings(nprocs=1)
    ('Linear', {})
    >>> plugin_settings(nprocs=4, mem_gb=8)[1]["n_procs"]
    4
    """
    if plugin_file:
        import yaml

        path = Path(plugin_file)
        try:
            content = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise BadDataError(f"{path}: not valid YAML ({exc}); write e.g. 'plugin: MultiProc' "
                               "and 'plugin_args: {n_procs: 4}'") from exc
        if not isinstance(content, dict) or not isinstance(content.get("plugin"), str):
            raise BadDataError(f"{path}: needs a 'plugin:' entry (e.g. MultiProc, Linear, "
                               "SLURM) and optionally 'plugin_args:'")
        import nipype.pipeline.plugins as plugins

        name = content["plugin"]
        if not hasattr(plugins, f"{name}Plugin"):
            known = sorted(n[: -len("Plugin")] for n in dir(plugins) if n.endswith("Plugin")
                           and n != "Plugin")
            raise UsageError(f"{path}: unknown Nipype plugin {name!r}; use one of "
                             f"{', '.join(known)}")
        args = content.get("plugin_args") or {}
        if not isinstance(args, dict):
            raise BadDataError(f"{path}: 'plugin_args' must be a mapping")
        return name, dict(args)
    if nprocs and int(nprocs) > 1:
        args = {"n_procs": int(nprocs), "raise_insufficient": False}
        if mem_gb:
            args["memory_gb"] = float(mem_gb)
        return "MultiProc", args
    return "Linear", {}


def configure_workflow(workflow, *, crashdump_dirs: dict[str, Path], default_crashdump: Path,
                       hash_method="timestamp"):
    """Set Nipype's execution settings on this workflow's nodes only (no global config change).

    ``crashdump_dirs`` maps the name of a top-level element (e.g. ``single_subject_01_wf``) to
    the folder its nodes' crash files go to, so failures can be attributed to subjects.

    ``hash_method``: how Nipype decides that a node's input files are unchanged (so a rerun
    reuses its result). ``timestamp`` (Nipype's default, which sMRIPrep keeps): size and
    modification time. A node that set its own (the workflow marks the node reading the user's
    T1w with ``content``: :data:`ketabids.workflows.anatomical.INPUT_HASH`) keeps it. Hashing the
    content of every intermediate (large uncompressed work files, read again by each node that
    takes them) cost 9.4 s of a 115 s run (AOMIC sub-0001, default mode, py-spy).
    """
    settings = {
        "remove_unnecessary_outputs": False,
        "stop_on_first_crash": False,
        "crashfile_format": "txt",
        "create_report": False,
        "parameterize_dirs": False,
        "use_relative_paths": False,
        "check_version": False,
        # Nipype's scheduler sleeps this long between polls (default 2 s): most fast-mode
        # nodes take 1-3 s, so the default left the MultiProc workers idle ~45 % of the time
        # (measured on the demo: 2 workers at 55 % CPU each)
        "poll_sleep_duration": POLL_SLEEP_S,
    }
    workflow.config["execution"].update(settings, hash_method=hash_method)
    workflow.config["execution"]["crashdump_dir"] = str(default_crashdump)
    workflow.config.setdefault("monitoring", {})["enabled"] = False
    # Nipype resets its loggers from the workflow config when it runs: keep the levels the
    # caller chose (the CLI shows Nipype's INFO messages only with -vv)
    workflow.config.setdefault("logging", {}).update({
        f"{kind}_level": logging.getLevelName(
            max(logging.INFO, logging.getLogger(f"nipype.{kind}").getEffectiveLevel()))
        for kind in ("workflow", "interface", "utils")
    })
    for node_path in workflow.list_node_names():
        node = workflow.get_node(node_path)
        node.config = node.config or {}
        execution = node.config.setdefault("execution", {})
        execution.update(settings)
        execution.setdefault("hash_method", hash_method)
        crashdir = crashdump_dirs.get(node_path.split(".")[0], default_crashdump)
        execution["crashdump_dir"] = str(crashdir)
    return workflow


@contextlib.contextmanager
def itk_threads(omp_nthreads: int):
    """``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` for the duration of the run, then restored.

    ITK reads it when it first creates its thread pool, so this is what makes ``--omp-nthreads 1``
    (and with it ``--seed``) effective in a fresh process and in Nipype's worker processes.
    """
    key = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
    saved = os.environ.get(key)
    os.environ[key] = str(int(omp_nthreads))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved


def run_workflow(workflow, plugin: str, plugin_args: dict):
    """Run ``workflow`` with ``plugin``. MultiProc and Linear are Nipype's, subject-major (with
    ``plugin_args["job_group"]``), MultiProc without its O(n^2) garbage collections
    (:mod:`ketabids.runner.multiproc`); other plugins (SLURM...) are Nipype's."""
    if plugin in ("MultiProc", "Linear"):
        from ketabids.runner.multiproc import LinearPlugin, MultiProcPlugin

        cls = MultiProcPlugin if plugin == "MultiProc" else LinearPlugin
        return workflow.run(plugin=cls(plugin_args=plugin_args))
    args = {k: v for k, v in plugin_args.items() if k != "job_group"}
    return workflow.run(plugin=plugin, plugin_args=args)
