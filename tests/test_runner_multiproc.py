"""ketabids' MultiProc plugin: Nipype's scheduler, with its per-round gc.collect() made cheap."""
import gc

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ketabids.runner.multiproc import MultiProcPlugin


def _add_one(x):
    return x + 1


def test_multiproc_runs_the_graph_with_old_objects_frozen(tmp_path, monkeypatch):
    wf = pe.Workflow(name="chain_wf", base_dir=str(tmp_path))
    nodes = [pe.Node(niu.Function(function=_add_one, input_names=["x"], output_names=["x"]),
                     name=f"add_{i}") for i in range(4)]
    nodes[0].inputs.x = 0
    for a, b in zip(nodes, nodes[1:]):
        wf.connect(a, "x", b, "x")
    wf.config["execution"].update({"poll_sleep_duration": 0.01, "crashdump_dir": str(tmp_path)})

    frozen_at_collect = []
    real_collect = gc.collect

    def spy(*args, **kwargs):
        frozen_at_collect.append(gc.get_freeze_count())
        return real_collect(*args, **kwargs)

    monkeypatch.setattr(gc, "collect", spy)
    graph = wf.run(plugin=MultiProcPlugin(plugin_args={"n_procs": 2,
                                                       "raise_insufficient": False}))
    results = {node.name: node.result.outputs.x for node in graph.nodes()}
    assert results == {"add_0": 1, "add_1": 2, "add_2": 3, "add_3": 4}
    # Nipype's collections ran, each with the pre-existing objects out of the collector's sight
    assert frozen_at_collect and min(frozen_at_collect) > 1000
    assert gc.get_freeze_count() == 0  # and they were handed back afterwards

