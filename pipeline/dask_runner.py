"""Beam's DaskRunner with its ParDo translation corrected, so vigil's graph runs unchanged.

Beam 2.77's ``apache_beam.runners.dask`` turns each transform into one ``dask.bag`` and
gets three things wrong that vigil's pipeline depends on (docs/scaling.md reproduces each):

* a multi-output ParDo's outputs are merged: every consumer of any of its outputs
  receives all of them (a dead letter reaches the scores sink, a record the stats sink);
* what a DoFn emits in ``finish_bundle`` is dropped, because the bundle's outputs are
  collected before it runs (``BatchElements`` loses each bundle's last batch, a file sink
  the names of the files it wrote);
* only the last transform applied is computed, so a pipeline with several sinks writes one.

This runner keeps Beam's translation of everything else (Create, Reshuffle, Flatten,
GroupByKey, side inputs) and replaces those three steps: a ParDo's bundle yields
``(tag, value)`` pairs collected after ``finish_bundle``, each output PCollection is the
bag of its own tag, and every leaf of the graph is computed.  Results equal the other
runners' (``tests/pipeline/test_dask.py``).  Like Beam's SDK workers, each dask worker
imports the pipeline's ``--beam_plugins`` before it runs a task.
"""
from __future__ import annotations

import typing as t

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.options.pipeline_options import SetupOptions
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask import transform_evaluator as evaluator
from apache_beam.runners.dask.overrides import dask_overrides
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.sideinputs import SideInputMap
from distributed.diagnostics.plugin import WorkerPlugin


class _Outputs(dict):
    """Receivers for one bundle: every output, main (tag None) or tagged, as (tag, value)."""

    def __init__(self):
        super().__init__()
        self.values: list[tuple[str | None, t.Any]] = []

    def __missing__(self, tag):
        receiver = _TagReceiver(tag, self.values)
        self[tag] = receiver
        return receiver


class _TagReceiver(Receiver):
    def __init__(self, tag, values):
        super().__init__()
        self.tag, self.values = tag, values

    def receive(self, windowed_value):
        self.values.append((self.tag, evaluator.defenestrate(windowed_value)))


def _run_bundle(items, fn, window_fn, label, side_specs, args, kwargs, *side_values) -> list:
    """One dask partition through a DoFn's whole lifecycle; its outputs come after teardown."""
    sides = [SideInputMap(view, options, [evaluator.get_windowed_value(v, mapping) for v in values])
             for (view, options, mapping), values in zip(side_specs, side_values)] or None
    outputs = _Outputs()
    handler = _OutputHandler(window_fn=window_fn, main_receivers=outputs[None],
                             tagged_receivers=outputs, per_element_output_counter=None,
                             output_batch_converter=None, process_yields_batches=False,
                             process_batch_yields_elements=False)
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(fn), handler, context=DoFnContext(label, state=None),
        side_inputs=sides, input_args=args, input_kwargs=kwargs,
        user_state_context=None, bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
    invoker.invoke_setup()
    invoker.invoke_start_bundle()
    for item in items:
        invoker.invoke_process(evaluator.get_windowed_value(item, window_fn))
    invoker.invoke_finish_bundle()
    invoker.invoke_teardown()
    return outputs.values


def _concat(parts) -> list:
    return [value for part in parts for value in part]


def _select(pairs, tag) -> list:
    return [value for got, value in pairs if got == tag]


