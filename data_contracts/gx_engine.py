"""Great Expectations plumbing for the contracts: one context per process, a Checkpoint per suite, Data Docs.

A contract is a list of :class:`Check` objects: one GX expectation each (built-in, or custom from
:mod:`data_contracts.expectations`) plus the words for a rejected row's reason. :func:`run` builds
(once per process, get-or-add, GX #10269) the suite, its ValidationDefinition on a pandas
dataframe asset and a Checkpoint, then runs the Checkpoint on a frame;
:mod:`data_contracts.gx_results` turns the result into per-row reasons. :func:`build_data_docs`
renders results into a Data Docs site in a folder of the caller's choice. GX is imported on
first use only.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pandas as pd

from data_contracts.report import short

_LOCK = threading.RLock()  # Prefect may run tasks in threads: one GX run at a time
_CACHE: dict[str, Any] = {}
RESULT_FORMAT = {"result_format": "COMPLETE", "include_unexpected_rows": False}


@dataclass(frozen=True)
class Check:
    """One expectation plus how to word its failures.

    ``expectation`` gets a namespace of GX's and our expectation classes and returns one;
    ``expected`` may name run-time parameters (``"at most {max_chars} characters"``); ``got``
    says what a reason shows of the value: ``"value"``, ``"length"``, ``"type"``, ``"none"``, or a
    function of the value returning the text after ``"; got "``.
    """

    id: str
    field: str
    expected: str
    expectation: Callable[[Any], Any]
    got: str | Callable[[Any], str] = "value"
    level: str = "row"  # "row" (quarantine the rows) or "batch" (fail the batch)


def _gx() -> SimpleNamespace:
    if "gx" not in _CACHE:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.util import camel_to_snake

        from data_contracts import expectations as custom

        def expectations(module: Any) -> dict[str, type]:
            return {n: getattr(module, n) for n in dir(module) if n.startswith("Expect")
                    and not n.startswith("Expectation")}

        names = expectations(gxe)
        builtin = tuple(names.values())
        ours = expectations(custom)
        names.update(ours)
        # Ours that do not extend a built-in have no Data Docs renderer: their check describes them.
        undescribed = {camel_to_snake(n) for n, c in ours.items() if not issubclass(c, builtin)}
        _CACHE["gx"] = SimpleNamespace(gx=gx, E=SimpleNamespace(**names), undescribed=undescribed)
    return _CACHE["gx"]


def undescribed_types() -> set[str]:
    """Our expectation types that GX has no Data Docs words for (those not extending a built-in)."""
    return _gx().undescribed


def _new_context(docs_dir: Path | None = None) -> Any:
    """An in-memory GX context; with ``docs_dir``, one with a Data Docs site in that folder.

    The validation context is GX's process-wide "current project" (GX needs one); a docs context
    is built directly, so it never replaces it.
    """
    from great_expectations.data_context import EphemeralDataContext
    from great_expectations.data_context.types.base import (DataContextConfig, InMemoryStoreBackendDefaults,
                                                            ProgressBarsConfig)

    sites = {} if docs_dir is None else {"edgeloop": {
        "class_name": "SiteBuilder", "show_how_to_buttons": False,
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)}}}
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(), data_docs_sites=sites,
                               analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False))
    if docs_dir is None:
        return _gx().gx.get_context(project_config=config, mode="ephemeral")
    return EphemeralDataContext(project_config=config)


def context() -> Any:
    """The process's validation context (built on first use)."""
    with _LOCK:
        if "context" not in _CACHE:
            _gx()
            _CACHE["context"] = _new_context()
        return _CACHE["context"]


def _get_or_add(get: Callable[[], Any], add: Callable[[], Any]) -> Any:
    try:
        return get()
    except (KeyError, LookupError, ValueError):  # GX raises several types for "not found"
        return add()


def _replace(collection: Any, obj: Any) -> Any:
    """Add ``obj`` to a GX collection (suites, validation definitions, checkpoints), replacing one of its name."""
    try:
        collection.delete(obj.name)
    except Exception:  # noqa: BLE001 - "not found" comes as several exception types
        pass
    return collection.add(obj)


def checkpoint(name: str, checks: list[Check]) -> Any:
    """Get or build the Checkpoint ``name`` (suite + ValidationDefinition on a dataframe asset).

    Built once per process; the checks of a name must not vary between calls (what varies is a
    ``$PARAMETER`` given at run time, or part of the name).
    """
    with _LOCK:
        key = f"checkpoint:{name}"
        if key in _CACHE:
            return _CACHE[key]
        ctx, ns = context(), _gx()
        gx = ns.gx
        source = _get_or_add(lambda: ctx.data_sources.get("edgeloop_contracts"),
                             lambda: ctx.data_sources.add_pandas("edgeloop_contracts"))
        asset = _get_or_add(lambda: source.get_asset(name), lambda: source.add_dataframe_asset(name))
        batch = _get_or_add(lambda: asset.get_batch_definition("whole"),
                            lambda: asset.add_batch_definition_whole_dataframe("whole"))
        expectations = []
        for check in checks:
            exp = check.expectation(ns.E)
            exp.meta = {"check": check.id, "field": check.field, "expected": check.expected}
            expectations.append(exp)
        suite = _replace(ctx.suites, gx.ExpectationSuite(name=name, expectations=expectations))
        vd = _replace(ctx.validation_definitions, gx.ValidationDefinition(name=name, data=batch, suite=suite))
        cp = _replace(ctx.checkpoints, gx.Checkpoint(name=name, validation_definitions=[vd], actions=[],
                                                     result_format=RESULT_FORMAT))
        _CACHE[key] = cp
        return cp


