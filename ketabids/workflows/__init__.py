"""Nipype workflows of the participant level.

:class:`LiterateWorkflow` is a Nipype ``Workflow`` that carries a methods description
(``__desc__``, plus optional ``__postdesc__``): :meth:`LiterateWorkflow.visit_desc` gathers the
descriptions of a workflow and its sub-workflows in topological order into the methods paragraph
of the report (the niworkflows idea, re-implemented in a few lines).
"""
from __future__ import annotations

from nipype.pipeline import engine as pe


class LiterateWorkflow(pe.Workflow):
    """A ``Workflow`` with a ``__desc__`` (methods text) and a ``__postdesc__``.

    >>> from nipype.interfaces.utility import IdentityInterface
    >>> wf, sub = LiterateWorkflow(name="a_wf"), LiterateWorkflow(name="b_wf")
    >>> wf.__desc__, sub.__desc__ = "First A.", "Then B."
    >>> sub.add_nodes([pe.Node(IdentityInterface(fields=["x"]), name="n")])
    >>> wf.add_nodes([sub])
    >>> wf.visit_desc()
    'First A. Then B.'
    """

    def __init__(self, name, base_dir=None):
        super().__init__(name, base_dir)
        self.__desc__ = None
        self.__postdesc__ = None

    def visit_desc(self) -> str:
        """This workflow's description, its sub-workflows' (topological order), then postdesc."""
        parts = [self.__desc__] if self.__desc__ else []
        import networkx as nx

        for node in nx.topological_sort(self._graph):
            if isinstance(node, LiterateWorkflow):
                text = node.visit_desc()
                if text:
                    parts.append(text)
        if self.__postdesc__:
            parts.append(self.__postdesc__)
        return " ".join(p.strip() for p in parts if p and p.strip())


Workflow = LiterateWorkflow

__all__ = ["LiterateWorkflow", "Workflow"]