def _pardo_bags(applied: AppliedPTransform, input_bag, side_bags: list) -> dict:
    """Each output of a ParDo (by tag) as a bag: one task per input partition, run once.

    The tasks are plain delayed calls, not blockwise bag layers: dask may inline a
    blockwise chain into each of its consumers, running a DoFn with side effects (a
    file sink's ``initialize_write``) more than once.  A side input is its whole bag,
    handed to every task as a dependency; Beam's translation lists the bag inside the
    task instead, which computes it and everything upstream again in every partition.
    """
    import dask
    import dask.bag as db

    transform = t.cast(beam.ParDo, applied.transform)
    args, kwargs = transform.raw_side_inputs
    main_input = next(iter(applied.main_inputs.values()))
    window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
    specs = [(type(si), si._view_options(), si._window_mapping_fn)   # noqa: SLF001 - as Beam's own visitor
             for si in applied.side_inputs]
    sides = [dask.delayed(_concat, pure=False)(bag.to_delayed(optimize_graph=False)) for bag in side_bags]
    run = dask.delayed(_run_bundle, pure=False)
    pairs = [run(part, transform.fn, window_fn, applied.full_label, specs, list(args), kwargs, *sides)
             for part in input_bag.to_delayed(optimize_graph=False)]
    select = dask.delayed(_select, pure=False)
    return {tag: db.from_delayed([select(p, tag) for p in pairs]) for tag in applied.outputs}


class _Translator(PipelineVisitor):
    """Every PCollection of the pipeline as a dask bag."""

    def __init__(self, bag_kwargs: dict):
        self.bag_kwargs = bag_kwargs
        self.bags: dict[pvalue.PCollection, t.Any] = {}
        self.consumed: set[pvalue.PCollection] = set()

    def visit_transform(self, node: AppliedPTransform) -> None:
        main = [i for i in node.inputs if not isinstance(i, pvalue.PBegin)]
        self.consumed.update(main)
        self.consumed.update(si.pvalue for si in node.side_inputs)
        inputs = [self.bags[i] for i in main]
        # Exact class: Beam's GroupAlsoByWindow is a ParDo whose work its GroupByKey op does.
        if node.transform.__class__ is beam.ParDo:
            outputs = _pardo_bags(node, inputs[0], [self.bags[si.pvalue] for si in node.side_inputs])
        else:
            op = evaluator.TRANSLATIONS.get(node.transform.__class__, evaluator.NoOp)(
                node, bag_kwargs=self.bag_kwargs)
            bag = op.apply(inputs if isinstance(op, evaluator.Flatten) else (inputs[0] if inputs else None))
            outputs = {tag: bag for tag in node.outputs}
        for tag, pcoll in node.outputs.items():
            self.bags[pcoll] = outputs[tag]

    def leaf_bags(self) -> list:
        """Bags nothing consumes: computing them computes the whole graph, each step once."""
        return [bag for pcoll, bag in self.bags.items() if pcoll not in self.consumed]


class _Result(beam_dask.DaskRunnerResult):
    """Beam's result, which also closes the runner's client once the job has ended."""

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            if self._state in (PipelineState.DONE, PipelineState.FAILED):
                self.client.close()


class _BeamPlugins(WorkerPlugin):
    """A dask worker plugin importing ``--beam_plugins`` in each worker, as Beam's
    ``sdk_worker_main`` does before any DoFn is unpickled there."""

    def __init__(self, modules: list[str]):
        self.modules = modules

    def setup(self, worker) -> None:
        """Import each plugin module in the worker process."""
        import importlib
        for module in self.modules:
            importlib.import_module(module)


class DaskRunner(beam_dask.DaskRunner):
    """Beam's DaskRunner (``--dask_client_address`` etc.), computing every sink of the graph."""

    def run_pipeline(self, pipeline, options):
        """Translate the pipeline to dask bags and compute every sink on the client's cluster."""
        import dask.distributed as ddist

        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(
            drop_default=True, current_only=True)
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)   # noqa: SLF001
        client = ddist.Client(**dask_options)
        plugins = options.view_as(SetupOptions).beam_plugins or []
        if plugins:
            client.register_plugin(_BeamPlugins(plugins), name="vigil-beam-plugins")
        pipeline.replace_all(dask_overrides())
        translator = _Translator(bag_kwargs)
        pipeline.visit(translator)
        # Unoptimised: dask's fusion could inline a task into several consumers.
        return _Result(client, client.compute(translator.leaf_bags(), optimize_graph=False))