def run(name: str, checks: list[Check], frame: pd.DataFrame, params: dict[str, Any]) -> Any:
    """Run the Checkpoint ``name`` on ``frame``; return its one ExpectationSuiteValidationResult.

    The frame goes to GX as it is; only if GX fails on a hostile value (a lone surrogate, an
    object it cannot write to JSON) does it run again on :func:`_gx_safe` stand-ins.
    """
    frame = frame.reset_index(drop=True)  # GX reports row labels; ours are positions
    with _LOCK:
        cp = checkpoint(name, checks)
        try:
            result = cp.run(batch_parameters={"dataframe": frame}, expectation_parameters=params)
        except (UnicodeEncodeError, TypeError) as exc:
            # Hostile values GX cannot take: lone surrogates (it fingerprints the batch through
            # pyarrow) or objects it cannot write to JSON. Rare, so checked only after a failure.
            if isinstance(exc, TypeError) and "cannot be serialized" not in str(exc):
                raise
            result = cp.run(batch_parameters={"dataframe": _gx_safe(frame)}, expectation_parameters=params)
        store = context().validation_results_store
        for key in result.run_results:  # keep memory flat in a long-lived process
            store.remove_key(key)
        return next(iter(result.run_results.values()))


def _gx_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as GX can take it: strings with lone surrogates as :class:`UnencodableText`, values
    GX cannot write to JSON (a complex, an ``object()``) as ``{"unserializable": repr}``.

    The stand-ins fail the same rules as the originals (the dict is no string, number, list or
    timestamp); reasons show the original values.
    """
    from great_expectations.util import convert_to_json_serializable

    from data_contracts.gx_values import SURROGATE, UnencodableText

    def fix(v: Any) -> Any:
        if isinstance(v, str):
            return UnencodableText.of(v) if SURROGATE.search(v) else v
        try:
            convert_to_json_serializable(v)
            return v
        except (TypeError, ValueError):
            return {"unserializable": short(v, 100)}

    return frame.assign(**{c: pd.Series([fix(v) for v in frame[c].to_numpy()], index=frame.index, dtype=object)
                           for c in frame.columns if frame[c].dtype == object})


def build_data_docs(validations: list[tuple[str, dict]], site_dir: str | Path) -> Path:
    """Render ``(contract, GX result JSON)`` pairs as a Data Docs site in ``site_dir``; return its index.html.

    The folder is rebuilt from scratch (a re-run of a night replaces its site) by a context of its
    own, so results of other nights or processes never appear in it.
    """
    import shutil

    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (ExpectationSuiteIdentifier,
                                                                            ValidationResultIdentifier)

    site = Path(site_dir)
    if site.exists():
        shutil.rmtree(site)
    with _LOCK:
        ns = _gx()
        ctx = _new_context(site)
        store = ctx.validation_results_store
        for i, (contract, vr) in enumerate(validations):
            run_time = ((vr.get("meta") or {}).get("run_id") or {}).get("run_time")
            vr = {**vr, "meta": {**(vr.get("meta") or {}), "run_id": {"run_name": contract, "run_time": run_time}}}
            key = ValidationResultIdentifier(ExpectationSuiteIdentifier(name=vr["suite_name"]),
                                             RunIdentifier(run_name=contract, run_time=run_time),
                                             batch_identifier=f"{i + 1:02d}-{contract}")
            store.store_backend.set(store.key_to_tuple(key), json.dumps(vr, default=str))
            _add_suite(ctx, ns.gx, vr)
        ctx.build_data_docs(site_names=["edgeloop"])
    index = site / "index.html"
    if not index.is_file():  # GX logs and swallows some rendering errors
        raise RuntimeError(f"Great Expectations built no Data Docs index in {site}")
    _drop_unused_images(site)
    return index


def _drop_unused_images(site: Path) -> None:
    """Delete GX's tutorial images no page uses (3.4 of a site's 4.2 MB, once per night and report)."""
    pages = " ".join(p.read_text(encoding="utf-8", errors="replace") for p in site.rglob("*")
                     if p.suffix in (".html", ".css"))
    for image in (site / "static" / "images").glob("*"):
        if image.name not in pages:
            image.unlink()


def _add_suite(ctx: Any, gx: Any, vr: dict) -> None:
    """The suite behind a result, rebuilt from the expectations as they ran (parameters filled in),
    so that the site's links to its Expectation Suite pages work."""
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    name = vr["suite_name"]
    if name in {s.name for s in ctx.suites.all()}:
        return
    expectations = []
    for er in vr.get("results", []):
        config = er["expectation_config"]
        kwargs = {k: v for k, v in config.get("kwargs", {}).items() if k != "batch_id"}
        expectations.append(ExpectationConfiguration(type=config["type"], kwargs=kwargs, meta=config.get("meta"),
                                                     description=config.get("description")).to_domain_obj())
    ctx.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
