"""The core layer: what every other part of the harness speaks.

* :mod:`bench.core.types`: :class:`Probe`, :class:`Batch`, :class:`ProbeScore`, :class:`Arch`;
* :mod:`bench.core.records`: :class:`RecordSet` (a dataset's records and their probes);
* :mod:`bench.core.backbone`: :class:`EditableBackbone`, what an editor may use of a backbone;
* :mod:`bench.core.editor`: the :class:`Editor` ABC (attach/detach, edit, reset, state);
* :mod:`bench.core.inject`: editor state's dtype and device, FFN wrappers, weight snapshots;
* :mod:`bench.core.optim`: the step loop shared by the editors that optimise at edit time;
* :mod:`bench.core.metrics`: the metric registry and aggregation;
* :mod:`bench.core.errors`, :mod:`bench.core.io`, :mod:`bench.core.paths`: user errors, atomic
  writes, package and cache paths.

Dependency order (``tests/test_layers.py`` walks the imports and fails on a back edge):
core <- backbones (``bench.backbones``) <- editors (``editors``) <- harness (``bench.run``,
``bench.protocol``, ``bench.data``, ...) <- tools (``bench.speed``, ``bench.report``, ``bench.plot``, ...).
Nothing in core imports anything above it.
"""
